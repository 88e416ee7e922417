"""Temperature sweep and accuracy vs. ensemble members on digits, from one logit cache.

The teacher ensemble runs once (``build_cache``); every student below reads the same
cache. The temperature sweep is a ``GridSearchCV`` over ``temperature`` with the cache
routed as ``teacher_logits``; the member sweep distills from the first k members of
the cache. Writes ``digits_sweeps.json`` and two PNG plots into ``--out`` (default
``kdpipe-results/digits_sweeps`` under the current folder) and prints their paths. The
published results of a full run are in ``examples/results/``.

Run: ``python examples/digits_sweeps.py [--quick] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from kdpipe import DistilledClassifier, build_cache
from kdpipe.cli import HelpFormatter
from kdpipe.teacher_training import jitter_images, train_mlp_ensemble

FULL_TEMPERATURES = [1, 1.5, 2, 3, 4, 6, 8, 12, 20]
QUICK_TEMPERATURES = [1, 2, 4, 8, 20]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--out", default="kdpipe-results/digits_sweeps", help="folder for the results and plots"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 20 student epochs, 5 teacher epochs, temperatures 1 2 4 8 20",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the split, teachers and students"
    )
    parser.add_argument("--members", type=int, default=5, help="teachers in the ensemble")
    parser.add_argument(
        "--epochs", type=int, default=None, help="student epochs (default: 150, --quick 20)"
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=None, help="teacher epochs (default: 30, --quick 5)"
    )
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=None,
        help=f"swept temperatures (default: {FULL_TEMPERATURES}, --quick {QUICK_TEMPERATURES})",
    )
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds of the sweep")
    parser.add_argument("--n-jobs", type=int, default=2, help="parallel fits of the sweep")
    args = parser.parse_args(argv)
    epochs = args.epochs or (20 if args.quick else 150)
    teacher_epochs = args.teacher_epochs or (5 if args.quick else 30)
    temperatures = args.temperatures or (QUICK_TEMPERATURES if args.quick else FULL_TEMPERATURES)
    out = Path(args.out)

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.5, stratify=y, random_state=args.seed
    )
    start = time.perf_counter()
    teachers = train_mlp_ensemble(
        X_train,
        y_train,
        n_classes=10,
        n_members=args.members,
        hidden_layer_sizes=(256, 256),
        dropout=0.3,
        epochs=teacher_epochs,
        augment=partial(jitter_images, image_shape=(8, 8), max_shift=1),
        n_augmented_copies=4,
        random_state=args.seed,
        device="cpu",
    )
    teacher_seconds = time.perf_counter() - start
    student = dict(
        hidden_layer_sizes=(64, 64),
        max_epochs=epochs,
        batch_size=64,
        learning_rate=3e-3,
        random_state=args.seed,
        device="cpu",
    )
    results: dict = {"seed": args.seed, "teacher_seconds": teacher_seconds}

    with tempfile.TemporaryDirectory() as tmp, sklearn.config_context(enable_metadata_routing=True):
        cache = build_cache(
            teachers, X_train, Path(tmp) / "digits.zarr", y=y_train, progress=False, device="cpu"
        )

        hard = DistilledClassifier(**student).fit(X_train, y_train)
        results["hard_label_accuracy"] = float(hard.score(X_test, y_test))

        search = GridSearchCV(
            DistilledClassifier(alpha=0.1, **student).set_fit_request(teacher_logits=True),
            {"temperature": temperatures},
            cv=args.cv,
            n_jobs=args.n_jobs,
        )
        start = time.perf_counter()
        search.fit(X_train, y_train, teacher_logits=cache)
        results["sweep_seconds"] = time.perf_counter() - start
        results["temperature_cv_accuracy"] = {
            str(t): float(s) for t, s in zip(temperatures, search.cv_results_["mean_test_score"])
        }
        results["best_temperature"] = float(search.best_params_["temperature"])
        results["distilled_test_accuracy"] = float(search.score(X_test, y_test))

        by_members = {}
        for k in range(1, args.members + 1):
            subset = np.asarray(cache)[:, :k]  # (n, k, C): the first k members
            model = DistilledClassifier(
                temperature=results["best_temperature"], alpha=0.1, **student
            )
            model.fit(X_train, y_train, teacher_logits=subset)
            by_members[k] = float(model.score(X_test, y_test))
        results["accuracy_by_members"] = by_members

    out.mkdir(parents=True, exist_ok=True)
    written = [
        out / "digits_sweeps.json",
        out / "digits_temperature_sweep.png",
        out / "digits_accuracy_vs_members.png",
    ]
    written[0].write_text(json.dumps(results, indent=2) + "\n")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogx(
        temperatures,
        list(results["temperature_cv_accuracy"].values()),
        "o-",
        label=f"distilled ({args.cv}-fold CV)",
    )
    ax.axhline(results["hard_label_accuracy"], color="grey", ls="--", label="hard labels (test)")
    ax.set(xlabel="temperature T", ylabel="accuracy", title="digits: 2x64 student")
    ax.legend()
    fig.tight_layout()
    fig.savefig(written[1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(by_members), list(by_members.values()), "o-", label="distilled (test)")
    ax.axhline(results["hard_label_accuracy"], color="grey", ls="--", label="hard labels (test)")
    ax.set(
        xlabel="ensemble members in the teacher",
        ylabel="accuracy",
        title=f"digits: 2x64 student, T={results['best_temperature']:g}",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(written[2], dpi=120)
    plt.close(fig)
    print(json.dumps(results, indent=2))
    for path in written:
        print(f"wrote {path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
