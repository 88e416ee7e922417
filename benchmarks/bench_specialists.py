"""Generalist alone vs generalist + specialists (Hinton et al. 2015, section 5).

On a generated problem of ~200 classes in groups of 10 confusable classes (and, with
``--fashion``, on Fashion-MNIST): top-1 accuracy overall and on the covered classes,
the table-4 breakdown by number of covering specialists, wall time of the specialist
phase serial vs ``n_jobs=2``, and inference cost per example. Writes
``benchmarks/results/specialists.json`` and ``.md``.

Usage: ``python benchmarks/bench_specialists.py [--quick] [--fashion]``.
Torch runs one intra-op thread per process (on small shared machines two threads per
process made small-batch training tens of times slower); ``n_jobs=2`` runs two
single-threaded worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.frozen import FrozenEstimator

from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier
from kdpipe.datasets import load_fashion_mnist, make_confusable_classification

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, *args, repeat: int = 1, **kw) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - start)
    return out, best


def run_problem(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    generalist: DistilledClassifier,
    specialist_params: dict[str, Any],
    teacher: Any = None,
) -> dict[str, Any]:
    teacher_logits = None
    if teacher is not None:
        teacher_logits = teacher.fit(X, y).predict_log_proba(X).astype(np.float32)
    fit_kw = {} if teacher_logits is None else {"teacher_logits": teacher_logits}
    generalist, gen_s = timed(generalist.fit, X, y, **fit_kw)
    print(
        f"[{name}] generalist fitted in {gen_s:.1f}s, test acc {generalist.score(X_test, y_test):.4f}",
        flush=True,
    )

    runs = {}
    # n_jobs=2 twice: "cold" includes starting joblib's worker processes, "warm" reuses them
    for label, n_jobs in (("serial", 1), ("n_jobs=2 cold", 2), ("n_jobs=2 warm", 2)):
        # frozen: the specialist phase alone is timed, on the generalist fitted above
        clf = SpecialistEnsembleClassifier(
            FrozenEstimator(generalist), n_jobs=n_jobs, **specialist_params
        )
        clf, seconds = timed(clf.fit, X, y, **fit_kw)
        runs[label] = (clf, seconds)
        print(f"[{name}] specialist phase {label}: {seconds:.1f}s", flush=True)
    clf = runs["serial"][0]
    same = np.allclose(
        clf.predict_proba(X_test[:500]),
        runs["n_jobs=2 warm"][0].predict_proba(X_test[:500]),
        atol=1e-6,
    )

    n_inf = min(len(X_test), 5000)
    _, gen_inf = timed(generalist.predict_proba, X_test[:n_inf], repeat=3)
    details, ens_inf = timed(clf.inference_details, X_test[:n_inf], repeat=3)
    report = clf.coverage_report(X_test, y_test)
    print(report.to_markdown(), flush=True)
    return {
        "problem": name,
        "n_train": len(X),
        "n_test": len(X_test),
        "n_features": int(X.shape[1]),
        "n_classes": len(clf.classes_),
        "teacher": None if teacher is None else type(teacher).__name__,
        "generalist": repr(generalist),
        "specialists": {k: v for k, v in specialist_params.items()},
        "n_specialists_fitted": len(clf.specialists_),
        "subset_sizes": [len(c) for c in clf.clusters_],
        "covered_classes": len(np.unique(np.concatenate(clf.clusters_))),
        "generalist_fit_s": gen_s,
        "specialist_phase_s": {label: seconds for label, (_, seconds) in runs.items()},
        "parallel_equals_serial": bool(same),
        "inference_us_per_example": {
            "generalist": 1e6 * gen_inf / n_inf,
            "ensemble": 1e6 * ens_inf / n_inf,
        },
        "inference": {
            "mean_active_specialists": float(details.n_active.mean()),
            "mean_iterations_when_active": float(details.n_iter[details.n_active > 0].mean())
            if (details.n_active > 0).any()
            else 0.0,
            "max_iterations": int(details.n_iter.max()),
            "converged_share": float(details.converged.mean()),
        },
        "coverage": report.to_dict(),
        "coverage_markdown": report.to_markdown(),
    }


def synthetic(quick: bool, seed: int) -> tuple[np.ndarray, ...]:
    n_classes = 50 if quick else 200
    per_class = 60 if quick else 100
    X, y = make_confusable_classification(
        n_samples=2 * n_classes * per_class,
        n_classes=n_classes,
        group_size=10,
        n_features=20,
        random_state=seed,
    )
    half = len(X) // 2
    return X[:half], y[:half], X[half:], y[half:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 50-class problem, seconds")
    parser.add_argument("--fashion", action="store_true", help="also Fashion-MNIST")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = []

    X, y, X_test, y_test = synthetic(args.quick, args.seed)
    n_groups = len(np.unique(y)) // 10
    epochs = 10 if args.quick else 20
    # (name suffix, teacher, extra specialist settings): a partition into one subset per
    # group, the same distilled from an LDA teacher (the Bayes-optimal model family for
    # these Gaussian classes), and overlapping subsets (15 classes each) for table 4
    settings = [
        ("", None, {}),
        ("-lda-teacher", LinearDiscriminantAnalysis(), {}),
        ("-overlapping", None, {"classes_per_specialist": 15}),
    ]
    for suffix, teacher, extra in settings:
        generalist = DistilledClassifier(
            hidden_layer_sizes=(64,),
            learning_rate=3e-3,
            max_epochs=epochs,
            random_state=args.seed,
        )
        params = dict(
            n_specialists=n_groups,
            specialist_max_epochs=10,
            specialist_learning_rate=1e-3,
            random_state=args.seed,
            **extra,
        )
        name = f"confusable-{len(np.unique(y))}{suffix}"
        results.append(run_problem(name, X, y, X_test, y_test, generalist, params, teacher))

    if args.fashion:
        X, y = load_fashion_mnist(kind="train")
        X_test, y_test = load_fashion_mnist(kind="test")
        if args.quick:
            X, y = X[:10000], y[:10000]
        generalist = DistilledClassifier(
            hidden_layer_sizes=(128,),
            learning_rate=1e-3,
            max_epochs=5 if args.quick else 10,
            random_state=args.seed,
        )
        params = dict(n_specialists=3, specialist_max_epochs=3, random_state=args.seed)
        results.append(run_problem("fashion-mnist", X, y, X_test, y_test, generalist, params))

    meta = {
        "command": "python benchmarks/bench_specialists.py"
        + (" --quick" if args.quick else "")
        + (" --fashion" if args.fashion else ""),
        "seed": args.seed,
        "torch_threads_per_process": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "total_s": time.perf_counter() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "specialists_quick" if args.quick else "specialists"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        (
            f"# Specialists benchmark\n\n`{meta['command']}` ({meta['machine']}, "
            f"{meta['cpu_count']} CPUs, 1 torch thread per process, {meta['total_s']:.0f}s total)\n"
        )
    ]
    for r in results:
        inf = r["inference_us_per_example"]
        lines += [
            f"## {r['problem']}\n",
            (
                f"{r['n_train']} train / {r['n_test']} test rows, {r['n_classes']} classes, "
                f"teacher: {r['teacher']}; {r['n_specialists_fitted']} specialists covering "
                f"{r['covered_classes']} classes (subset sizes {r['subset_sizes']}).\n"
            ),
            (
                f"- top-1: generalist {r['coverage']['overall']['generalist_accuracy']:.4f}, "
                f"ensemble {r['coverage']['overall']['ensemble_accuracy']:.4f}"
            ),
            (
                f"- specialist phase: serial {r['specialist_phase_s']['serial']:.1f}s, "
                f"n_jobs=2 {r['specialist_phase_s']['n_jobs=2 warm']:.1f}s (worker processes "
                f"already started; {r['specialist_phase_s']['n_jobs=2 cold']:.1f}s when starting them) "
                f"(parallel equals serial: {r['parallel_equals_serial']}); generalist fit "
                f"{r['generalist_fit_s']:.1f}s"
            ),
            (
                f"- inference: generalist {inf['generalist']:.1f} µs/example, ensemble "
                f"{inf['ensemble']:.1f} µs/example; {r['inference']['mean_active_specialists']:.2f} "
                f"active specialists, {r['inference']['mean_iterations_when_active']:.2f} "
                f"iterations on average, converged {100 * r['inference']['converged_share']:.1f}%\n"
            ),
            r["coverage_markdown"] + "\n",
        ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / stem}.json/.md in {meta['total_s']:.0f}s")


if __name__ == "__main__":
    main()
