"""Benchmark of the logit cache: build overhead, bytes per row, minibatch read throughput.

Build overhead is the wall time of ``build_cache`` divided by the wall time of the same
teacher forward passes (same data, same batches, float32, under ``torch.inference_mode``,
in the same thread with the same torch thread count) with the outputs thrown away.
Data: Fashion-MNIST's 60,000 training images when Debian's ``dataset-fashion-mnist`` is
installed, else random data of the same shape. Teachers: an ensemble of 2x1200 ReLU MLPs
with dropout (random weights: speed does not depend on training).

Writes ``benchmarks/results/cache.json`` and ``benchmarks/results/cache.md``.
Run ``python benchmarks/bench_cache.py`` (``--quick`` for a small smoke run).
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
from kdpipe.engine import seeded
from kdpipe.rows import take_rows
from kdpipe.students import MLP


def mlp(seed: int) -> torch.nn.Module:
    with seeded(seed):
        return MLP(784, 10, (1200, 1200), dropout=0.5).eval()


def forward_only(teachers: list[torch.nn.Module], X: np.ndarray, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(X), batch_size):
            batch = torch.from_numpy(X[b : b + batch_size])
            for t in teachers:
                t(batch)
    return time.perf_counter() - start


def timed_build(
    teachers: list[torch.nn.Module], X: np.ndarray, y: np.ndarray, path: Path, **kw: object
) -> float:
    start = time.perf_counter()
    build_cache(teachers, X, path, y=y, overwrite=True, progress=False, **kw)
    return time.perf_counter() - start


def read_rate(array: object, n_rows: int, batches: int, batch: int = 128) -> float:
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for _ in range(batches):
        take_rows(array, rng.choice(n_rows, size=batch, replace=False))
    return batches * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small smoke run (6,000 rows, one repeat)"
    )
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--backend", default="zarr")
    args = parser.parse_args(argv)
    rows, repeats = (6000, 1) if args.quick else (60000, args.repeats)
    X, y, data_source = fashion_or_random(rows)
    teachers = [mlp(seed) for seed in range(args.members)]
    kw = dict(
        batch_size=args.batch_size, chunk_rows=args.chunk_rows, backend=args.backend, device="cpu"
    )
    forward_only(teachers, X[:2048], args.batch_size)  # warm up
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kdpipe-bench-") as tmp:
        f32, f16 = Path(tmp) / "f32", Path(tmp) / "f16"
        timed_build(
            teachers, X[:2048], y[:2048], Path(tmp) / "warm", **kw
        )  # imports, first-call costs
        plain, built = [], []
        for _ in range(repeats):  # interleaved, so drift in machine speed hits both alike
            plain.append(forward_only(teachers, X, args.batch_size))
            built.append(timed_build(teachers, X, y, f32, dtype="float32", **kw))
        load_after = os.getloadavg()
        built_f16 = timed_build(teachers, X, y, f16, dtype="float16", **kw)
        bytes_f32 = LogitCache.open(f32).info()["bytes_per_row"]
        bytes_f16 = LogitCache.open(f16).info()["bytes_per_row"]
        in_memory = np.asarray(LogitCache.open(f32))
        batches = 50 if args.quick else 300
        rates = {
            "memory": read_rate(in_memory, rows, batches),
            "cache_cold": read_rate(LogitCache.open(f32, chunk_cache_bytes=0), rows, batches),
            "cache_warm": read_rate(LogitCache.open(f32), rows, batches),
        }
    result = {
        "data": data_source,
        "rows": rows,
        "members": args.members,
        "teacher": "784-1200-1200-10 ReLU MLP (dropout 0.5, eval)",
        "batch_size": args.batch_size,
        "chunk_rows": args.chunk_rows,
        "backend": args.backend,
        "forward_only_s": plain,
        "build_float32_s": built,
        "build_float16_s": built_f16,
        "overhead_ratio": min(built) / min(plain),
        "overhead_ratio_median": float(np.median(np.divide(built, plain))),
        "overhead_ratio_min_pair": float(np.min(np.divide(built, plain))),
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "bytes_per_row": {"float32": bytes_f32, "float16": bytes_f16},
        "read_rows_per_s_batch128": rates,
        "machine": machine(),
    }
    write_results("cache_quick" if args.quick else "cache", result, _markdown(result))
    return result


def _markdown(r: dict) -> str:
    rates = r["read_rows_per_s_batch128"]
    return "\n".join(
        [
            f"# Logit cache benchmark ({r['rows']} rows of {r['data']}, {r['members']} x {r['teacher']})",
            "",
            (
                f"- build overhead (build_cache / forward passes only, best of {len(r['forward_only_s'])}): "
                f"**{r['overhead_ratio']:.3f}** ({min(r['build_float32_s']):.2f} s vs {min(r['forward_only_s']):.2f} s; "
                f"{r['backend']}, batch {r['batch_size']}, chunk {r['chunk_rows']} rows); "
                f"per repeat (build / the forward passes just before it): median {r['overhead_ratio_median']:.3f}, "
                f"min {r['overhead_ratio_min_pair']:.3f}"
            ),
            load_line(
                r["load_average_1_5_15"]["before"],
                r["load_average_1_5_15"]["after"],
                " the timed repeats",
            ),
            (
                f"- bytes per row on disk: float32 {r['bytes_per_row']['float32']:.1f}, "
                f"float16 {r['bytes_per_row']['float16']:.1f}"
            ),
            (
                f"- random minibatch reads (128 rows): in-memory numpy {rates['memory']:,.0f} rows/s; "
                f"cache with chunk memory {rates['cache_warm']:,.0f} rows/s; "
                f"cache without (every batch reads its chunks from disk) {rates['cache_cold']:,.0f} rows/s"
            ),
            f"- machine: {r['machine']['cpus']} torch threads, {r['machine']['platform']}, torch {r['machine']['torch']}",
            "",
        ]
    )


if __name__ == "__main__":
    main()
