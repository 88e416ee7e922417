"""The report's figures, drawn with matplotlib (the optional ``plots`` extra).

:func:`draw` imports matplotlib itself and returns ``None`` without it, so a run where
it is missing still writes its report, saying the plots were skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["draw"]


def _errorbars(
    ax: Any, x: list[float], summaries: list[dict[str, Any]], label: str, **kw: Any
) -> None:
    means = [s["mean"] for s in summaries]
    errs = [0.0 if s["se"] != s["se"] else 2 * s["se"] for s in summaries]  # nan -> no bar
    ax.errorbar(x, means, yerr=errs, marker="o", capsize=3, label=label, **kw)


def _temperature(plt: Any, results: dict[int, dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    r2 = results[2]["results"]
    _errorbars(ax, r2["temperatures"], r2["test_accuracy"], "small student, distilled")
    ax.axhline(
        r2["hard_test_accuracy"]["mean"], color="C0", ls="--", label="small student, hard labels"
    )
    ax.axhline(r2["teacher_test_accuracy"], color="k", ls=":", label="teacher")
    if 1 in results:
        r1, t1 = results[1]["results"], results[1]["settings"]["temperature"]
        _errorbars(
            ax,
            [t1],
            [r1["distilled_test_accuracy"]],
            "big student, distilled (T of exp. 1)",
            color="C1",
        )
        ax.axhline(
            r1["hard_test_accuracy"]["mean"], color="C1", ls="--", label="big student, hard labels"
        )
    ax.set_xscale("log")
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test accuracy (mean, bars 2 SE)")
    ax.set_title("Accuracy against temperature (paper: T 2.5-4 best for 2x30)")
    ax.legend(fontsize=7)
    return fig


def _left_out(plt: Any, results: dict[int, dict[str, Any]]) -> Any:
    r = results[3]["results"]
    fig, ax = plt.subplots(figsize=(5, 4))
    keys = ["class_accuracy_before", "class_accuracy_after", "reference_class_accuracy"]
    labels = ["left out", "left out + shift", "in transfer set"]
    ax.bar(
        labels,
        [r[k]["mean"] for k in keys],
        yerr=[0.0 if r[k]["se"] != r[k]["se"] else 2 * r[k]["se"] for k in keys],
        capsize=4,
        color=["C3", "C2", "C7"],
    )
    ax.set_ylabel(f"test accuracy on class {results[3]['settings']['left_out_name']}")
    ax.set_ylim(0, 1)
    ax.set_title("Left-out class before and after its bias shift")
    return fig


def _ensemble(plt: Any, results: dict[int, dict[str, Any]]) -> Any:
    r = results[4]["results"]
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = list(range(1, len(r["ensemble_accuracy_by_size"]) + 1))
    ax.plot(
        sizes, r["ensemble_accuracy_by_size"], marker="o", label="ensemble of the first k members"
    )
    ax.axhline(
        r["distilled_test_accuracy"]["mean"],
        color="C1",
        ls="--",
        label="one model distilled from all",
    )
    ax.axhline(r["mean_member_test_accuracy"], color="C7", ls=":", label="mean single member")
    ax.set_xlabel("ensemble size k")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against ensemble size")
    ax.legend(fontsize=7)
    return fig


def _fractions(plt: Any, results: dict[int, dict[str, Any]]) -> Any:
    r = results[5]["results"]
    fig, ax = plt.subplots(figsize=(6, 4))
    # with views, the judged arm (unprefixed) is the views' and the plain rows' is beside it
    arms = (
        [("", " (views)", "-"), ("plain_rows_", " (plain rows)", ":")]
        if "plain_rows_hard_test_accuracy" in r
        else [("", "", "-")]
    )
    for prefix, arm, ls in arms:
        for name, label, color in [
            ("hard", "hard labels, early stopping", "C0"),
            ("soft", "soft targets, no early stopping", "C1"),
        ]:
            summaries = r[f"{prefix}{name}_test_accuracy"]
            _errorbars(ax, r["fractions"], summaries, label + arm, color=color, ls=ls)
        ax.axhline(
            r[f"{prefix}hard_all_data_test_accuracy"]["mean"],
            color="C7",
            ls=ls,
            label="hard labels, all rows" + arm,
        )
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training rows")
    ax.set_ylabel("test accuracy (mean, bars 2 SE)")
    ax.set_title("Accuracy against the fraction of data")
    ax.legend(fontsize=7)
    return fig


def _table4(plt: Any, results: dict[int, dict[str, Any]]) -> Any:
    rows = results[6]["results"]["table4"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = list(range(len(rows)))
    ax.bar(
        [i - 0.2 for i in x],
        [r["generalist_accuracy"] for r in rows],
        width=0.4,
        label="generalist",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [r["ensemble_accuracy"] for r in rows],
        width=0.4,
        label="generalist + specialists",
    )
    for i, r in enumerate(rows):
        ax.annotate(
            f"{100 * r['relative_improvement']:+.1f}%",
            (i + 0.2, r["ensemble_accuracy"]),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(
        x, [f"{r['n_covering']}\n({r['test_rows_all_seeds']} rows, all seeds)" for r in rows]
    )
    ax.set_xlabel("specialists covering the true class")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("Table 4: accuracy by specialist coverage")
    ax.legend(fontsize=7)
    return fig


# file name -> (experiments it needs, drawing function)
FIGURES: dict[str, tuple[tuple[int, ...], Callable[[Any, dict[int, dict[str, Any]]], Any]]] = {
    "accuracy_vs_temperature.png": ((2,), _temperature),
    "left_out_class.png": ((3,), _left_out),
    "accuracy_vs_ensemble_size.png": ((4,), _ensemble),
    "accuracy_vs_data_fraction.png": ((5,), _fractions),
    "table4_specialists.png": ((6,), _table4),
}


def draw(results: dict[int, dict[str, Any]], out: Path) -> dict[int, list[Path]] | None:
    """Write the figures of the experiments in ``results`` into ``out``.

    Returns
    -------
    dict of experiment number -> paths written, or None when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    written: dict[int, list[Path]] = {}
    for name, (needs, figure) in FIGURES.items():
        if not all(n in results for n in needs):
            continue
        fig = figure(plt, results)
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        for n in needs:
            written.setdefault(n, []).append(path)
    return written
