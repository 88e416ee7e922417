"""Does caching augmented views pay? Fashion-MNIST students distilled from V = 1, 4, 16 views.

A CNN teacher (:class:`kdpipe.students.ConvNet`, channels 16-32, hidden 128) is trained
once with ``Shift(2)`` (the paper's 2-pixel jitter, a fresh shift every epoch) on
``--teacher-rows`` training rows: the transfer set plus, when larger, more training rows
(never the validation rows), so that a small run still has a teacher better than its
students. Its logits are cached three ways: one unaugmented view per row (V = 1, a
plain cache) and ``Views(count=V, augment=Shift(2))`` for each other ``--views`` count.
Two students, the 2x800 MLP and a small ConvNet (8-16, hidden 32), are trained on hard
labels alone (the baseline) and distilled from each cache, with the same epochs,
temperature and weight, for every seed; a student from a views cache sees, each epoch,
one of its rows' views (the same augmented input its teacher scored, regenerated from
its seed).

Reported per student and V: test accuracy (mean and standard error over seeds), and the
share of the hard-label-to-teacher gap closed, ``(mean(distilled) - mean(hard)) /
(teacher - mean(hard))`` (a ratio of means), with a 95% bootstrap interval over seeds
(seeds resampled with replacement, hard and distilled runs of one seed together).
Nothing is tuned on the test rows: the temperature and weight are fixed in advance
(``--temperature``, ``--alpha``), every model's accuracy on a validation split (training
rows held out of the transfer set) is recorded beside it, and the test rows are read
once per final model.

Writes ``fashion_mnist_views.json`` and ``fashion_mnist_views.png`` (accuracy against V)
into ``--out`` (default ``kdpipe-results/fashion_mnist_views``) and prints their paths;
``--quiet`` silences the progress lines. Needs the Fashion-MNIST idx files (Debian's
``dataset-fashion-mnist``; ``--data-dir`` names another folder). A small run::

    python examples/fashion_mnist_views.py --train-rows 8000 --epochs 6 --teacher-epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from kdpipe import DistilledClassifier, Views, build_cache
from kdpipe.augment import Shift
from kdpipe.cli import HelpFormatter
from kdpipe.datasets import FASHION_MNIST_DIR, load_fashion_mnist
from kdpipe.students import ConvNet
from kdpipe.teacher_training import train_on_views

TEACHER: dict[str, Any] = {"channels": (16, 32), "hidden": 128, "dropout": 0.1}
STUDENTS: dict[str, dict[str, Any]] = {
    "MLP 2x800": {"hidden_layer_sizes": (800, 800)},
    "ConvNet 8-16, hidden 32": {
        "module": ConvNet,
        "module_params": {"channels": (8, 16), "hidden": 32},
    },
}
BATCH = 128
TEACHER_BATCH, TEACHER_LR = 64, 2e-3  # more and larger steps for the teacher in few epochs
TEACHER_SHIFT_SEED = (
    2**31 - 1
)  # the teacher's training shifts: a stream apart from the caches' (seed 0..)


def train_teacher(X: np.ndarray, y: np.ndarray, epochs: int, seed: int, say) -> torch.nn.Module:
    """A ConvNet trained with Shift(2): each epoch, row r gets the shift of stream (seed', r, epoch)."""
    torch.manual_seed(seed)
    model = ConvNet(784, 10, sample_shape=(1, 28, 28), **TEACHER)
    tick = time.perf_counter()

    def report(epoch: int, loss: float) -> None:
        nonlocal tick
        say(
            f"teacher epoch {epoch + 1}/{epochs}: mean loss {loss:.3f} "
            f"({time.perf_counter() - tick:.0f} s)"
        )
        tick = time.perf_counter()

    train_on_views(
        model,
        X,  # uint8 (n, 1, 28, 28)
        y,
        augment=Shift(2),
        epochs=epochs,
        batch_size=TEACHER_BATCH,
        learning_rate=TEACHER_LR,
        seed=seed,
        view_seed=TEACHER_SHIFT_SEED,
        to_input=lambda views: torch.from_numpy(views).float() / 255,
        after_epoch=report,
    )
    return model.eval()


def teacher_accuracy(model: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        logits = torch.cat(
            [model(torch.from_numpy(X[i : i + 512]).float() / 255) for i in range(0, len(X), 512)]
        )
    return float((logits.argmax(1).numpy() == y).mean())


def summarize(
    hard: list[float], distilled: list[float], teacher: float, rng: np.random.Generator
) -> dict:
    """Mean and standard error of the distilled accuracies; the gap share, a ratio of means, with
    a bootstrap interval over seeds (hard[i] and distilled[i] are one seed's runs, resampled together)."""
    h, d = np.asarray(hard), np.asarray(distilled)
    n = len(d)
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")

    def share(hs: np.ndarray, ds: np.ndarray) -> float:
        return float((ds.mean() - hs.mean()) / (teacher - hs.mean()))

    picks = rng.integers(0, n, size=(2000, n))
    with np.errstate(
        divide="ignore", invalid="ignore"
    ):  # a resample (or tiny data) can match the teacher
        boot = [share(h[p], d[p]) for p in picks]
        gap = share(h, d)
    finite = np.asarray(boot)[
        np.isfinite(boot)
    ]  # a resample whose hard mean equals the teacher's has no gap
    low, high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (np.nan, np.nan)
    return {
        "accuracy": d.tolist(),
        "mean": float(d.mean()),
        "standard_error": se,
        "gap_closed": gap,
        "gap_closed_95": [float(low), float(high)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--out",
        default="kdpipe-results/fashion_mnist_views",
        help="folder for the results and the plot",
    )
    parser.add_argument(
        "--train-rows", type=int, default=20000, help="transfer-set rows (a random subset)"
    )
    parser.add_argument(
        "--teacher-rows",
        type=int,
        default=None,
        help="training rows of the teacher (default: the transfer rows; more: extra training rows)",
    )
    parser.add_argument(
        "--validation-rows", type=int, default=2000, help="training rows held out for validation"
    )
    parser.add_argument(
        "--test-rows", type=int, default=10000, help="test rows used (the first ones)"
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=10, help="epochs of the teacher (with Shift(2))"
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every student")
    parser.add_argument(
        "--views",
        type=int,
        nargs="+",
        default=[1, 4, 16],
        help="views per row of each cache (1: one unaugmented view)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="student seeds 0..N-1 (each a hard-label and a distilled run)",
    )
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the hard-label loss")
    parser.add_argument(
        "--data-dir",
        "--data",
        dest="data",
        default=FASHION_MNIST_DIR,
        help="directory of the idx files",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if (
        min(args.views) < 1
        or args.seeds < 1
        or min(args.train_rows, args.validation_rows, args.test_rows) < 1
    ):
        parser.error("--views, --seeds and the row counts must be positive")
    say = (lambda _: None) if args.quiet else (lambda line: print(line, flush=True))
    started = time.perf_counter()

    X_all, y_all = load_fashion_mnist(args.data, "train", images=True)  # uint8 (n, 1, 28, 28)
    X_test, y_test = load_fashion_mnist(args.data, "test", images=True)
    order = np.random.default_rng(0).permutation(len(X_all))
    train = np.sort(order[: args.train_rows])
    val = np.sort(order[args.train_rows : args.train_rows + args.validation_rows])
    X, y, X_val, y_val = X_all[train], y_all[train], X_all[val], y_all[val]
    extra = order[args.train_rows + args.validation_rows :][
        : max(0, (args.teacher_rows or 0) - args.train_rows)
    ]
    teacher_rows = np.sort(
        np.concatenate([train, extra])
    )  # the transfer rows and extra ones, never validation
    X_test, y_test = X_test[: args.test_rows], y_test[: args.test_rows]
    say(
        f"transfer {X.shape}, teacher rows {len(teacher_rows)}, validation {X_val.shape}, test {X_test.shape}"
    )

    tick = time.perf_counter()
    teacher = train_teacher(
        X_all[teacher_rows], y_all[teacher_rows], args.teacher_epochs, seed=0, say=say
    )
    results: dict = {
        "settings": vars(args)
        | {
            "train_rows": len(X),
            "teacher_rows": len(teacher_rows),
            "validation_rows": len(X_val),
            "test_rows": len(X_test),
            "teacher": {"module": "ConvNet", **TEACHER, "augment": "Shift(2)"},
            "batch_size": BATCH,
            "teacher_batch_size": TEACHER_BATCH,
            "torch_threads": torch.get_num_threads(),
        },
        "teacher": {
            "validation": teacher_accuracy(teacher, X_val, y_val),
            "test": teacher_accuracy(teacher, X_test, y_test),
            "seconds": time.perf_counter() - tick,
        },
        "students": {},
        "cache_seconds": {},
    }
    teacher_test = results["teacher"]["test"]
    say(f"teacher: validation {results['teacher']['validation']:.4f}, test {teacher_test:.4f}")
    seeds = list(range(args.seeds))
    boot_rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        caches = {}
        for V in args.views:
            tick = time.perf_counter()
            views = None if V == 1 else Views(count=V, augment=Shift(2), seed=0)
            caches[V] = build_cache(
                teacher, X, Path(tmp) / f"V{V}.zarr", y=y, views=views, progress=False, device="cpu"
            )
            results["cache_seconds"][str(V)] = time.perf_counter() - tick
            say(f"cache V={V}: {results['cache_seconds'][str(V)]:.0f} s")
        for name, chosen in STUDENTS.items():
            common = dict(max_epochs=args.epochs, batch_size=BATCH, device="cpu", **chosen)
            entry: dict = {
                "hard_labels": {"validation": [], "test": [], "seconds": []},
                "distilled": {},
            }
            for seed in seeds:
                tick = time.perf_counter()
                model = DistilledClassifier(random_state=seed, **common).fit(X, y)
                entry["hard_labels"]["seconds"].append(time.perf_counter() - tick)
                entry["hard_labels"]["validation"].append(model.score(X_val, y_val))
                entry["hard_labels"]["test"].append(model.score(X_test, y_test))
                say(
                    f"{name}, seed {seed}: hard labels {entry['hard_labels']['test'][-1]:.4f} "
                    f"({entry['hard_labels']['seconds'][-1]:.0f} s)"
                )
            hard = entry["hard_labels"]
            hard |= {
                "mean": float(np.mean(hard["test"])),
                "standard_error": float(np.std(hard["test"], ddof=1) / np.sqrt(len(seeds)))
                if len(seeds) > 1
                else float("nan"),
            }
            for V in args.views:
                runs: dict = {"validation": [], "test": [], "seconds": []}
                for seed in seeds:
                    tick = time.perf_counter()
                    model = DistilledClassifier(
                        random_state=seed, temperature=args.temperature, alpha=args.alpha, **common
                    ).fit(X, y, teacher_logits=caches[V])
                    runs["seconds"].append(time.perf_counter() - tick)
                    runs["validation"].append(model.score(X_val, y_val))
                    runs["test"].append(model.score(X_test, y_test))
                    say(
                        f"{name}, V={V}, seed {seed}: distilled {runs['test'][-1]:.4f} ({runs['seconds'][-1]:.0f} s)"
                    )
                summary = summarize(hard["test"], runs["test"], teacher_test, boot_rng)
                entry["distilled"][str(V)] = runs | summary
                say(
                    f"{name}, V={V}: {summary['mean']:.4f} +- {summary['standard_error']:.4f}, "
                    f"gap closed {summary['gap_closed']:.2f}"
                )
            results["students"][name] = entry

    results["total_seconds"] = time.perf_counter() - started
    results["load_average_1_5_15_at_end"] = list(
        os.getloadavg()
    )  # a busy machine shows in the seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "fashion_mnist_views.json", out / "fashion_mnist_views.png"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    plot(results, paths[1])
    say(f"finished in {results['total_seconds']:.0f} s")
    for path in paths:
        print(f"wrote {path.resolve()}")
    return 0


def plot(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = results["settings"]
    for (name, entry), color in zip(results["students"].items(), ["tab:blue", "tab:orange"]):
        views = [int(v) for v in entry["distilled"]]
        means = [100 * e["mean"] for e in entry["distilled"].values()]
        errors = [100 * e["standard_error"] for e in entry["distilled"].values()]
        ax.errorbar(
            views, means, yerr=errors, fmt="o-", color=color, capsize=3, label=f"{name}, distilled"
        )
        ax.axhline(
            100 * entry["hard_labels"]["mean"], ls="--", color=color, label=f"{name}, hard labels"
        )
    ax.axhline(
        100 * results["teacher"]["test"], color="black", label="teacher ConvNet 16-32, Shift(2)"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(v) for v in s["views"]], [str(v) for v in s["views"]])
    ax.set_xlabel("views per row in the cache, V (1: no augmentation)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"Fashion-MNIST, {s['train_rows']} rows, {s['epochs']} student epochs, "
        f"{s['seeds']} seeds (mean +- s.e.)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
