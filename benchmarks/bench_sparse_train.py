"""Students trained to convergence from sparse caches at <= 5% of dense bytes (issue 21).

At 5,000 classes (the teacher and data of :mod:`benchmarks.bench_sparse`: Gaussian
class-conditional logits with a few confusable classes per row and a long tail), every
sparse format that fits in 5% of the dense float16 bytes per row trains a student for
``epochs`` (20+) epochs with 3 seeds, next to the dense student with the same seeds; a
second set of dense seeds is the yardstick (how far two dense students differ by training
noise alone). Reported per format: bytes per row, test accuracy, and the gap to dense in
points, as the mean over seeds of the per-seed difference (same seed, same rows) +- its
standard error. The winning formats are also trained at other temperatures (``T`` in
2-8) from the *same* caches, to show the temperature is still chosen at fit time.

Fit time: the ratio of a sparse fit's wall time to the dense fit's, in the same run, at
5,000 and 15,000 classes (the median of ``repeats`` alternating fits each).

Writes ``benchmarks/results/sparse_train.json``, ``sparse_train.md`` and the plot
``sparse_train.png`` (accuracy gap against bytes per row); ``--quick`` (a smoke run,
small sizes) writes ``sparse_train_quick.*``. Run
``python benchmarks/bench_sparse_train.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kdpipe

from benchmarks._common import RESULTS, load_line, machine, write_results
from benchmarks.bench_sparse import problem


def formats(quick: bool) -> dict:
    """Every sparse format compared, at <= 5% of dense float16 bytes at 5,000 classes
    (500 bytes a row for one teacher), and the old bucket tail at the same bytes."""
    from kdpipe.cache import TopK, TopKSampledTail

    if quick:
        return {
            "topk16 bucket": TopK(16, tail="bucket"),
            "topk16 uniform": TopK(16, tail="uniform"),
            "topk8+8@4": TopKSampledTail(8, 8, 4.0),
        }
    return {
        "topk113 bucket (before)": TopK(113, tail="bucket"),
        "topk113 uniform": TopK(113, tail="uniform"),
        "topk149 uniform uint8": TopK(149, tail="uniform", values="uint8"),
        "topk64+32@4 sampled tail": TopKSampledTail(64, 32, 4.0),
    }


def sweep_only() -> dict:
    """Formats a sweep may name that the main comparison leaves out: tail draws at the
    sweep's T, and larger formats (above the 5% budget) that show how many bytes a
    temperature's goal takes."""
    from kdpipe.cache import LowRank, Sampled, TopK, TopKSampledTail

    return {
        "lowrank248": LowRank(248),  # 5% of dense a row; this teacher's logits have rank 21
        "topk64+32@8 sampled tail": TopKSampledTail(64, 32, 8.0),
        "topk16+64@8 sampled tail": TopKSampledTail(16, 64, 8.0),
        "sampled125@8": Sampled(125, 8.0),
        "topk64+160@8 sampled tail (12.6%)": TopKSampledTail(64, 160, 8.0),
        "topk64+480@8 sampled tail (31.8%)": TopKSampledTail(64, 480, 8.0),
        "topk1000 uniform (40.5%)": TopK(1000, tail="uniform"),
    }


FULL = {
    "classes": 5000,
    "train_rows": 4000,
    "test_rows": 2000,
    "epochs": 20,
    "seeds": [0, 1, 2],
    "yardstick_seeds": [3, 4, 5],
    "temperature": 4.0,
    "sweep": [2.0, 8.0],
    "sweep_formats": ["topk113 uniform"],
    "timing": [(5000, 3000, 3), (15000, 2000, 3)],  # classes, rows, repeats (1 epoch each)
}
QUICK = {
    "classes": 500,
    "train_rows": 1500,
    "test_rows": 500,
    "epochs": 3,
    "seeds": [0, 1],
    "yardstick_seeds": [2],
    "temperature": 4.0,
    "sweep": [2.0],
    "sweep_formats": ["topk16 uniform"],
    "timing": [(500, 1500, 1)],
}
STUDENT = {
    "hidden_layer_sizes": (),
    "learning_rate": 1e-2,
    "batch_size": 128,
    "alpha": 0.1,
}  # a linear student


