"""Low-rank caches against dense and top-k at T = 2, 4 and 8 (issue 21).

Every teacher with a linear head has logits ``z = W h + b``: over ``C`` classes they lie
in a subspace of dimension ``d + 1`` (``d``: the penultimate width), whatever ``C`` is.
:class:`kdpipe.LowRank` ``(r)`` stores ``r`` coefficients a row in a per-member basis
fitted at build on the first ``fit_rows`` rows, and keeps the tail's *shape*, which
per-row top-k formats lose: at T = 8 the teacher here puts most of its mass outside its
top 64. The Gaussian teacher of ``bench_sparse`` has rank 21 (20 features), which would
make any ``r > 21`` exact, so the teacher here is an MLP (``features -> hidden -> C``,
ReLU) trained on rows of the same classes: its logits have rank ``hidden + 1``, more than
every ``r`` tried.

Every student trains from a cache built by ``build_cache`` (float16), as a user's would:
dense, low-rank (basis from the default 4,096 rows, a part of the training rows, or from
the first 1,000), top-k with a bucket tail and top-k plus tail draws, all at <= 5% of
dense float16 bytes a row. The yardstick is a second set of dense seeds. Fit seconds are
measured in the same run and reported as ratios to the dense fit.

Writes ``benchmarks/results/sparse_lowrank.json``, ``.md`` and ``.png`` (``--quick``:
``sparse_lowrank_quick.*``, no plot). Run ``python benchmarks/bench_sparse_lowrank.py [--quick]``.
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
from benchmarks.bench_sparse import CLASS_SEPARATION
from benchmarks.bench_sparse_train import STUDENT, build, fit_student, gap

FULL = {
    "classes": 5000,
    "features": 20,
    "teacher_hidden": 512,
    "teacher_rows_per_class": 20,
    "teacher_epochs": 5,
    "train_rows": 8000,
    "test_rows": 2000,
    "epochs": 20,
    "long_epochs": 40,  # dense and the first low-rank format again: does the gap grow?
    "seeds": [0, 1, 2],
    "yardstick_seed_offset": 100,
    "temperatures": [8.0, 4.0, 2.0],
    "lowrank": [(248, 4096), (248, 1000), (120, 4096)],  # (rank, fit_rows)
    "topk": (113, 64, 32),  # TopK(113) and TopKSampledTail(64, 32, T): <= 5% of dense bytes
}
QUICK = {
    "classes": 300,
    "features": 20,
    "teacher_hidden": 64,
    "teacher_rows_per_class": 10,
    "teacher_epochs": 2,
    "train_rows": 600,
    "test_rows": 300,
    "epochs": 2,
    "long_epochs": 3,
    "seeds": [0, 1],
    "yardstick_seed_offset": 100,
    "temperatures": [8.0],
    "lowrank": [(16, 400), (16, 100)],
    "topk": (8, 4, 4),
}


def mlp_teacher(s: dict, seed: int = 0):
    """Rows of ``classes`` confusable classes, and an MLP teacher trained on other rows."""
    import torch

    from kdpipe.datasets import make_confusable_classification
    from kdpipe.teacher_training import train_mlp_ensemble

    n_fit = s["teacher_rows_per_class"] * s["classes"]
    X, y = make_confusable_classification(
        n_fit + s["train_rows"] + s["test_rows"],
        s["classes"],
        n_features=s["features"],
        class_separation=CLASS_SEPARATION,
        random_state=seed,
    )
    X = X.astype(np.float32)
    (net,) = train_mlp_ensemble(
        X[:n_fit],
        y[:n_fit],
        n_classes=s["classes"],
        n_members=1,
        hidden_layer_sizes=(s["teacher_hidden"],),
        dropout=0.0,
        epochs=s["teacher_epochs"],
        batch_size=256,
        learning_rate=3e-3,
        random_state=seed,
        device="cpu",
    )
    rest = slice(n_fit, None)
    X, y = X[rest], y[rest]
    n = s["train_rows"]
    with torch.inference_mode():
        logits = net(torch.from_numpy(X)).numpy()
    return X[:n], y[:n], X[n:], y[n:], logits[:n], logits[n:], net


def tail_mass(Z: np.ndarray, T: float, k: int) -> float:
    """The teacher's mean probability outside its top ``k`` at ``T``."""
    z = Z / T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float(1 - np.sort(p, 1)[:, -k:].sum(1).mean())


