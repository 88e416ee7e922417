"""How reliably label-free clustering recovers confusable groups (Hinton et al. 2015, §5.2).

Draws many random problems from :func:`kdpipe.datasets.make_confusable_classification`
(different numbers of groups, group sizes, separations and feature counts), gives each
a quick generalist (the Gaussian posterior of the empirical class means, a
nearest-centroid classifier), clusters the classes with
:func:`kdpipe.specialists.cluster_classes` on the generalist's predicted probabilities
with as many clusters as groups, and reports the adjusted Rand index (ARI) of the
subsets against the true groups: min, quartile, median, mean, and the share of
problems at ARI >= 0.9 and == 1. The clustering's wall time is reported as a ratio
to the generalist's prediction time measured in the same run.

Usage, from the repository root (so this checkout's ``kdpipe`` is imported):
``PYTHONPATH=. python benchmarks/bench_clustering.py [--problems 50] [--out DIR]``;
writes ``clustering.json`` and ``clustering.md`` to ``DIR`` (default
``benchmarks/results``). Two settings: ``standard`` (well separated groups) and
``hard`` (closer groups, fewer rows per class).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score

from kdpipe.datasets import make_confusable_classification
from kdpipe.specialists import cluster_classes
from kdpipe.specialists.clustering import class_points

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = {
    # kdpipe before: mini-batch K-means, 3 starts, on the correlation columns
    "mini-batch K-means (before)": lambda k, seed: MiniBatchKMeans(
        n_clusters=k, n_init=3, batch_size=1024, random_state=seed
    ),
    "K-means, 10 k-means++ restarts": lambda k, seed: KMeans(
        n_clusters=k, n_init=10, random_state=seed
    ),
}


SETTINGS = {
    # name: (group separation range, rows per class)
    "standard": ((8.0, 14.0), 60),
    "hard": ((5.0, 9.0), 20),  # groups closer, fewer and noisier rows
}


def draw_problem(seed: int, setting: str = "standard") -> dict[str, Any]:
    """Settings of problem ``seed``: 3-10 groups of 2-8 classes, varied separations."""
    (low, high), rows = SETTINGS[setting]
    rng = np.random.default_rng(seed)
    return dict(
        n_groups=int(rng.integers(3, 11)),
        group_size=int(rng.integers(2, 9)),
        n_features=int(rng.integers(8, 21)),
        group_separation=float(rng.uniform(low, high)),
        class_separation=float(rng.uniform(1.5, 4.0)),
        samples_per_class=rows,
    )


def nearest_centroid_proba(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """A quick generalist: ``softmax(-||x - mean_c||^2 / 2)`` over the classes ``(n, C)``."""
    centers = np.stack([X[y == c].mean(axis=0) for c in range(n_classes)])  # (C, d)
    d2 = ((X[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(axis=-1)  # (n, C)
    return softmax(-d2 / 2.0, axis=1)


def run_problem(seed: int, setting: str) -> dict[str, Any]:
    s = draw_problem(seed, setting)
    n_classes = s["n_groups"] * s["group_size"]
    X, y, groups = make_confusable_classification(
        n_samples=n_classes * s["samples_per_class"],
        n_classes=n_classes,
        n_groups=s["n_groups"],
        n_features=s["n_features"],
        group_separation=s["group_separation"],
        class_separation=s["class_separation"],
        random_state=seed,
        return_groups=True,
    )
    start = time.perf_counter()
    proba = nearest_centroid_proba(X, y, n_classes)
    generalist_s = time.perf_counter() - start
    start = time.perf_counter()
    subsets = cluster_classes(proba, s["n_groups"])
    cluster_s = time.perf_counter() - start
    found = np.full(n_classes, -1)
    for k, subset in enumerate(subsets):
        found[subset] = k
    points = class_points(proba)  # the K-means baselines cluster the correlation columns
    baselines = {
        name: float(adjusted_rand_score(groups, kmeans(s["n_groups"], seed).fit_predict(points)))
        for name, kmeans in BASELINES.items()
    }
    return {
        "seed": seed,
        "setting": setting,
        **s,
        "n_classes": n_classes,
        "n_subsets": len(subsets),
        "smallest_subset": int(min(len(x) for x in subsets)),
        "ari": float(adjusted_rand_score(groups, found)),
        "ari_baselines": baselines,
        "cluster_s": cluster_s,
        "generalist_s": generalist_s,
    }


def summarize(ari: np.ndarray) -> dict[str, float]:
    return {
        "min": float(ari.min()),
        "q25": float(np.quantile(ari, 0.25)),
        "median": float(np.median(ari)),
        "mean": float(ari.mean()),
        "share_ge_0_9": float((ari >= 0.9).mean()),
        "share_eq_1": float((ari >= 1.0 - 1e-12).mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=50, help="random problems per setting")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--stem", default="clustering", help="results file names")
    args = parser.parse_args(argv)

    seeds = range(args.first_seed, args.first_seed + args.problems)
    command = (
        "PYTHONPATH=. python benchmarks/bench_clustering.py "
        f"--problems {args.problems} --first-seed {args.first_seed}"
    )
    lines = [
        "# Label-free clustering of confusable classes",
        "",
        f"`{command}` ({platform.platform()})",
        "",
        (
            f"{args.problems} problems per setting: 3-10 groups of 2-8 classes, class "
            "separation 1.5-4, 8-20 features; generalist: nearest class mean; clusters = "
            "groups. standard: group separation 8-14, 60 rows per class; hard: group "
            "separation 5-9, 20 rows per class."
        ),
        "",
        "| setting | method | ARI min | q25 | median | mean | share >= 0.9 | share = 1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    timing: list[str] = []
    results: dict[str, Any] = {}
    worst_lines: list[str] = []
    for setting in SETTINGS:
        rows = [run_problem(seed, setting) for seed in seeds]
        summaries = {"average linkage (kdpipe)": summarize(np.array([r["ari"] for r in rows]))}
        for name in BASELINES:
            summaries[name] = summarize(np.array([r["ari_baselines"][name] for r in rows]))
        ratio = sum(r["cluster_s"] for r in rows) / sum(r["generalist_s"] for r in rows)
        results[setting] = {"summaries": summaries, "time_ratio": ratio, "problems": rows}
        lines += [
            f"| {setting} | {name} | {m['min']:.3f} | {m['q25']:.3f} | {m['median']:.3f} | "
            f"{m['mean']:.3f} | {m['share_ge_0_9']:.2f} | {m['share_eq_1']:.2f} |"
            for name, m in summaries.items()
        ]
        timing.append(
            f"- {setting}: kdpipe's clustering took {ratio:.2f}x the time of the "
            "generalist's predictions (summed over the problems)"
        )
        worst_lines += [
            f"| {setting} | {r['seed']} | {r['n_groups']} x {r['group_size']} | "
            f"{r['group_separation']:.2f} | {r['class_separation']:.2f} | {r['ari']:.3f} | "
            f"{r['n_subsets']} | {r['smallest_subset']} |"
            for r in sorted(rows, key=lambda r: r["ari"])[:5]
        ]
    lines += [
        "",
        *timing,
        "",
        "Worst problems of each setting (kdpipe's clustering):",
        "",
        "| setting | seed | groups x size | group sep. | class sep. | ARI | subsets | smallest |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *worst_lines,
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "platform": platform.platform()}
    (args.out / f"{args.stem}.json").write_text(
        json.dumps({"meta": meta, "settings": results}, indent=2)
    )
    (args.out / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out / (args.stem + '.json')} and .md")
    return results


if __name__ == "__main__":
    main()
