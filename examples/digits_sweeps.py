"""Temperature sweep and accuracy vs. ensemble members on digits, from one logit cache.

The teacher ensemble runs once (``build_cache``); every student below reads the same
cache. The temperature sweep is a ``GridSearchCV`` over ``temperature`` with the cache
routed as ``teacher_logits``; the member sweep distills from the first k members of
the cache. Writes ``examples/results/digits_sweeps.json`` and two PNG plots.

Run: ``python examples/digits_sweeps.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402

from kdpipe import DistilledClassifier, build_cache  # noqa: E402
from kdpipe.teacher_training import jitter_images, train_mlp_ensemble  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few epochs, for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=5)
    args = parser.parse_args()
    epochs = 20 if args.quick else 150
    temperatures = [1, 2, 4, 8, 20] if args.quick else [1, 1.5, 2, 3, 4, 6, 8, 12, 20]

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.5, stratify=y, random_state=args.seed
    )
    start = time.perf_counter()
    teachers = train_mlp_ensemble(
        X_train, y_train, n_classes=10, n_members=args.members, hidden_layer_sizes=(256, 256),
        dropout=0.3, epochs=5 if args.quick else 30,
        augment=partial(jitter_images, image_shape=(8, 8), max_shift=1), n_augmented_copies=4,
        random_state=args.seed, device="cpu",
    )
    teacher_seconds = time.perf_counter() - start
    student = dict(
        hidden_layer_sizes=(64, 64), max_epochs=epochs, batch_size=64, learning_rate=3e-3,
        random_state=args.seed, device="cpu",
    )
    results: dict = {"seed": args.seed, "teacher_seconds": teacher_seconds}

    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(teachers, X_train, Path(tmp) / "digits.zarr", y=y_train,
                            progress=False, device="cpu")

        hard = DistilledClassifier(**student).fit(X_train, y_train)
        results["hard_label_accuracy"] = float(hard.score(X_test, y_test))

        sklearn.set_config(enable_metadata_routing=True)
        search = GridSearchCV(
            DistilledClassifier(alpha=0.1, **student).set_fit_request(teacher_logits=True),
            {"temperature": temperatures},
            cv=3,
            n_jobs=2,
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
            model = DistilledClassifier(temperature=results["best_temperature"], alpha=0.1,
                                        **student)
            model.fit(X_train, y_train, teacher_logits=subset)
            by_members[k] = float(model.score(X_test, y_test))
        results["accuracy_by_members"] = by_members

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "digits_sweeps.json").write_text(json.dumps(results, indent=2))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogx(temperatures, list(results["temperature_cv_accuracy"].values()), "o-",
                label="distilled (3-fold CV)")
    ax.axhline(results["hard_label_accuracy"], color="grey", ls="--", label="hard labels (test)")
    ax.set(xlabel="temperature T", ylabel="accuracy", title="digits: 2x64 student")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "digits_temperature_sweep.png", dpi=120)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(by_members), list(by_members.values()), "o-", label="distilled (test)")
    ax.axhline(results["hard_label_accuracy"], color="grey", ls="--", label="hard labels (test)")
    ax.set(xlabel="ensemble members in the teacher", ylabel="accuracy",
           title=f"digits: 2x64 student, T={results['best_temperature']:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "digits_accuracy_vs_members.png", dpi=120)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