def run(s: dict, workdir: Path) -> dict:
    from kdpipe.cache import LowRank, TopK, TopKSampledTail

    start = time.perf_counter()
    X, y, X_test, y_test, Z, Z_test, net = mlp_teacher(s)
    dense = build(net, X, y, workdir / "dense", None)
    dense_bytes = dense.info()["logit_bytes_per_row"]
    z = np.asarray(dense).astype(np.float64)
    centred = np.linalg.norm(z - z.mean(axis=0))
    # name -> cache; the formats that do not depend on T
    caches = {"dense": dense}
    for rank, rows in s["lowrank"]:
        cache = build(net, X, y, workdir / f"lowrank{rank}_{rows}", LowRank(rank, fit_rows=rows))
        caches[f"LowRank({rank}), basis from {min(rows, len(X))} rows"] = cache
    k, kept, draws = s["topk"]
    caches[f"TopK({k}) bucket"] = build(net, X, y, workdir / "topk", TopK(k))
    for cache in caches.values():  # untimed: torch's first-call costs go to no format
        fit_student(X[:256], y[:256], cache[:256], 1, 4.0, 0)

    def fits(cache, T: float, epochs: int, offset: int = 0) -> tuple[list[float], list[float]]:
        accuracy, seconds = [], []
        for seed in s["seeds"]:
            clf, took = fit_student(X, y, cache, epochs, T, seed + offset)
            accuracy.append(float(clf.score(X_test, y_test)))
            seconds.append(took)
        return accuracy, seconds

    rows = []
    for T in s["temperatures"]:
        at_T = dict(caches)
        at_T[f"TopKSampledTail({kept}, {draws}, {T:g})"] = build(
            net, X, y, workdir / f"tail{T:g}", TopKSampledTail(kept, draws, T)
        )
        for epochs in (s["epochs"], s["long_epochs"]):
            base, base_seconds = fits(dense, T, epochs)
            names = list(at_T) if epochs == s["epochs"] else ["dense", list(caches)[1]]
            for name in ["dense, other seeds", *names]:
                cache = dense if name.startswith("dense") else at_T[name]
                if name == "dense":
                    acc, took = base, base_seconds
                else:
                    offset = s["yardstick_seed_offset"] if name == "dense, other seeds" else 0
                    acc, took = fits(cache, T, epochs, offset)
                lowrank = (
                    cache.manifest.sparse is not None and cache.manifest.sparse["kind"] == "lowrank"
                )
                nbytes = cache.info()["logit_bytes_per_row"]
                rows.append(
                    {
                        "temperature": T,
                        "epochs": epochs,
                        "format": name,
                        "bytes_per_row": nbytes,
                        "of_dense": nbytes / dense_bytes,
                        "basis_bytes": (cache.path / "lowrank_basis.npy").stat().st_size
                        if lowrank
                        else 0,
                        "relative_error": float(
                            np.linalg.norm(np.asarray(cache).astype(np.float64) - z) / centred
                        )
                        if lowrank or name.startswith("dense")
                        else float("nan"),
                        "test_accuracy": acc,
                        "gap": gap(acc, base),
                        "fit_seconds": took,
                        "fit_time_ratio": float(
                            np.median(np.asarray(took) / np.asarray(base_seconds))
                        ),
                    }
                )
                print(
                    T,
                    epochs,
                    name,
                    f"{np.mean(acc):.4f}",
                    rows[-1]["gap"]["mean_points"],
                    flush=True,
                )
    return {
        "settings": s,
        "teacher_test_accuracy": float(np.mean(Z_test.argmax(1) == y_test)),
        "teacher_rank_bound": s["teacher_hidden"] + 1,
        "tail_mass_outside_kept": {
            str(T): tail_mass(Z, T, s["topk"][1]) for T in s["temperatures"]
        },
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }


