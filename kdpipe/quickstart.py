"""``kdpipe quickstart``: teacher ensemble -> logit cache -> distilled student, on digits.

Trains a few wide MLP teachers on scikit-learn's digits (with jittered copies, as the
paper's MNIST teacher), stores their logits in a logit cache, then trains the same small
student twice: on hard labels alone, and distilled from the cached ensemble. Prints
the test accuracy of each model and the wall time of each stage.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["QuickstartResult", "run_quickstart", "register"]


@dataclass(frozen=True)
class QuickstartResult:
    """One row of the quickstart's table."""

    model: str
    architecture: str
    accuracy: float
    errors: int
    seconds: float


def run_quickstart(
    *,
    seed: int = 0,
    n_members: int = 3,
    student_hidden: tuple[int, ...] = (64, 64),
    temperature: float = 4.0,
    alpha: float = 0.1,
    student_epochs: int = 150,
    teacher_epochs: int = 30,
    cache_dir: str | Path | None = None,
    backend: str = "zarr",
    verbose: bool = True,
) -> list[QuickstartResult]:
    """Run the quickstart; return its table rows.

    Parameters
    ----------
    seed : int, default=0
        Seeds the train/test split, the teachers and the students.
    n_members : int, default=3
        Teachers in the ensemble.
    student_hidden : tuple of int, default=(64, 64)
        Hidden layers of both students.
    temperature, alpha : float
        Distillation temperature and hard-label weight.
    student_epochs, teacher_epochs : int
        Training length.
    cache_dir : path, optional
        Where the logit cache is written and kept; by default a temporary directory,
        deleted before this returns (its path is then not printed).
    backend : {"zarr", "hdf5"}, default="zarr"
    verbose : bool, default=True
        Print progress.
    """
    check_options(
        n_members=n_members,
        temperature=temperature,
        alpha=alpha,
        student_epochs=student_epochs,
        teacher_epochs=teacher_epochs,
    )
    # imported here, not at the top: ``kdpipe --help`` and the other commands start faster
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from kdpipe.cache import build_cache
    from kdpipe.distilled import DistilledClassifier
    from kdpipe.teacher_training import jitter_images, train_mlp_ensemble

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.5, stratify=y, random_state=seed
    )
    rows: list[QuickstartResult] = []

    def say(message: str) -> None:
        if verbose:
            print(message, flush=True)

    say(f"digits: {len(X_train)} transfer rows, {len(X_test)} test rows, 10 classes")
    start = time.perf_counter()
    teachers, member_seconds = train_mlp_ensemble(
        X_train,
        y_train,
        n_classes=10,
        n_members=n_members,
        hidden_layer_sizes=(256, 256),
        dropout=0.3,
        epochs=teacher_epochs,
        augment=partial(jitter_images, image_shape=(8, 8), max_shift=1),
        n_augmented_copies=4,
        random_state=seed,
        device="cpu",
        return_seconds=True,
    )
    ensemble_seconds = time.perf_counter() - start  # the members plus their shared jittered copies
    say(f"trained {n_members} teachers (2x256 ReLU, dropout 0.3, jittered inputs)")

    with torch.no_grad():
        test_logits = np.stack(
            [t(torch.from_numpy(X_test)).numpy() for t in teachers], axis=1
        )  # (n_test, members, classes)
    for m in range(n_members):
        rows.append(
            _row(
                f"teacher {m + 1}", "2x256", test_logits[:, m].argmax(1), y_test, member_seconds[m]
            )
        )
    ensemble_proba = torch.softmax(torch.from_numpy(test_logits), dim=-1).mean(1).numpy()
    rows.append(
        _row(
            f"ensemble of {n_members}", "2x256", ensemble_proba.argmax(1), y_test, ensemble_seconds
        )
    )

    with tempfile.TemporaryDirectory(prefix="kdpipe-quickstart-") as tmp:
        store = Path(cache_dir or tmp) / f"digits-logits.{'zarr' if backend == 'zarr' else 'h5'}"
        start = time.perf_counter()
        cache = build_cache(
            teachers,
            X_train,
            store,
            y=y_train,
            backend=backend,
            progress=verbose,
            overwrite=True,
            device="cpu",
        )
        cache_seconds = time.perf_counter() - start
        # a temporary cache is deleted when this block ends: name only a path that stays
        where = (
            f"at {store.resolve()}" if cache_dir else "in a temporary folder (--cache-dir keeps it)"
        )
        say(
            f"logit cache {where}: {len(cache)} rows x {cache.n_members} members "
            f"x {cache.n_classes} classes, {cache_seconds:.1f}s"
        )

        arch = "x".join(str(h) for h in student_hidden)
        for name, params, logits in (
            ("student, hard labels", dict(), None),
            (
                f"student, distilled T={temperature:g}",
                dict(temperature=temperature, alpha=alpha),
                cache,
            ),
        ):
            start = time.perf_counter()
            model = DistilledClassifier(
                hidden_layer_sizes=student_hidden,
                max_epochs=student_epochs,
                batch_size=64,
                learning_rate=3e-3,
                random_state=seed,
                device="cpu",
            ).set_params(**params)
            model.fit(X_train, y_train, teacher_logits=logits)
            seconds = time.perf_counter() - start
            rows.append(_row(name, arch, model.predict(X_test), y_test, seconds))
            say(f"trained {name}")
    return rows


