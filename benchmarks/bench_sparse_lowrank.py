"""A probe for issue 21 at T = 4 and 8: do low-rank logits train students as well as dense ones?

Every teacher with a linear head has logits ``z = W h + b``: over ``C`` classes they lie
in a subspace of dimension ``d + 1`` (``d``: the penultimate width), whatever ``C`` is.
A cache could store ``r`` coefficients a row in a shared basis (``r`` float16 values,
plus the ``C x r`` basis once per cache) instead of ``C`` logits, and keep the tail's
*shape*, which per-row top-k formats lose: at T = 8 the teacher of
:mod:`benchmarks.bench_sparse_train` puts a third of its mass outside its top 64, and no
format within 5% of the bytes comes within 0.3 points of dense there.

No such format exists in kdpipe yet; this probe measures whether one would be worth
building, without the cache: students train from in-memory float16 logits, dense or
reconstructed from a rank-``r`` truncated SVD (the basis fitted on the training rows'
own logits, as a build would after a first pass, or on its first 1,000 rows only, as a
build that fits it on its first chunk would). The Gaussian teacher of
``bench_sparse`` has rank 21 (20 features), which would make any ``r > 21`` exact, so
the teacher here is an MLP (``features -> hidden -> C``, ReLU) trained on rows of the same
classes: its logits have rank ``hidden + 1``, more than every ``r`` tried.

Writes ``benchmarks/results/sparse_lowrank.json`` and ``.md`` (``--quick``:
``sparse_lowrank_quick.*``). Run ``python benchmarks/bench_sparse_lowrank.py [--quick]``.
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
    "train_rows": 4000,
    "test_rows": 2000,
    "epochs": 20,
    "seeds": [0, 1, 2],
    "temperatures": [8.0, 4.0],
    "ranks": [64, 250],
    "topk": (113, 64, 32),  # TopK(113) and TopKSampledTail(64, 32, T): <= 5% of dense bytes
    "first_chunk": (250, 1000),  # the basis of a build that fits it on its first 1000 rows
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
    "seeds": [0, 1],
    "temperatures": [8.0],
    "ranks": [8, 16],
    "topk": (8, 4, 4),
    "first_chunk": (16, 100),
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


def low_rank(Z: np.ndarray, rank: int, fit_rows: int | None = None) -> tuple[np.ndarray, float]:
    """``Z`` (float16-rounded) through a rank-``rank`` truncated SVD of its centred rows,
    with float16 coefficients; and the relative Frobenius error of the centred logits.

    With ``fit_rows``, the mean and basis come from the first ``fit_rows`` rows only (as a
    build that fits them on its first chunk would) and every row is projected onto them."""
    Z = Z.astype(np.float16).astype(np.float64)
    fit = Z if fit_rows is None else Z[:fit_rows]
    mean = fit.mean(0)
    _, _, Vt = np.linalg.svd(fit - mean, full_matrices=False)
    basis = Vt[:rank].astype(np.float16).astype(np.float64)
    coefficients = ((Z - mean) @ Vt[:rank].T).astype(np.float16).astype(np.float64)
    approx = coefficients @ basis + mean
    error = float(np.linalg.norm(approx - Z) / np.linalg.norm(Z - Z.mean(0)))
    return approx.astype(np.float32), error


def tail_mass(Z: np.ndarray, T: float, k: int) -> float:
    """The teacher's mean probability outside its top ``k`` at ``T``."""
    z = Z / T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float(1 - np.sort(p, 1)[:, -k:].sum(1).mean())


def fit_accuracy(X, y, logits, T: float, s: dict, seed: int, X_test, y_test) -> float:
    """Test accuracy of the linear student fitted from ``logits`` at ``T``."""
    clf, _ = fit_student(X, y, logits, s["epochs"], T, seed, classes=np.arange(s["classes"]))
    return float(clf.score(X_test, y_test))