def markdown(result: dict, load: str) -> str:
    s = result["settings"]
    lines = [
        "# Low-rank caches at T = "
        + ", ".join(f"{t:g}" for t in s["temperatures"])
        + " (issue 21)",
        "",
        f"Machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {result['seconds'] / 60:.1f} min.",
        load,
        "",
        f"{s['classes']} classes, {s['train_rows']} training rows, {s['test_rows']} test rows. "
        f"Teacher: MLP({s['features']} -> {s['teacher_hidden']} ReLU -> {s['classes']}) trained "
        f"{s['teacher_epochs']} epochs on {s['teacher_rows_per_class']} other rows per class "
        f"(test accuracy {result['teacher_test_accuracy']:.2%}); its logits have rank <= "
        f"{result['teacher_rank_bound']}, more than every rank tried. Student: linear, "
        f"{s['features']} features, alpha {STUDENT['alpha']}, seeds {s['seeds']}, trained from "
        "float16 caches built by build_cache. 'gap': mean over seeds of (format - dense) test "
        "accuracy, same seed, in points +- its standard error; 'dense, other seeds' is the "
        "yardstick (seeds shifted by "
        f"{s['yardstick_seed_offset']}). 'bytes/row': the stored record; 'basis': the "
        "low-rank file, once per cache (float32, C x (r + 1) per member; at these "
        f"{s['train_rows']} rows it costs more than the rows' coefficients, and about 0.1% "
        "of dense at 500,000 rows). 'rel. error': ||decoded - dense||_F / ||dense - mean||_F. "
        "'fit time': median over seeds of fit seconds / the dense fit's. Teacher mass outside "
        f"its top {s['topk'][1]}: "
        + ", ".join(f"T={t}: {m:.3f}" for t, m in result["tail_mass_outside_kept"].items())
        + ".",
        "",
        "| T | epochs | cache | bytes/row | of dense | basis bytes | rel. error | test acc % | gap (points) | per seed | fit time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        g = r["gap"]
        lines.append(
            f"| {r['temperature']:g} | {r['epochs']} | {r['format']} | {r['bytes_per_row']} | "
            f"{r['of_dense']:.2%} | {r['basis_bytes']} | "
            + ("" if np.isnan(r["relative_error"]) else f"{r['relative_error']:.4f}")
            + " | "
            f"{100 * np.mean(r['test_accuracy']):.2f} | {g['mean_points']:+.2f} +- "
            f"{g['se_points']:.2f} | "
            + " / ".join(f"{d:+.2f}" for d in g["diffs_points"])
            + f" | {r['fit_time_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Gap to dense per format and temperature (the 20-epoch runs), with +-2 SE bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]
    rows = [r for r in result["rows"] if r["epochs"] == s["epochs"] and r["format"] != "dense"]
    names = list(
        dict.fromkeys(r["format"].split(" (")[0] for r in rows if "TopKSampled" not in r["format"])
    )
    names.append("TopKSampledTail")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(s["temperatures"])
    for t_i, T in enumerate(s["temperatures"]):
        at_T = {
            r["format"].split(" (")[0] if "TopKSampled" not in r["format"] else "TopKSampledTail": r
            for r in rows
            if r["temperature"] == T
        }
        x = np.arange(len(names)) + (t_i - (len(s["temperatures"]) - 1) / 2) * width
        means = [at_T[n]["gap"]["mean_points"] for n in names]
        errors = [2 * at_T[n]["gap"]["se_points"] for n in names]
        ax.bar(x, means, width, yerr=errors, label=f"T = {T:g}", capsize=2)
    ax.axhspan(-0.3, 0.3, color="green", alpha=0.12, label="goal: within 0.3 points")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy - dense (points)")
    ax.set_title(
        f"{s['classes']} classes, <= 5% of dense float16 bytes a row, {s['epochs']} epochs, {len(s['seeds'])} seeds"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args()
    before = os.getloadavg()
    with tempfile.TemporaryDirectory() as workdir:
        result = run(QUICK if args.quick else FULL, Path(workdir))
    load = load_line(before, os.getloadavg())
    name = "sparse_lowrank_quick" if args.quick else "sparse_lowrank"
    write_results(name, result, markdown(result, load), args.out)
    if not args.quick:
        plot(result, args.out / f"{name}.png")


if __name__ == "__main__":
    main()
