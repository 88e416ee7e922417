"""Benchmark of sparse logit caches (issue 12) against a dense float16 cache, at many classes.

For 1,000, 5,000 and 15,000 classes, a teacher with realistic structure: the Gaussian
class-conditional (LDA) logits ``x mu_c - |mu_c|^2 / 2`` of
:func:`kdpipe.datasets.make_confusable_classification`, its class means estimated from
rows the student never sees, so each row has a few confusable classes (its group) and a
long tail of far ones. Its logits over the training rows go into a dense float16 cache
and into sparse ones (top-k at a few ``k``, and sampled), all float16. Measured per
cache, against the dense cache in the same run:

- logit bytes per row (the stored record, and on disk including labels and digests);
- a student fitted from it (same seed, rows, epochs, temperature): test accuracy and
  agreement with the teacher's argmax, minus the dense student's (target: within 0.3
  points);
- fit wall time and CPU time, as a ratio to the dense fit;
- at the smallest class count, the temperature ``GridSearchCV`` picks over the top-k
  cache against the one it picks over the dense cache.

Writes ``benchmarks/results/sparse.json``, ``sparse.md`` and two plots
(``sparse_accuracy.png``, ``sparse_bytes.png``); ``--quick`` (a smoke run, small sizes)
writes ``sparse_quick.*``. Run ``python benchmarks/bench_sparse.py [--quick]``.
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

FULL = {
    "sizes": [  # classes, training rows, test rows, epochs
        (1000, 10000, 5000, 4),
        (5000, 10000, 5000, 2),
        (15000, 10000, 5000, 1),
    ],
    "ks": [8, 32, 128, 512],
    "draws": 64,
    "temperature": 4.0,
    "grid": [1.0, 4.0, 16.0],
    "grid_k": 32,
}
QUICK = {
    "sizes": [(1000, 3000, 1000, 1), (5000, 3000, 1000, 1)],
    "ks": [8, 32],
    "draws": 32,
    "temperature": 4.0,
    "grid": [1.0, 4.0],
    "grid_k": 32,
}
STUDENT = dict(hidden_layer_sizes=(64,), learning_rate=1e-2, batch_size=256, random_state=0)
CLASS_SEPARATION = 4.0  # of make_confusable_classification: a teacher right about 70% of the time
FIT_ROWS_PER_CLASS = 5  # rows per class from which the teacher's class means are estimated


class GaussianTeacher:
    """LDA logits of unit-variance Gaussian classes: ``x mu_c - |mu_c|^2 / 2``."""

    def __init__(self, means: np.ndarray):
        self.means = means.astype(np.float32)
        self.bias = (-0.5 * (self.means.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)
        self.kdpipe_fingerprint = f"gaussian-{self.means.shape}-{float(self.means.sum()):.6f}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.float32) @ self.means.T + self.bias


def problem(n_classes: int, n_train: int, n_test: int, seed: int = 0):
    """Train and test rows, and a teacher fitted on other rows of the same classes."""
    from kdpipe.datasets import make_confusable_classification

    n_fit = FIT_ROWS_PER_CLASS * n_classes
    X, y = make_confusable_classification(
        n_fit + n_train + n_test, n_classes, class_separation=CLASS_SEPARATION, random_state=seed
    )
    X = X.astype(np.float32)
    order = np.argsort(y, kind="stable")
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - np.searchsorted(
        y[order], y[order]
    )  # position within its class
    fit = rank < FIT_ROWS_PER_CLASS
    sums = np.zeros((n_classes, X.shape[1]))
    np.add.at(sums, y[fit], X[fit])
    teacher = GaussianTeacher(sums / np.bincount(y[fit], minlength=n_classes)[:, None])
    rest = np.random.default_rng(seed).permutation(np.flatnonzero(~fit))
    train, test = rest[:n_train], rest[n_train : n_train + n_test]
    return X[train], y[train], X[test], y[test], teacher


def fit_student(X, y, cache, epochs: int, temperature: float, seed: int = 0):
    from kdpipe import DistilledClassifier

    clf = DistilledClassifier(
        max_epochs=epochs, temperature=temperature, **{**STUDENT, "random_state": seed}
    )
    wall, cpu = time.perf_counter(), time.process_time()
    clf.fit(X, y, teacher_logits=cache)
    return clf, time.perf_counter() - wall, time.process_time() - cpu


def grid_pick(X, y, cache, epochs: int, grid: list[float]) -> tuple[float, list[float]]:
    import sklearn
    from sklearn.model_selection import GridSearchCV

    from kdpipe import DistilledClassifier

    with sklearn.config_context(enable_metadata_routing=True):
        est = DistilledClassifier(max_epochs=epochs, **STUDENT).set_fit_request(teacher_logits=True)
        search = GridSearchCV(est, {"temperature": grid}, cv=2, refit=False).fit(
            X, y, teacher_logits=cache
        )
    return float(search.best_params_["temperature"]), search.cv_results_["mean_test_score"].tolist()


def run(settings: dict, workdir: Path) -> dict:
    from kdpipe.cache import Sampled, TopK, build_cache

    out: dict = {"settings": {**settings, "student": STUDENT}, "classes": []}
    for n_classes, n_train, n_test, epochs in settings["sizes"]:
        X, y, X_test, y_test, teacher = problem(n_classes, n_train, n_test)
        teacher_test = teacher(X_test).argmax(axis=1)
        formats = {"dense": None}
        formats.update({f"topk{k}": TopK(k) for k in settings["ks"]})
        formats[f"sampled{settings['draws']}"] = Sampled(settings["draws"], settings["temperature"])
        entry: dict = {
            "n_classes": n_classes,
            "train_rows": n_train,
            "test_rows": n_test,
            "epochs": epochs,
            "teacher_test_accuracy": float((teacher_test == y_test).mean()),
            "formats": {},
        }
        caches = {}
        v = teacher(X[:2000]).astype(np.float64) / settings["temperature"]
        v -= v.max(axis=1, keepdims=True)
        top = -np.sort(-v, axis=1)
        total = np.exp(v).sum(axis=1)
        for name, sparse in formats.items():
            start = time.perf_counter()
            cache = build_cache(
                teacher,
                X,
                workdir / f"{n_classes}-{name}",
                y=y,
                dtype="float16",
                sparse=sparse,
                chunk_rows=2048,
                progress=False,
            )
            build_s = time.perf_counter() - start
            info = cache.info()
            caches[name] = cache
            k = getattr(sparse, "k", None)
            entry["formats"][name] = {
                # the teacher's mass outside its top k at the training T: the error bound's p_tail
                "tail_mass": None
                if k is None
                else float((1 - np.exp(top[:, :k]).sum(axis=1) / total).mean()),
                "k": getattr(sparse, "k", getattr(sparse, "draws", None)),
                "logit_bytes_per_row": info["logit_bytes_per_row"],
                "disk_bytes_per_row": info["bytes_per_row"],
                "build_s": build_s,
            }
        # the yardstick of the differences: the dense student with another seed
        runs = [(name, cache, 0) for name, cache in caches.items()] + [
            ("dense, seed 1", caches["dense"], 1)
        ]
        entry["formats"]["dense, seed 1"] = dict(entry["formats"]["dense"])
        for name, cache, seed in runs:
            clf, wall, cpu = fit_student(X, y, cache, epochs, settings["temperature"], seed)
            predicted = clf.predict(X_test)
            entry["formats"][name].update(
                accuracy=float((predicted == y_test).mean()),
                agreement=float((predicted == teacher_test).mean()),
                fit_wall_s=wall,
                fit_cpu_s=cpu,
            )
            print(f"{n_classes} classes, {name}: {entry['formats'][name]}", flush=True)
        dense = entry["formats"]["dense"]
        for record in entry["formats"].values():
            record["bytes_ratio"] = record["logit_bytes_per_row"] / dense["logit_bytes_per_row"]
            record["accuracy_diff_points"] = 100 * (record["accuracy"] - dense["accuracy"])
            record["agreement_diff_points"] = 100 * (record["agreement"] - dense["agreement"])
            record["fit_wall_ratio"] = record["fit_wall_s"] / dense["fit_wall_s"]
            record["fit_cpu_ratio"] = record["fit_cpu_s"] / dense["fit_cpu_s"]
        if n_classes == settings["sizes"][0][0]:
            topk = f"topk{settings['grid_k']}"
            dense_t, dense_scores = grid_pick(X, y, caches["dense"], epochs, settings["grid"])
            topk_t, topk_scores = grid_pick(X, y, caches[topk], epochs, settings["grid"])
            entry["grid_search"] = {
                "grid": settings["grid"],
                "cache": topk,
                "dense_pick": dense_t,
                "topk_pick": topk_t,
                "dense_scores": dense_scores,
                "topk_scores": topk_scores,
            }
            print(f"grid search: {entry['grid_search']}", flush=True)
        out["classes"].append(entry)
    return out


def markdown(result: dict, quick: bool, load: str) -> str:
    s = result["settings"]
    lines = [
        "# Sparse logit caches (issue 12): bytes, student quality and fit time against dense float16",
        "",
        f"Machine: {result['machine']}; {result['when']}; shared with other jobs (timings are noisy).",
        load,
        "",
        (
            "Teacher: Gaussian class-conditional (LDA) logits of `make_confusable_classification` "
            f"(groups of 10 confusable classes, class separation {CLASS_SEPARATION}), class means from {FIT_ROWS_PER_CLASS} held-out rows per "
            f"class. Student: MLP {STUDENT['hidden_layer_sizes']}, Adam lr {STUDENT['learning_rate']}, "
            f"batch {STUDENT['batch_size']}, seed 0, alpha 0.1, T = {s['temperature']} for every fit "
            "(sampled caches are drawn at that T). All caches float16, zarr, chunks of 2048 rows. "
            "Differences are in points (percent), sparse minus dense, on the test rows; the row "
            "'dense, seed 1' (the dense student with another seed) shows how large a difference "
            "training noise alone makes. 'tail mass at T': the teacher's mean probability outside its "
            "top k at the training T over 2,000 training rows (the p_tail of the error bound "
            "2 T p_tail in `kdpipe.losses.sparse_distillation_loss`)."
        ),
        "",
    ]
    for e in result["classes"]:
        lines += [
            f"## {e['n_classes']} classes",
            "",
            (
                f"{e['train_rows']} training rows, {e['test_rows']} test rows, {e['epochs']} epochs; "
                f"teacher test accuracy {100 * e['teacher_test_accuracy']:.2f}%."
            ),
            "",
            "| cache | logit bytes/row | of dense | disk bytes/row | tail mass at T | test acc % | diff | agreement % | diff | fit s (cpu s) | fit ratio wall (cpu) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in e["formats"].items():
            lines.append(
                f"| {name} | {r['logit_bytes_per_row']} | {100 * r['bytes_ratio']:.2f}% | "
                f"{r['disk_bytes_per_row']:.0f} | {'' if r['tail_mass'] is None else format(r['tail_mass'], '.4f')} | "
                f"{100 * r['accuracy']:.2f} | {r['accuracy_diff_points']:+.2f} | "
                f"{100 * r['agreement']:.2f} | {r['agreement_diff_points']:+.2f} | "
                f"{r['fit_wall_s']:.1f} ({r['fit_cpu_s']:.1f}) | {r['fit_wall_ratio']:.2f} ({r['fit_cpu_ratio']:.2f}) |"
            )
        g = e.get("grid_search")
        if g:
            lines += [
                "",
                (
                    f"GridSearchCV (cv=2) over T in {g['grid']}: dense picks T = {g['dense_pick']:g}, "
                    f"{g['cache']} picks T = {g['topk_pick']:g} "
                    f"({'the same' if g['dense_pick'] == g['topk_pick'] else 'DIFFERENT'}). Mean CV accuracy per T: "
                    f"dense {[round(v, 4) for v in g['dense_scores']]}, {g['cache']} {[round(v, 4) for v in g['topk_scores']]}."
                ),
            ]
        lines.append("")
    if quick:
        lines.append("(--quick: a smoke run at small sizes; the figures are not the benchmark's.)")
    return "\n".join(lines) + "\n"


def plots(result: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fig2, ax2 = plt.subplots(figsize=(5, 4))
    for e in result["classes"]:
        topk = {r["k"]: r for n, r in e["formats"].items() if n.startswith("topk")}
        sampled = [r for n, r in e["formats"].items() if n.startswith("sampled")]
        ks = sorted(topk)
        dense = e["formats"]["dense"]
        label = f"{e['n_classes']} classes"
        line = axes[0].plot(
            ks, [100 * topk[k]["accuracy"] for k in ks], "o-", label=f"top-k, {label}"
        )[0]
        axes[0].axhline(100 * dense["accuracy"], color=line.get_color(), ls="--", lw=1)
        axes[1].plot(
            ks, [100 * topk[k]["agreement"] for k in ks], "o-", color=line.get_color(), label=label
        )
        axes[1].axhline(100 * dense["agreement"], color=line.get_color(), ls="--", lw=1)
        for r in sampled:
            axes[0].plot([r["k"]], [100 * r["accuracy"]], "x", color=line.get_color(), ms=8)
            axes[1].plot([r["k"]], [100 * r["agreement"]], "x", color=line.get_color(), ms=8)
        ax2.plot(
            ks,
            [100 * topk[k]["bytes_ratio"] for k in ks],
            "o-",
            color=line.get_color(),
            label=label,
        )
    axes[0].set(
        xscale="log",
        xlabel="k (top-k; x: sampled, k = draws)",
        ylabel="student test accuracy %",
        title="accuracy (dashed: dense)",
    )
    axes[1].set(
        xscale="log",
        xlabel="k (top-k; x: sampled, k = draws)",
        ylabel="agreement with teacher %",
        title="agreement (dashed: dense)",
    )
    axes[0].legend(fontsize=7)
    ax2.axhline(10, color="gray", ls=":", label="target 10%")
    ax2.set(
        xscale="log",
        xlabel="k (top-k cache)",
        ylabel="logit bytes per row, % of dense float16",
        title="bytes",
    )
    ax2.legend(fontsize=7)
    for f, suffix in ((fig, "accuracy"), (fig2, "bytes")):
        f.tight_layout()
        f.savefig(RESULTS / f"{name}_{suffix}.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where caches go (default: a temp folder)"
    )
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        result = run(settings, Path(tmp))
    result["machine"] = machine()
    result["when"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = "sparse_quick" if args.quick else "sparse"
    write_results(name, result, markdown(result, args.quick, load_line(before, os.getloadavg())))
    plots(result, name)


if __name__ == "__main__":
    main()