def run(s: dict, workdir: Path) -> dict:
    from kdpipe.cache import TopK, TopKSampledTail

    start = time.perf_counter()
    X, y, X_test, y_test, Z, Z_test, net = mlp_teacher(s)
    C = s["classes"]
    dense_bytes = 2 * C
    # name -> (logits, relative error, bytes a row, rank: 0 for no shared basis); the
    # formats that do not depend on T
    variants = {"dense": (Z.astype(np.float16).astype(np.float32), 0.0, dense_bytes, 0)}
    for r in s["ranks"]:
        approx, error = low_rank(Z, r)
        variants[f"rank {r}"] = (approx, error, 2 * r, r)
    r, fit_rows = s["first_chunk"]
    approx, error = low_rank(Z, r, fit_rows)
    variants[f"rank {r}, basis from {fit_rows} rows"] = (approx, error, 2 * r, r)
    # today's formats at the same bytes a row, on the same teacher (no basis to add)
    k, kept, draws = s["topk"]
    topk = build(net, X, y, workdir / "topk", TopK(k))
    rows = []
    for T in s["temperatures"]:
        tail = build(net, X, y, workdir / f"tail{T:g}", TopKSampledTail(kept, draws, T))
        at_T = {
            **variants,
            f"topk{k} bucket": (topk, np.nan, topk.info()["logit_bytes_per_row"], 0),
            f"topk{kept}+{draws}@{T:g} sampled tail": (
                tail,
                np.nan,
                tail.info()["logit_bytes_per_row"],
                0,
            ),
        }
        dense = [
            fit_accuracy(X, y, variants["dense"][0], T, s, seed, X_test, y_test)
            for seed in s["seeds"]
        ]
        for name, (logits, error, nbytes, rank) in at_T.items():
            acc = (
                dense
                if name == "dense"
                else [fit_accuracy(X, y, logits, T, s, seed, X_test, y_test) for seed in s["seeds"]]
            )
            rows.append(
                {
                    "temperature": T,
                    "format": name,
                    "bytes_per_row": nbytes,
                    "of_dense": nbytes / dense_bytes,
                    "basis_bytes": 2 * C * rank,
                    "relative_error": error,
                    "test_accuracy": acc,
                    "gap": gap(acc, dense),
                }
            )
            print(T, name, f"{np.mean(acc):.4f}", rows[-1]["gap"]["mean_points"], flush=True)
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
        "# Low-rank logits at T = 4 and 8: a probe for issue 21",
        "",
        f"Machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        load,
        "",
        f"{s['classes']} classes, {s['train_rows']} training rows, {s['test_rows']} test rows. "
        f"Teacher: MLP({s['features']} -> {s['teacher_hidden']} ReLU -> {s['classes']}) trained "
        f"{s['teacher_epochs']} epochs on {s['teacher_rows_per_class']} other rows per class "
        f"(test accuracy {result['teacher_test_accuracy']:.2%}); its logits have rank <= "
        f"{result['teacher_rank_bound']}, more than every rank tried. Student: linear, "
        f"{s['features']} features, alpha {STUDENT['alpha']}, {s['epochs']} epochs, seeds {s['seeds']}, from "
        "in-memory float16 logits, dense or through a truncated SVD of the training rows' "
        "centred logits (float16 coefficients and basis). 'gap': mean over seeds of "
        "(low-rank - dense) test accuracy, same seed, in points +- its standard error. "
        "'basis': the C x r basis, stored once per cache (here "
        f"{s['train_rows']} rows share it, so at this size it costs more than the rows' "
        "coefficients; it is negligible from about 100 times C rows). Teacher mass outside "
        f"its top {s['topk'][1]}: "
        + ", ".join(f"T={t}: {m:.3f}" for t, m in result["tail_mass_outside_kept"].items())
        + ".",
        "",
        "| T | logits | bytes/row | of dense | basis bytes | rel. error | test acc % | gap (points) | per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        g = r["gap"]
        lines.append(
            f"| {r['temperature']:g} | {r['format']} | {r['bytes_per_row']} | "
            f"{r['of_dense']:.2%} | {r['basis_bytes']} | "
            + ("" if np.isnan(r["relative_error"]) else f"{r['relative_error']:.4f}")
            + " | "
            f"{100 * np.mean(r['test_accuracy']):.2f} | {g['mean_points']:+.2f} +- "
            f"{g['se_points']:.2f} | " + " / ".join(f"{d:+.2f}" for d in g["diffs_points"]) + " |"
        )
    return "\n".join(lines) + "\n"


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


if __name__ == "__main__":
    main()