def fit_student(X, y, cache, epochs: int, temperature: float, seed: int, classes=None):
    """The linear student fitted from ``cache`` (or in-memory logits, whose ``classes`` must
    then be named), and its fit's wall seconds."""
    from kdpipe import DistilledClassifier

    clf = DistilledClassifier(
        max_epochs=epochs, temperature=temperature, random_state=seed, classes=classes, **STUDENT
    )
    start = time.perf_counter()
    clf.fit(X, y, teacher_logits=cache)
    return clf, time.perf_counter() - start


def build(teacher, X, y, path: Path, sparse):
    from kdpipe.cache import build_cache

    return build_cache(
        teacher, X, path, y=y, dtype="float16", sparse=sparse, chunk_rows=2048, progress=False
    )


def gap(values: list[float], dense: list[float]) -> dict:
    """Per-seed differences in points, their mean and its standard error."""
    d = 100 * (np.asarray(values) - np.asarray(dense))
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"diffs_points": d.tolist(), "mean_points": float(d.mean()), "se_points": se}


def accuracy_runs(
    s: dict, workdir: Path, quick: bool, temperatures: list[float], sweep: bool = False
) -> dict:
    X, y, X_test, y_test, teacher = problem(s["classes"], s["train_rows"], s["test_rows"])
    caches = {"dense": build(teacher, X, y, workdir / "dense", None)}
    specs = formats(quick)
    if sweep:  # only the formats it compares (its temperatures may include the main one)
        specs = {
            name: spec
            for name, spec in {**specs, **sweep_only()}.items()
            if name in s["sweep_formats"]
        }
    for name, spec in specs.items():
        caches[name] = build(teacher, X, y, workdir / name.replace(" ", "_"), spec)
    dense_bytes = caches["dense"].info()["logit_bytes_per_row"]
    for cache in caches.values():  # untimed: torch's first-call costs go to no format
        fit_student(X[:512], y[:512], cache[:512], 1, temperatures[0], 0)
    v = teacher(X[:2000]).astype(np.float64)
    out: dict = {
        "teacher_test_accuracy": float((teacher(X_test).argmax(1) == y_test).mean()),
        "runs": {},
    }

    def train(name: str, t: float, seeds: list[int]) -> dict:
        accs, times = [], []
        for seed in seeds:
            clf, wall = fit_student(X, y, caches[name], s["epochs"], t, seed)
            accs.append(float((clf.predict(X_test) == y_test).mean()))
            times.append(wall)
            print(
                f"T={t:g} {name} seed {seed}: accuracy {accs[-1]:.4f}, fit {wall:.1f} s", flush=True
            )
        return {"accuracy": accs, "fit_wall_s": times}

    for t in temperatures:
        row: dict = {}
        for name in ["dense", *specs]:
            row[name] = train(name, t, s["seeds"])
        if t == s["temperature"]:
            row["dense, other seeds"] = train("dense", t, s["yardstick_seeds"])
        a = v / t
        a -= a.max(axis=1, keepdims=True)
        p = np.exp(a) / np.exp(a).sum(axis=1, keepdims=True)
        top = -np.sort(-p, axis=1)
        for name, r in row.items():
            cache = caches["dense" if name.startswith("dense") else name]
            info = cache.info()
            r["logit_bytes_per_row"] = info["logit_bytes_per_row"]
            r["bytes_ratio"] = info["logit_bytes_per_row"] / dense_bytes
            r["gap"] = gap(r["accuracy"], row["dense"]["accuracy"])
            r["mean_accuracy"] = float(np.mean(r["accuracy"]))
            k = getattr(specs.get(name), "k", None)
            r["tail_mass"] = None if k is None else float((1 - top[:, :k].sum(axis=1)).mean())
            r["fit_ratio"] = float(
                np.median(r["fit_wall_s"]) / np.median(row["dense"]["fit_wall_s"])
            )
        out["runs"][f"{t:g}"] = row
    out["formats"] = {name: spec.to_dict() for name, spec in specs.items()}
    return out


