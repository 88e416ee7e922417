"""Benchmark of DistilledClassifier on on-disk data: fit-time overhead and peak memory.

1. Overhead: the wall time of fitting one student with its teacher logits read from an
   on-disk ``LogitCache``, divided by the same fit (same seed, same epochs, same rows)
   from in-memory numpy arrays; also with ``X`` in zarr as well. Runs alternate and the
   median of each is used (the machine is shared). Target: at most 1.10.
2. Memory: peak resident memory (``ru_maxrss``) of a fresh process that fits a student
   for one epoch from a zarr ``X`` and a ``LogitCache`` several times larger than that
   figure, next to the process's resident memory just before ``fit``.

Writes ``benchmarks/results/distilled.json`` and ``.md`` (``--quick``:
``distilled_quick.*``, small sizes). Run ``python benchmarks/bench_distilled.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


class LinearTeacher:
    """A cheap synthetic teacher: logits = X @ W (picklable, fingerprintable)."""

    def __init__(self, n_features: int, n_classes: int, seed: int):
        self.W = np.random.default_rng(seed).normal(size=(n_features, n_classes)).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.float32) @ self.W


def transfer_set(path: Path, n: int, d: int, chunk_rows: int = 4096):
    """A zarr ``X`` of random rows, written chunk by chunk (never whole in memory)."""
    import zarr

    X = zarr.create_array(store=str(path), shape=(n, d), chunks=(chunk_rows, d), dtype="float32")
    rng = np.random.default_rng(0)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        X[start:stop] = rng.normal(size=(stop - start, d)).astype(np.float32)
    return X


def build(path: Path, X, members: int, classes: int):
    from kdpipe.cache import build_cache

    teachers = [LinearTeacher(X.shape[1], classes, seed) for seed in range(members)]
    return build_cache(teachers, X, path, chunk_rows=4096, progress=False)  # all unlabeled


OVERHEAD_SETTINGS = {
    # name: (rows, features, hidden layers, epochs); quick runs use a quarter of the rows
    "paper student 2x800 on 784 features": (20_000, 784, (800, 800), 2),
    "small student 256x256 on 128 features": (40_000, 128, (256, 256), 3),
}


def overhead(args: argparse.Namespace, tmp: Path) -> dict:
    out = {}
    for i, (name, (n, d, hidden, epochs)) in enumerate(OVERHEAD_SETTINGS.items()):
        if args.quick:
            n, epochs = n // 4, 1
        out[name] = overhead_one(args, tmp / f"overhead{i}", n, d, hidden, epochs)
    return out


def overhead_one(
    args: argparse.Namespace, tmp: Path, n: int, d: int, hidden: tuple, epochs: int
) -> dict:
    import torch

    from kdpipe import DistilledClassifier

    X_zarr = transfer_set(tmp / "X.zarr", n, d)
    X = np.asarray(X_zarr)
    cache = build(tmp / "cache", X, members=4, classes=10)
    logits = np.asarray(cache)
    y = np.argmax(logits.mean(axis=1), axis=1)
    params = dict(
        hidden_layer_sizes=hidden, max_epochs=epochs, batch_size=128, random_state=0, device="cpu"
    )
    variants = {
        "arrays": lambda: DistilledClassifier(**params).fit(X, y, teacher_logits=logits),
        "cache": lambda: DistilledClassifier(**params).fit(X, y, teacher_logits=cache),
        "zarr_X+cache": lambda: DistilledClassifier(**params).fit(X_zarr, y, teacher_logits=cache),
    }
    variants["arrays"]()  # warm-up: first-call costs (threads, allocator) excluded
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fit in variants.items():
            start = time.perf_counter()
            fit()
            times[name].append(time.perf_counter() - start)
    median = {k: float(np.median(v)) for k, v in times.items()}
    best = {k: float(np.min(v)) for k, v in times.items()}
    return {
        "read_seconds_per_epoch": read_cost(X, X_zarr, y, logits, cache, batch_size=128),
        "rows": n,
        "features": d,
        "members": 4,
        "classes": 10,
        "cache_bytes": int(logits.nbytes),
        "student": "MLP " + "x".join(map(str, hidden)),
        "epochs": epochs,
        "batch_size": 128,
        "torch_threads": torch.get_num_threads(),
        "seconds": times,
        "median_seconds": median,
        "min_seconds": best,
        "ratio_cache_vs_arrays": median["cache"] / median["arrays"],
        "ratio_zarr_X_and_cache_vs_arrays": median["zarr_X+cache"] / median["arrays"],
        "ratio_of_minima_cache_vs_arrays": best["cache"] / best["arrays"],
        "ratio_of_minima_zarr_X_and_cache_vs_arrays": best["zarr_X+cache"] / best["arrays"],
    }


def read_cost(X, X_zarr, y, logits, cache, batch_size: int) -> dict[str, float]:
    """Seconds to read one shuffled epoch of minibatches, alone (no training): robust to
    the noise that the fit times suffer, and an upper bound on what reading can add."""
    from kdpipe.rows import MinibatchSource

    sources = {
        "arrays": MinibatchSource(X, y, logits),
        "cache": MinibatchSource(X, y, cache),
        "zarr_X+cache": MinibatchSource(X_zarr, y, cache),
    }
    order = np.random.default_rng(0).permutation(len(y))
    out = {}
    for name, source in sources.items():
        start = time.perf_counter()
        for b in range(0, len(order), batch_size):
            source.fetch(order[b : b + batch_size])
        out[name] = time.perf_counter() - start
    return out


_CHILD = r"""
import json, resource, sys, time
import numpy as np, zarr
from kdpipe import DistilledClassifier
from kdpipe.cache import LogitCache
X = zarr.open_array(sys.argv[1], mode="r")
cache = LogitCache.open(sys.argv[2])
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
clf = DistilledClassifier(hidden_layer_sizes=(64,), max_epochs=1, batch_size=1024,
                          shuffle_window=65536, random_state=0, device="cpu")
