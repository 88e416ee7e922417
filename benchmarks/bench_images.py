"""Benchmark of image inputs: the cost of the uint8 rule and of the sample-shape row path.

Per-epoch seconds of ``DistilledClassifier.fit`` (from ``history_``; the first epoch of
each fit dropped) on Fashion-MNIST-sized images ``(n, 1, 28, 28)``, against a plain torch
loop doing the same work on float32 images in memory (same student, Adam, batch size,
hard-label cross-entropy, per-epoch shuffling). Variants of where the images come from:

- float32 images in numpy (what the plain loop reads);
- uint8 images in numpy (4x less memory; each minibatch divided by 255 in float32,
  :func:`kdpipe.rows.to_model_dtype`);
- uint8 images in a zarr array on disk, through ``kdpipe.LazyRows`` and chunk memory.

Students: :class:`kdpipe.students.ConvNet` (channels 16, 32; hidden 64) and the 2x800 MLP
(flattening in its forward). Figure: median epoch seconds / the plain loop's (target
<= 1.05 for every variant); the plain loop runs twice per repeat, and the second copy's
ratio is what the machine's noise alone gives. Also recorded: bytes of X per variant.

Writes ``benchmarks/results/images.json`` and ``.md`` (``--quick``: ``images_quick.*``);
``--out DIR`` writes there instead. Uses Fashion-MNIST when Debian's
``dataset-fashion-mnist`` is installed, random images otherwise (the timing is the same).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import RESULTS, load_line, write_results

BATCH, LR = 128, 1e-3
STUDENTS = {
    # name: (rows, module_params or None for the MLP)
    "ConvNet 16-32, hidden 64": (4_000, {"channels": (16, 32), "hidden": 64}),
    "MLP 800x800": (10_000, None),
}


def images(rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``rows`` uint8 images (n, 1, 28, 28) and labels: Fashion-MNIST, or random ones."""
    try:
        from kdpipe.datasets import load_fashion_mnist

        X, y = load_fashion_mnist(images=True)
        return np.ascontiguousarray(X[:rows]), y[:rows], "fashion-mnist train"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        X = rng.integers(0, 256, size=(rows, 1, 28, 28), dtype=np.uint8)
        return X, rng.integers(0, 10, rows), "random (fashion-mnist not installed)"


def student(params: dict | None) -> torch.nn.Module:
    from kdpipe.students import MLP, ConvNet

    if params is None:
        return MLP(784, 10, hidden_layer_sizes=(800, 800))
    return ConvNet(784, 10, sample_shape=(1, 28, 28), **params)


def plain_loop(X: np.ndarray, y: np.ndarray, params: dict | None, epochs: int) -> list[float]:
    """Seconds per epoch of the same training as a bare torch loop on float32 images."""
    torch.manual_seed(0)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    model = student(params)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        total = torch.zeros(())
        for idx in torch.randperm(len(Xt)).split(BATCH):
            loss = F.cross_entropy(model(Xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        float(total)
        seconds.append(time.perf_counter() - start)
    return seconds


def kdpipe_fit(X, y, params: dict | None, epochs: int) -> list[float]:
    from kdpipe import DistilledClassifier
    from kdpipe.students import ConvNet

    chosen = {} if params is None else {"module": ConvNet, "module_params": params}
    clf = DistilledClassifier(
        hidden_layer_sizes=(800, 800),
        max_epochs=epochs,
        batch_size=BATCH,
        learning_rate=LR,
        random_state=0,
        device="cpu",
        **chosen,
    )
    clf.fit(X, y)
    return [r["seconds"] for r in clf.history_]


def run(tmp: Path, repeats: int, quick: bool) -> dict:
    import zarr

    from kdpipe import LazyRows

    out = {}
    for name, (rows, params) in STUDENTS.items():
        rows = rows // 4 if quick else rows
        epochs = 2 if quick else 3
        raw, y, source = images(rows)
        scaled = raw.astype(np.float32) / 255  # the plain loop's input
        stored = zarr.create_array(
            store=str(tmp / f"X{rows}.zarr"), shape=raw.shape, chunks=(1024, 1, 28, 28), dtype="u1"
        )
        stored[:] = raw
        variants = {
            "fit, float32 images in numpy": scaled,
            "fit, uint8 images in numpy": raw,
            "fit, uint8 images in zarr (LazyRows)": LazyRows(stored),
        }
        nbytes = {
            "plain torch loop": scaled.nbytes,
            **{
                k: int(np.prod(raw.shape)) * np.dtype(v.dtype).itemsize for k, v in variants.items()
            },
        }
        plain_loop(scaled, y, params, 1)  # warm-up: first-call costs excluded
        loops = ["plain torch loop", "plain torch loop, again"]
        epoch_s: dict[str, list[float]] = {k: [] for k in [*loops, *variants]}
        for _ in range(repeats):
            for loop in loops:
                epoch_s[loop] += plain_loop(scaled, y, params, epochs)[1:]
            for key, X in variants.items():
                epoch_s[key] += kdpipe_fit(X, y, params, epochs)[1:]
        median = {k: float(np.median(v)) for k, v in epoch_s.items()}
        base = median[loops[0]]
        out[name] = {
            "rows": rows,
            "data": source,
            "batch_size": BATCH,
            "epochs_per_run": epochs,
            "runs": repeats,
            "torch_threads": torch.get_num_threads(),
            "x_bytes": nbytes,
            "epoch_seconds": epoch_s,
            "median_epoch_seconds": median,
            "ratio_vs_plain_loop": {k: v / base for k, v in median.items()},
        }
    return out


def markdown(r: dict) -> str:
    lines = [
        "# Image inputs: seconds per epoch against a plain torch loop (target <= 1.05)",
        "",
        f"Machine: {r['machine']}; {r['when']}. Compare with the A/A row (the plain loop again).",
        "",
        load_line(r["load_average_1_5_15"]["before"], r["load_average_1_5_15"]["after"]),
        "",
    ]
    for name, o in r["students"].items():
        lines += [
            f"## {name}",
            "",
            (
                f"{o['rows']} images (1, 28, 28) ({o['data']}), batch {o['batch_size']}, hard labels, "
                f"{o['runs']} runs of {o['epochs_per_run']} epochs (first epoch of each run dropped), "
                f"torch threads {o['torch_threads']}."
            ),
            "",
            "| variant | MiB of X | median s/epoch | ratio |",
            "|---|---|---|---|",
            *[
                f"| {k} | {o['x_bytes'][k.replace(', again', '')] / 2**20:.1f} | {v:.3f} | "
                f"{o['ratio_vs_plain_loop'][k]:.3f} |"
                for k, v in o["median_epoch_seconds"].items()
            ],
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "quick": args.quick,
            "students": run(Path(tmp), args.repeats, args.quick),
        }
    result["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    write_results(
        "images_quick" if args.quick else "images", result, markdown(result), folder=args.out
    )


if __name__ == "__main__":
    main()
