"""Benchmark of ``check_alignment``: its cost next to one training epoch.

X: 60,000 rows x 784 float32 features (Fashion-MNIST's training images when Debian's
``dataset-fashion-mnist`` is installed, else random data of that shape), stored on disk
as a zarr array (chunks of 4,096 rows, zstd). A logit cache is built from it (a trivial
teacher: the cost measured does not depend on the logits).

Measured, in the same run:

- ``check_alignment`` in sample mode (1,024 random rows read from the zarr X, hashed and
  compared) and in all-rows mode (every row read and hashed), each on a freshly opened
  cache handle, so the stored digests (8 bytes a row) are read from disk every time;
- the baseline: one epoch of a plain torch loop training a 784-800-800-10 ReLU MLP
  (SGD, cross-entropy, batch 128) over the same 60,000 rows held in memory.

Writes ``benchmarks/results/alignment.json`` and ``benchmarks/results/alignment.md``
(``alignment_quick.*`` with ``--quick``, a small smoke run).
Run ``python benchmarks/bench_alignment.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import fashion_or_random, load_line, machine, write_results

from kdpipe.cache import LogitCache, build_cache
from kdpipe.cache.alignment import check_alignment


def one_epoch(X: np.ndarray, y: np.ndarray, batch: int = 128, seed: int = 0) -> float:
    """Seconds of one epoch of a plain torch training loop (2x800 ReLU MLP, SGD), data in memory."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], 800),
        torch.nn.ReLU(),
        torch.nn.Linear(800, 800),
        torch.nn.ReLU(),
        torch.nn.Linear(800, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    order = torch.randperm(len(X))
    start = time.perf_counter()
    for b in range(0, len(X), batch):
        idx = order[b : b + batch]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def timed_check(path: Path, zx: object, sample: int, seed: int) -> float:
    start = time.perf_counter()
    cache = LogitCache.open(path)  # a fresh handle: the digests are read from disk in the timing
    check_alignment(
        cache, lambda pos: zx.get_orthogonal_selection((pos, slice(None))), sample=sample, rng=seed
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small smoke run (6,000 rows, one repeat)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", type=int, default=1024)
    args = parser.parse_args(argv)
    import zarr

    rows, repeats = (6000, 1) if args.quick else (60000, args.repeats)
    X, y, data_source = fashion_or_random(rows)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kdpipe-bench-") as tmp:
        zx = zarr.create_array(
            Path(tmp) / "x.zarr", shape=X.shape, chunks=(4096, X.shape[1]), dtype="float32"
        )
        zx[:] = X
        path = Path(tmp) / "cache"
        build_start = time.perf_counter()
        build_cache(
            lambda b: np.zeros((len(b), 10), np.float32),
            zx,
            path,
            chunk_rows=4096,
            progress=False,
            device="cpu",
        )
        build_s = time.perf_counter() - build_start
        timed_check(path, zx, args.sample, 0)  # warm up: imports, first-call costs
        one_epoch(X[:2048], y[:2048])
        sample_s, all_s, epoch_s = [], [], []
        for r in range(repeats):  # interleaved, so drift in machine speed hits all alike
            epoch_s.append(one_epoch(X, y, seed=r))
            sample_s.append(timed_check(path, zx, args.sample, r))
            all_s.append(timed_check(path, zx, rows, r))
    load_after = os.getloadavg()
    result = {
        "data": data_source,
        "rows": rows,
        "features": int(X.shape[1]),
        "x_storage": "zarr on local disk, chunks (4096, 784), default codecs",
        "sample": args.sample,
        "check_sample_s": sample_s,
        "check_all_rows_s": all_s,
        "epoch_s": epoch_s,
        "epoch": "784-800-800-10 ReLU MLP, SGD momentum 0.9, batch 128, in memory, CPU",
        "ratio_sample_to_epoch": min(sample_s) / min(epoch_s),
        "ratio_all_rows_to_epoch": min(all_s) / min(epoch_s),
        "cache_build_s": build_s,
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "machine": machine(),
    }
    write_results("alignment_quick" if args.quick else "alignment", result, _markdown(result))
    return result


def _markdown(r: dict) -> str:
    return "\n".join(
        [
            f"# check_alignment benchmark ({r['rows']} rows x {r['features']} float32 of {r['data']})",
            "",
            f"X in {r['x_storage']}.",
            "",
            (
                f"- sample mode ({r['sample']} random rows read, hashed, compared; digests read from disk): "
                f"best {min(r['check_sample_s']) * 1e3:.1f} ms = **{r['ratio_sample_to_epoch']:.4f}** of one epoch"
            ),
            (
                f"- all-rows mode (every row read from the zarr X and hashed): best {min(r['check_all_rows_s']):.2f} s "
                f"= **{r['ratio_all_rows_to_epoch']:.3f}** of one epoch"
            ),
            (
                f"- baseline, one epoch ({r['epoch']}): best {min(r['epoch_s']):.2f} s of {len(r['epoch_s'])} "
                f"(all: {', '.join(f'{t:.2f}' for t in r['epoch_s'])})"
            ),
            load_line(r["load_average_1_5_15"]["before"], r["load_average_1_5_15"]["after"]),
            f"- machine: {r['machine']['cpus']} torch threads, {r['machine']['platform']}, torch {r['machine']['torch']}",
            "",
        ]
    )


if __name__ == "__main__":
    main()