_FLAGS = {
    "n_members": "--members",
    "temperature": "--temperature",
    "alpha": "--alpha",
    "student_epochs": "--student-epochs",
    "teacher_epochs": "--teacher-epochs",
}


def check_options(*, flags: bool = False, **values: float) -> None:
    """Check the quickstart's numbers before any work (no teacher trains with a bad alpha).

    Raises :class:`~kdpipe.errors.InputError` naming the parameter, or, with ``flags``,
    :class:`~kdpipe.errors.UsageError` naming the command-line option.
    """
    import math

    from kdpipe.errors import InputError, UsageError

    rules = {
        "n_members": (lambda v: v >= 1, "an integer >= 1"),
        "student_epochs": (lambda v: v >= 1, "an integer >= 1"),
        "teacher_epochs": (lambda v: v >= 1, "an integer >= 1"),
        "temperature": (lambda v: v > 0 and math.isfinite(v), "a finite number > 0"),
        "alpha": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    }
    for name, value in values.items():
        ok, wanted = rules[name]
        if not ok(value):
            error = UsageError if flags else InputError
            raise error(f"{_FLAGS[name] if flags else name} must be {wanted}, got {value!r}")


def _row(
    model: str, architecture: str, predicted: np.ndarray, y_true: np.ndarray, seconds: float
) -> QuickstartResult:
    wrong = int((predicted != y_true).sum())
    return QuickstartResult(model, architecture, 1.0 - wrong / len(y_true), wrong, seconds)


def format_table(rows: list[QuickstartResult]) -> str:
    """The results as a fixed-width text table."""
    width = max(len(r.model) for r in rows)
    lines = [f"{'model':<{width}}  {'hidden':>7}  {'test acc':>8}  {'errors':>6}  {'wall s':>7}"]
    for r in rows:
        lines.append(
            f"{r.model:<{width}}  {r.architecture:>7}  {r.accuracy:8.4f}  "
            f"{r.errors:6d}  {r.seconds:7.1f}"
        )
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    check_options(
        flags=True,
        n_members=args.members,
        temperature=args.temperature,
        alpha=args.alpha,
        student_epochs=args.student_epochs,
        teacher_epochs=args.teacher_epochs,
    )
    start = time.perf_counter()
    rows = run_quickstart(
        seed=args.seed,
        n_members=args.members,
        temperature=args.temperature,
        alpha=args.alpha,
        student_epochs=args.student_epochs,
        teacher_epochs=args.teacher_epochs,
        cache_dir=args.cache_dir,
        backend=args.backend,
        verbose=not args.quiet,
    )
    print(format_table(rows))
    print(f"total wall time {time.perf_counter() - start:.1f}s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quickstart`` subcommand."""
    parser = subparsers.add_parser(
        "quickstart",
        help="teacher ensemble -> logit cache -> distilled student, on digits",
        description=__doc__,
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the split, teachers and students"
    )
    parser.add_argument("--members", type=int, default=3, help="teachers in the ensemble")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the hard labels")
    parser.add_argument("--backend", choices=("zarr", "hdf5"), default="zarr", help="cache format")
    parser.add_argument(
        "--teacher-epochs", type=int, default=30, help="training epochs of each teacher"
    )
    parser.add_argument(
        "--student-epochs", type=int, default=150, help="training epochs of each student"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="keep the cache in this folder (default: a temporary one)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    parser.set_defaults(func=_main)