clf.fit(X, None, teacher_logits=cache)  # an unlabeled transfer set
print(json.dumps({"rss_before_fit": rss_before,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "fit_seconds": time.perf_counter() - start,
                  "rows_per_s": clf.history_[0]["rows_per_s"]}))
"""


def memory(args: argparse.Namespace, tmp: Path) -> dict:
    n, d, members, classes = (400_000, 32, 15, 10) if args.quick else (3_500_000, 32, 15, 10)
    start = time.perf_counter()
    X = transfer_set(tmp / "X_big.zarr", n, d)
    cache = build(tmp / "big_cache", X, members, classes)
    build_seconds = time.perf_counter() - start
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp / "X_big.zarr"), str(cache.path)],
        capture_output=True,
        text=True,
        check=True,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    cache_bytes, X_bytes = n * members * classes * 4, n * d * 4
    return {
        "rows": n,
        "features": d,
        "members": members,
        "classes": classes,
        "X_bytes_float32": X_bytes,
        "cache_bytes_float32": cache_bytes,
        "build_seconds": build_seconds,
        **child,
        "fit_memory_bytes": child["peak_rss"] - child["rss_before_fit"],
        "cache_over_peak_rss": cache_bytes / child["peak_rss"],
        "data_over_peak_rss": (cache_bytes + X_bytes) / child["peak_rss"],
    }


def markdown(r: dict) -> str:
    m, mib = r["memory"], 2**20
    lines = [
        "# DistilledClassifier: on-disk fit benchmark",
        "",
        f"Machine: {r['machine']}, shared with other jobs (timings are noisy); {r['when']}.",
        "",
        "## Fit-time overhead of reading from disk (target <= 1.10)",
        "",
        (
            "Same seed, epochs and rows; runs alternate between the inputs. Teacher logits: an "
            "ensemble of 4 x 10 classes, from numpy or from a LogitCache (zarr); X from numpy or zarr."
        ),
    ]
    for name, o in r["overhead"].items():
        lines += [
            "",
            f"### {name}",
            "",
            (
                f"{o['rows']} rows, {o['student']}, {o['epochs']} epochs, batch {o['batch_size']}, "
                f"torch threads {o['torch_threads']}, {len(o['seconds']['arrays'])} runs each."
            ),
            "",
            "| inputs | median fit (s) | ratio of medians | fastest fit (s) | ratio of minima |",
            "|---|---|---|---|---|",
            *[
                f"| {k} | {v:.2f} | {v / o['median_seconds']['arrays']:.3f} | "
                f"{o['min_seconds'][k]:.2f} | {o['min_seconds'][k] / o['min_seconds']['arrays']:.3f} |"
                for k, v in o["median_seconds"].items()
            ],
            "",
            "Reading one shuffled epoch of minibatches alone (no training), seconds: "
            + ", ".join(f"{k} {v:.3f}" for k, v in o["read_seconds_per_epoch"].items())
            + f"; one training epoch from arrays takes {o['min_seconds']['arrays'] / o['epochs']:.2f} s"
            " at best (the reading overlaps with it in a background thread).",
        ]
    lines += [
        "",
        "## Peak memory when fitting from data larger than it",
        "",
        (
            f"X: zarr, {m['rows']:,} x {m['features']} float32 = {m['X_bytes_float32'] / mib:.0f} MiB; "
            f"cache: {m['members']} members x {m['classes']} classes float32 = "
            f"{m['cache_bytes_float32'] / mib:.0f} MiB. One epoch, MLP 64, batch 1024, "
            "shuffle_window 65536, in a fresh process."
        ),
        "",
        "| figure | value |",
        "|---|---|",
        f"| resident memory before fit (imports, torch) | {m['rss_before_fit'] / mib:.0f} MiB |",
        f"| peak resident memory | {m['peak_rss'] / mib:.0f} MiB |",
        f"| cache size / peak RSS | {m['cache_over_peak_rss']:.1f} |",
        f"| (X + cache) / peak RSS | {m['data_over_peak_rss']:.1f} |",
        f"| fit time | {m['fit_seconds']:.1f} s ({m['rows_per_s']:,.0f} rows/s) |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch directory")
    parser.add_argument(
        "--only",
        choices=["overhead", "memory"],
        default=None,
        help="rerun one part, keeping the other from the last results file",
    )
    args = parser.parse_args()
    stem = "distilled_quick" if args.quick else "distilled"
    previous = RESULTS / f"{stem}.json"
    old = json.loads(previous.read_text()) if args.only and previous.exists() else {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        result = {
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{__import__('os').cpu_count()} CPUs, Python {platform.python_version()}",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "quick": args.quick,
            "overhead": old.get("overhead") if args.only == "memory" else overhead(args, Path(tmp)),
            "memory": old.get("memory") if args.only == "overhead" else memory(args, Path(tmp)),
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