def timing_runs(s: dict, workdir: Path, quick: bool) -> list[dict]:
    from kdpipe.cache import LowRank, TopK, TopKSampledTail

    out = []
    for n_classes, rows, repeats in s["timing"]:
        X, y, _, _, teacher = problem(n_classes, rows, 10)
        budget = n_classes * 2 // 20  # 5% of dense float16 bytes, per row
        k_uniform = max(4, (budget - 48) // 4)
        specs = {
            "dense": None,
            f"topk{k_uniform} uniform": TopK(k_uniform, tail="uniform"),
            f"topk{k_uniform} bucket": TopK(k_uniform, tail="bucket"),
            "topk64+32@4 sampled tail": TopKSampledTail(min(64, n_classes // 4), 32, 4.0),
            # decodes every row through its basis: rank x C multiply-adds a row, more than
            # a linear student's own forward pass
            f"lowrank{(budget - 4) // 2}": LowRank(min((budget - 4) // 2, rows - 1)),
            # the rank this teacher needs (its logits are affine in the features): the
            # decode's cost is the rank's, not the byte budget's
            f"lowrank{X.shape[1] + 1} (the teacher's rank)": LowRank(X.shape[1] + 1),
        }
        caches = {
            name: build(teacher, X, y, workdir / f"t{n_classes}-{i}", spec)
            for i, (name, spec) in enumerate(specs.items())
        }
        times: dict[str, list[float]] = {name: [] for name in caches}
        for cache in caches.values():  # untimed: torch's first-call costs go to no format
            fit_student(X[:512], y[:512], cache[:512], 1, 4.0, 0)
        for _ in range(repeats):  # alternate, so drifting load hits every format alike
            for name, cache in caches.items():
                times[name].append(fit_student(X, y, cache, 1, 4.0, 0)[1])
        entry = {"classes": n_classes, "rows": rows, "epochs": 1, "repeats": repeats, "fits": {}}
        for name, t in times.items():
            entry["fits"][name] = {
                "wall_s": t,
                "median_s": float(np.median(t)),
                "ratio": float(np.median(t) / np.median(times["dense"])),
                "logit_bytes_per_row": caches[name].info()["logit_bytes_per_row"],
                "max_logit_error": (
                    float(caches[name].reconstruction_errors().max())
                    if hasattr(caches[name], "reconstruction_errors")
                    else None
                ),
            }
        print(f"timing {n_classes}: {entry}", flush=True)
        out.append(entry)
    return out


def markdown(result: dict, quick: bool, load: str) -> str:
    s = result["settings"]
    acc = result["accuracy"]
    lines = [
        "# Sparse caches at <= 5% of dense bytes, trained to convergence (issue 21)",
        "",
        f"Machine: {result['machine']}; {result['when']}; shared with other jobs (timings are noisy).",
        load,
        "",
        (
            f"{s['classes']} classes, {s['train_rows']} training rows, {s['test_rows']} test rows; teacher: "
            "Gaussian class-conditional (LDA) logits as in `bench_sparse.py` (test accuracy "
            f"{100 * acc['teacher_test_accuracy'] if acc else float('nan'):.2f}%). Student: linear, Adam lr {STUDENT['learning_rate']}, "
            f"batch {STUDENT['batch_size']}, alpha {STUDENT['alpha']}, {s['epochs']} epochs, seeds {s['seeds']}. "
            "Every cache float16. 'gap': the mean over seeds of (sparse - dense) test accuracy in points, "
            "same seed, +- its standard error; 'dense, other seeds' (seeds "
            f"{s['yardstick_seeds']} against {s['seeds']}) is the yardstick of training noise. Goal: |gap| <= 0.3 "
            "at <= 5% of dense bytes. 'tail mass': the teacher's mean probability outside its top k at T."
        ),
        "",
    ]
    for t, row in (acc or {"runs": {}})["runs"].items():
        lines += [
            f"## T = {t}",
            "",
            "| cache | logit bytes/row | of dense | tail mass | test acc % (mean) | gap (points) | per seed | within 0.3 | fit ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in row.items():
            g = r["gap"]
            within = "" if name == "dense" else ("yes" if abs(g["mean_points"]) <= 0.3 else "NO")
            lines.append(
                f"| {name} | {r['logit_bytes_per_row']} | {100 * r['bytes_ratio']:.2f}% | "
                f"{'' if r['tail_mass'] is None else format(r['tail_mass'], '.4f')} | {100 * r['mean_accuracy']:.2f} | "
                f"{g['mean_points']:+.2f} +- {g['se_points']:.2f} | {' / '.join(f'{d:+.2f}' for d in g['diffs_points'])} | "
                f"{within} | {r['fit_ratio']:.2f} |"
            )
        lines.append("")
    lines += (
        []
        if not result["timing"]
        else [
            "## Fit time against dense (1 epoch, median of alternating repeats)",
            "",
            (
                "'max logit error': a low-rank cache's largest decoded logit error over every "
                "row (its `reconstruction_errors()`)."
            ),
            "",
            "| classes | rows | cache | logit bytes/row | max logit error | median fit s | ratio to dense |",
            "|---|---|---|---|---|---|---|",
        ]
    )
    for e in result["timing"] or []:
        for name, f in e["fits"].items():
            error = f.get("max_logit_error")
            lines.append(
                f"| {e['classes']} | {e['rows']} | {name} | {f['logit_bytes_per_row']} | "
                f"{'' if error is None else f'{error:.2g}'} | {f['median_s']:.2f} | {f['ratio']:.2f} |"
            )
    lines.append("")
    if quick:
        lines.append("(--quick: a smoke run at small sizes; the figures are not the benchmark's.)")
    return "\n".join(lines) + "\n"


def plot(result: dict, name: str, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t, row in result["accuracy"]["runs"].items():
        for label, r in row.items():
            if label == "dense":
                continue
            g = r["gap"]
            x = 100 * r["bytes_ratio"] if not label.startswith("dense") else 5.6
            marker = {"4": "o", "2": "s", "8": "^"}.get(t, "o")
            ax.errorbar(
                [x],
                [g["mean_points"]],
                yerr=[g["se_points"]],
                fmt=marker,
                capsize=3,
                label=f"T={t}: {label}",
            )
    ax.axhspan(-0.3, 0.3, color="green", alpha=0.1, label="goal: within 0.3 points")
    ax.axhline(0, color="gray", lw=1)
    ax.set(
        xlabel="logit bytes per row, % of dense float16 (yardstick drawn at 5.6%)",
        ylabel="test accuracy minus dense, points (mean +- SE)",
        title=f"{result['settings']['classes']} classes, {result['settings']['epochs']} epochs",
    )
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(folder / f"{name}.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where caches go (default: a temp folder)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument(
        "--part",
        choices=["accuracy", "sweep", "timing"],
        default="accuracy",
        help="accuracy: every format at the main T; sweep: the other temperatures; timing: fit-time ratios "
        "(three runs that can go in parallel; each writes sparse_train_PART.*)",
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=None,
        help="the sweep's temperatures instead",
    )
    parser.add_argument(
        "--sweep-formats",
        nargs="+",
        default=None,
        help="the sweep's formats instead (names as in the tables)",
    )
    parser.add_argument("--name", default=None, help="results name (default: sparse_train_PART)")
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.temperatures:
        settings["sweep"] = args.temperatures
    if args.sweep_formats:
        settings["sweep_formats"] = args.sweep_formats
    before = os.getloadavg()
    result: dict = {
        "settings": {**settings, "student": STUDENT},
        "part": args.part,
        "accuracy": None,
        "timing": None,
    }
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        if args.part == "timing":
            result["timing"] = timing_runs(settings, Path(tmp), args.quick)
        else:
            temperatures = (
                [settings["temperature"]] if args.part == "accuracy" else settings["sweep"]
            )
            result["accuracy"] = accuracy_runs(
                settings, Path(tmp), args.quick, temperatures, sweep=args.part == "sweep"
            )
    result["machine"] = machine()
    result["when"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = args.name or f"sparse_train_{args.part}" + ("_quick" if args.quick else "")
    write_results(
        name, result, markdown(result, args.quick, load_line(before, os.getloadavg())), args.out
    )
    if result["accuracy"]:
        plot(result, name, args.out)


if __name__ == "__main__":
    main()
