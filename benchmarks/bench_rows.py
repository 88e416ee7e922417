"""Benchmark of the row path: minibatch reads from a cache, and the per-epoch cost of fit.

1. Reads: random minibatches through the public API, ``np.asarray(cache[idx])``, from a
   logit cache of 60,000 rows x 5 members x 10 classes (float32) whose chunks are all in
   chunk memory, against numpy fancy indexing ``logits[idx]`` of the same array in
   memory, at 128 and 4096 rows per batch. Figure: cache rate / numpy rate (targets
   >= 0.30 at 128 and >= 0.80 at 4096).
2. Epochs: the per-epoch seconds of ``DistilledClassifier.fit`` (from ``history_``, so
   one-off setup is measured apart: fit seconds minus the epochs) with the teacher logits
   in an on-disk cache, and from numpy arrays, against a plain torch loop doing the same
   work in memory (same MLP, Adam, batch size, soft-target math at T=4 with alpha=0.1,
   per-epoch shuffling). Figure: median epoch seconds / the plain loop's (target <= 1.05),
   in wall time and in CPU time of the process (every thread, the reader's included; CPU
   time of a fit = a fit of 3 epochs minus one of 1, so setup and the first epoch drop
   out). On a shared machine the CPU figure is the steadier one. Each ratio comes with
   a 95% bootstrap interval, and the plain loop runs twice per repeat: the second copy's
   ratio is what the machine's noise alone gives. Also measured: the reading strategy the
   default replaced (every minibatch read in the prefetch thread, even from memory).

Variants alternate and every figure is a median over repeats (the machine is shared).
Only the public API is used (the strategy variant sets a class attribute an older
checkout ignores), so the same script measures an older checkout:
``PYTHONPATH=/tmp/old python benchmarks/bench_rows.py --label before``.

Writes ``benchmarks/results/rows[_LABEL].json`` and ``.md`` (``--quick``: small sizes,
``rows_quick[_LABEL].*``); ``--out DIR`` writes there instead.
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

TEMPERATURE, ALPHA, BATCH = 4.0, 0.1, 128


class LinearTeacher:
    """A cheap synthetic teacher: logits = X @ W (picklable, fingerprintable)."""

    def __init__(self, n_features: int, n_classes: int, seed: int):
        self.W = np.random.default_rng(seed).normal(size=(n_features, n_classes)).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.float32) @ self.W


def build(path: Path, X: np.ndarray, members: int, classes: int):
    from kdpipe import build_cache

    teachers = [LinearTeacher(X.shape[1], classes, seed) for seed in range(members)]
    return build_cache(teachers, X, path, chunk_rows=4096, progress=False, device="cpu")


# -- 1. reads -------------------------------------------------------------------------


def read_rates(tmp: Path, repeats: int, quick: bool) -> dict:
    from kdpipe import LogitCache

    n = 60_000
    X = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    build(tmp / "reads", X, members=5, classes=10)
    cache = LogitCache.open(tmp / "reads")
    logits = np.asarray(cache)  # also loads every chunk into chunk memory
    out = {}
    for batch in (128, 4096):
        n_batches = max(20, (200_000 if quick else 1_000_000) // batch)
        rng = np.random.default_rng(batch)
        batches = [rng.choice(n, size=batch, replace=False) for _ in range(n_batches)]
        assert np.array_equal(np.asarray(cache[batches[0]]), logits[batches[0]])
        rates: dict[str, list[float]] = {"numpy": [], "cache": []}
        for _ in range(repeats):
            start = time.perf_counter()
            for idx in batches:
                logits[idx]
            rates["numpy"].append(n_batches * batch / (time.perf_counter() - start))
            start = time.perf_counter()
            for idx in batches:
                np.asarray(cache[idx])
            rates["cache"].append(n_batches * batch / (time.perf_counter() - start))
        ratios = [c / m for c, m in zip(rates["cache"], rates["numpy"])]
        out[str(batch)] = {
            "batches": n_batches,
            "rows_per_s": rates,
            "median_rows_per_s": {k: float(np.median(v)) for k, v in rates.items()},
            "ratios": ratios,
            "median_ratio": float(np.median(ratios)),
        }
    return out


# -- 2. epochs ------------------------------------------------------------------------

EPOCH_SETTINGS = {
    # name: (rows, features, hidden layers); quick runs use a quarter of the rows
    "2x800 student on 784 features": (10_000, 784, (800, 800)),
    "256x256 student on 128 features": (20_000, 128, (256, 256)),
}


def plain_mlp(d: int, hidden: tuple[int, ...], classes: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = [torch.nn.Flatten()]
    width = d
    for units in hidden:
        layers += [torch.nn.Linear(width, units), torch.nn.ReLU()]
        width = units
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def plain_loop(
    X: np.ndarray, y: np.ndarray, logits: np.ndarray, hidden: tuple, epochs: int
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per epoch of the same training as a bare torch loop, in memory."""
    torch.manual_seed(0)
    Xt, yt, vt = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(logits)
    model = plain_mlp(X.shape[1], hidden, logits.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds = []
    for _ in range(epochs):
        start, cpu = time.perf_counter(), time.process_time()
        model.train()
        total = torch.zeros(())
        for idx in torch.randperm(len(Xt)).split(BATCH):
            z = model(Xt[idx])  # (b, C)
            p = F.softmax(vt[idx] / TEMPERATURE, dim=-1).mean(dim=1)  # (b, C), arithmetic mean
            log_q = F.log_softmax(z / TEMPERATURE, dim=-1)
            kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1).mean()
            loss = (1 - ALPHA) * TEMPERATURE**2 * kl + ALPHA * F.cross_entropy(z, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        float(total)
        seconds.append((time.perf_counter() - start, time.process_time() - cpu))
    return seconds


def kdpipe_fit(
    X, y, teacher_logits, hidden: tuple, epochs: int, patches: dict
) -> tuple[list[float], float, float]:
    """Per-epoch seconds (from ``history_``), one-off setup seconds, and CPU seconds of one fit.

    ``patches``: ``{(object, attribute): value}`` set during the fit (the reading
    strategies under test), then put back.
    """
    from kdpipe import DistilledClassifier

    clf = DistilledClassifier(
        hidden_layer_sizes=hidden,
        max_epochs=epochs,
        batch_size=BATCH,
        temperature=TEMPERATURE,
        alpha=ALPHA,
        classes=np.arange(10),
        random_state=0,
        device="cpu",
    )
    missing = object()
    saved = {key: vars(key[0]).get(key[1], missing) for key in patches}
    for (owner, name), value in patches.items():
        setattr(owner, name, value)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        clf.fit(X, y, teacher_logits=teacher_logits)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for (owner, name), value in saved.items():
            if value is missing:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
    per_epoch = [r["seconds"] for r in clf.history_]
    return per_epoch, total - sum(per_epoch), cpu


def strategies() -> dict[str, tuple[str, dict]]:
    """Variant name: (teacher logits from, patches of kdpipe during the fit)."""
    from kdpipe.rows import MinibatchSource

    return {
        "fit from arrays": ("arrays", {}),
        "fit from cache": ("cache", {}),
        # the strategy the default replaced: every minibatch read in the prefetch thread,
        # even when the rows are all in memory (an older checkout always does this)
        "fit from cache, every read in a thread": ("cache", {(MinibatchSource, "resident"): False}),
    }


def ratio_interval(
    values: list[float], base: list[float], rng: np.random.Generator
) -> tuple[float, float]:
    """95% bootstrap interval of median(values) / median(base), runs resampled."""
    a, b = np.asarray(values), np.asarray(base)
    boots = [
        np.median(rng.choice(a, len(a))) / np.median(rng.choice(b, len(b))) for _ in range(2000)
    ]
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def epoch_costs(tmp: Path, repeats: int, quick: bool) -> dict:
    from kdpipe import LogitCache

    out = {}
    for i, (name, (n, d, hidden)) in enumerate(EPOCH_SETTINGS.items()):
        n = n // 4 if quick else n
        epochs = 2 if quick else 3
        X = np.random.default_rng(i).random((n, d), dtype=np.float32)
        build(tmp / f"epochs{i}", X, members=4, classes=10)
        cache = LogitCache.open(tmp / f"epochs{i}")
        logits = np.asarray(cache)
        y = np.argmax(logits.mean(axis=1), axis=1)
        assert cache.classes.tolist() == list(range(10))
        plain_loop(X, y, logits, hidden, 1)  # warm-up: first-call costs excluded
        # the same loop twice: the spread between the two is the machine's noise
        loops = ["plain torch loop", "plain torch loop, again"]
        variants = strategies()
        epoch_s: dict[str, list[float]] = {k: [] for k in [*loops, *variants]}
        cpu_s: dict[str, list[float]] = {k: [] for k in epoch_s}
        setup_s: dict[str, list[float]] = {k: [] for k in variants}
        inputs = {"arrays": logits, "cache": cache}
        for _ in range(repeats):
            # the first epoch of each run also warms caches: the later ones are the cost
            for loop in loops:
                plain = plain_loop(X, y, logits, hidden, epochs)[1:]
                epoch_s[loop] += [w for w, _ in plain]
                cpu_s[loop].append(float(np.mean([c for _, c in plain])))
            for key, (source, patches) in variants.items():
                per_epoch, setup, cpu = kdpipe_fit(X, y, inputs[source], hidden, epochs, patches)
                _, _, cpu_one = kdpipe_fit(X, y, inputs[source], hidden, 1, patches)
                epoch_s[key] += per_epoch[1:]
                cpu_s[key].append((cpu - cpu_one) / (epochs - 1))  # epochs 2.. without setup
                setup_s[key].append(setup)
        cpu_median = {k: float(np.median(v)) for k, v in cpu_s.items()}
        median = {k: float(np.median(v)) for k, v in epoch_s.items()}
        base = median[loops[0]]
        rng = np.random.default_rng(0)
        out[name] = {
            "rows": n,
            "features": d,
            "student": "MLP " + "x".join(map(str, hidden)),
            "members": 4,
            "classes": 10,
            "batch_size": BATCH,
            "epochs_per_run": epochs,
            "runs": repeats,
            "torch_threads": torch.get_num_threads(),
            "epoch_seconds": epoch_s,
            "median_epoch_seconds": median,
            "setup_seconds": setup_s,
            "median_setup_seconds": {k: float(np.median(v)) for k, v in setup_s.items()},
            "ratio_vs_plain_loop": {k: v / base for k, v in median.items()},
            "ratio_interval_95": {
                k: ratio_interval(v, epoch_s[loops[0]], rng) for k, v in epoch_s.items()
            },
            "cpu_seconds_per_epoch": cpu_s,
            "median_cpu_seconds_per_epoch": cpu_median,
            "cpu_ratio_vs_plain_loop": {k: v / cpu_median[loops[0]] for k, v in cpu_median.items()},
        }
    return out


def markdown(r: dict) -> str:
    lines = [
        f"# Row path benchmark ({r['label']})",
        "",
        (
            f"Machine: {r['machine']}; {r['when']}; kdpipe from {r['kdpipe']}. Timings are noisy on "
            "this machine: compare the A/A row."
        ),
        "",
        *(
            [load_line(r["load_average_1_5_15"]["before"], r["load_average_1_5_15"]["after"]), ""]
            if "load_average_1_5_15" in r
            else []
        ),
        "## Random minibatch reads: `np.asarray(cache[idx])` / numpy `logits[idx]`",
        "",
        (
            "Cache: 60,000 rows x 5 members x 10 classes float32, every chunk in chunk memory. "
            "Targets: >= 0.30 at 128 rows, >= 0.80 at 4096."
        ),
        "",
        "| rows per batch | numpy rows/s | cache rows/s | median ratio | ratios |",
        "|---|---|---|---|---|",
    ]
    for batch, o in r["reads"].items():
        m = o["median_rows_per_s"]
        lines.append(
            f"| {batch} | {m['numpy']:,.0f} | {m['cache']:,.0f} | {o['median_ratio']:.3f} | "
            + ", ".join(f"{x:.2f}" for x in o["ratios"])
            + " |"
        )
    lines += ["", "## Seconds per epoch against a plain torch loop in memory (target <= 1.05)", ""]
    for name, o in r["epochs"].items():
        lines += [
            f"### {name}",
            "",
            (
                f"{o['rows']} rows, {o['student']}, batch {o['batch_size']}, teacher 4 x 10 logits, "
                f"{o['runs']} runs of {o['epochs_per_run']} epochs (first epoch of each run dropped), "
                f"torch threads {o['torch_threads']}. Interval: 95% bootstrap of the ratio of medians, runs "
                "resampled; the plain loop's second copy shows what the machine's noise alone gives."
            ),
            "",
            "| variant | median wall s/epoch | wall ratio | 95% interval | median CPU s/epoch | CPU ratio | median one-off setup (s) |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {k} | {v:.3f} | {o['ratio_vs_plain_loop'][k]:.3f} | "
                + "{:.3f}-{:.3f}".format(*o["ratio_interval_95"][k])
                + " | "
                f"{o['median_cpu_seconds_per_epoch'][k]:.3f} | {o['cpu_ratio_vs_plain_loop'][k]:.3f} | "
                + (f"{o['median_setup_seconds'][k]:.3f}" if k in o["median_setup_seconds"] else "-")
                + " |"
                for k, v in o["median_epoch_seconds"].items()
            ],
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    import kdpipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--label", default="", help="suffix of the results files, e.g. 'before'")
    parser.add_argument("--only", choices=["reads", "epochs"], default=None)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "label": args.label or "current",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "kdpipe": str(Path(kdpipe.__file__).parent),
            "quick": args.quick,
            "reads": {}
            if args.only == "epochs"
            else read_rates(Path(tmp), args.repeats, args.quick),
            "epochs": {}
            if args.only == "reads"
            else epoch_costs(Path(tmp), args.repeats, args.quick),
        }
    result["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    stem = "rows_quick" if args.quick else "rows"
    stem += f"_{args.label}" if args.label else ""
    write_results(stem, result, markdown(result), folder=args.out)


if __name__ == "__main__":
    main()
