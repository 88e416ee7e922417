"""The shared state of a run: the data, the teachers, their logit caches, and the clocks.

Each teacher (or ensemble) runs over the transfer set once, into a logit cache built
with :func:`kdpipe.build_cache`; every student of every experiment reads that cache.
The clocks separate teacher training, teacher passes (building the caches) and student
training, so the report can say what the cache saved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kdpipe.reproduce.data import Splits
from kdpipe.reproduce.settings import Profile

__all__ = ["Lab", "Teacher"]

# each teacher's seed, fixed by its name: running fewer experiments gives the same teachers
_TEACHER_SEEDS = {"big": 1000, "ensemble": 2000, "confusable": 3000}


@dataclass
class Teacher:
    """Trained members, their cache over the training rows, and their test accuracy."""

    members: list[Any]
    cache: Any  # kdpipe.LogitCache
    test_accuracy: float  # of the combined members (mean of their probabilities)
    member_test_accuracy: list[float]
    test_logits: np.ndarray  # (n_test, members, classes), for accuracy against ensemble size
    train_seconds: float
    pass_seconds: float  # one pass of every member over the transfer set (the cache build)
    # the transfer set the cache was built over: the training rows, then any unlabeled ones
    X_transfer: np.ndarray
    y_transfer: np.ndarray  # -1 on unlabeled rows


@dataclass
class Lab:
    """Data, teachers and clocks shared by the experiments of one run."""

    profile: Profile
    splits: Splits
    cache_dir: Path
    device: str = "auto"
    say: Callable[[str], None] = print
    teachers: dict[str, Teacher] = field(default_factory=dict)
    # choices made on validation rows that several experiments share (e.g. "alpha")
    choices: dict[str, Any] = field(default_factory=dict)
    # fitted students that several experiments share, by (kind, seed)
    models: dict[tuple[str, int], Any] = field(default_factory=dict)
    student_seconds: float = 0.0
    student_fits: int = 0
    # teacher key -> rows x epochs that distilled students read from its cache
    distilled_row_epochs: dict[str, int] = field(default_factory=dict)

    def train_teacher(
        self,
        key: str,
        *,
        n_members: int,
        hidden: tuple[int, ...],
        dropout: float,
        epochs: int,
        jitter_copies: int,
        splits: Splits | None = None,
        unlabeled_rows: int = 0,
    ) -> Teacher:
        """Train ``n_members`` MLPs on ``splits`` (the run's by default), run them once over
        its training rows and ``unlabeled_rows`` of its unlabeled ones into the cache ``key``,
        and keep them under :attr:`teachers`."""
        import torch

        from kdpipe.cache import build_cache
        from kdpipe.teacher_training import jitter_images, train_mlp_ensemble

        p, s = self.profile, splits or self.splits
        augment = None
        if jitter_copies and s.image_shape is not None:
            augment = partial(jitter_images, image_shape=s.image_shape, max_shift=p.jitter_pixels)
        start = time.perf_counter()
        members = train_mlp_ensemble(
            s.X_train,
            s.y_train,
            n_classes=s.n_classes,
            n_members=n_members,
            hidden_layer_sizes=hidden,
            dropout=dropout,
            epochs=epochs,
            batch_size=p.batch_size,
            learning_rate=p.learning_rate,
            augment=augment,
            n_augmented_copies=jitter_copies if augment else 0,
            random_state=_TEACHER_SEEDS.get(key, 0),
            device=self.device,
        )
        train_seconds = time.perf_counter() - start
        X_transfer, y_transfer = s.X_train, s.y_train
        if unlabeled_rows:
            extra = s.X_unlabeled[:unlabeled_rows] if s.X_unlabeled is not None else s.X_train[:0]
            if len(extra) < unlabeled_rows:
                raise ValueError(
                    f"{unlabeled_rows} unlabeled rows asked for, the data has {len(extra)} left"
                )
            X_transfer = np.concatenate([s.X_train, extra])
            y_transfer = np.concatenate([s.y_train, np.full(len(extra), -1, dtype=s.y_train.dtype)])
        start = time.perf_counter()
        cache = build_cache(
            members,
            X_transfer,
            self.cache_dir / f"{key}.zarr",
            y=y_transfer,
            overwrite=True,
            progress=False,
            device=self.device,
            classes=np.arange(s.n_classes),
        )
        pass_seconds = time.perf_counter() - start
        with torch.inference_mode():
            logits = np.stack([m(torch.from_numpy(s.X_test)).numpy() for m in members], axis=1)
        proba = torch.softmax(torch.from_numpy(logits), dim=-1).mean(1).numpy()
        teacher = Teacher(
            members,
            cache,
            float(np.mean(proba.argmax(1) == s.y_test)),
            [float(np.mean(logits[:, m].argmax(1) == s.y_test)) for m in range(n_members)],
            logits,
            train_seconds,
            pass_seconds,
            X_transfer,
            y_transfer,
        )
        self.say(
            f"teacher {key!r}: {n_members} x {hidden}, trained in {train_seconds:.1f}s, "
            f"cache built in {pass_seconds:.1f}s, test accuracy {teacher.test_accuracy:.4f}"
        )
        self.teachers[key] = teacher
        return teacher

    def big_teacher(self) -> Teacher:
        """The paper's MNIST teacher: one wide MLP with dropout, trained on jittered copies."""
        if "big" not in self.teachers:
            p = self.profile
            self.train_teacher(
                "big",
                n_members=1,
                hidden=p.teacher_hidden,
                dropout=p.teacher_dropout,
                epochs=p.teacher_epochs,
                jitter_copies=p.jitter_copies,
            )
        return self.teachers["big"]

    def ensemble(self) -> Teacher:
        """``profile.members`` MLPs that differ only in their seed (section 4's ensemble)."""
        if "ensemble" not in self.teachers:
            p = self.profile
            self.train_teacher(
                "ensemble",
                n_members=p.members,
                hidden=p.member_hidden,
                dropout=p.member_dropout,
                epochs=p.member_epochs,
                jitter_copies=0,
                unlabeled_rows=p.ensemble_unlabeled_rows,
            )
        return self.teachers["ensemble"]

    def student(self, hidden: tuple[int, ...], epochs: int, seed: int, **params: Any) -> Any:
        """An unfitted :class:`kdpipe.DistilledClassifier` with the profile's training settings."""
        from kdpipe import DistilledClassifier

        return DistilledClassifier(
            hidden_layer_sizes=hidden,
            max_epochs=epochs,
            batch_size=self.profile.batch_size,
            learning_rate=self.profile.learning_rate,
            random_state=seed,
            device=self.device,
            **params,
        )

    def fit(self, model: Any, rows: np.ndarray | None = None, teacher: str | None = None) -> Any:
        """Fit ``model`` on training ``rows`` (all by default) and charge the student clock.

        With ``teacher`` (a key of :attr:`teachers`), the student reads that teacher's
        cache, restricted to ``rows`` of its transfer set (all of it by default, unlabeled
        rows included); without it, the hard labels of the training rows alone.
        """
        X, y, logits = self.splits.X_train, self.splits.y_train, None
        if teacher is not None:
            t = self.teachers[teacher]
            X, y = t.X_transfer, t.y_transfer
        rows = np.arange(len(y)) if rows is None else np.asarray(rows)
        if teacher is not None:
            cache = self.teachers[teacher].cache
            everything = len(rows) == len(cache) and np.array_equal(rows, np.arange(len(cache)))
            logits = cache if everything else cache.take(rows)
        start = time.perf_counter()
        model.fit(X[rows], y[rows], teacher_logits=logits)
        seconds = time.perf_counter() - start
        self.student_seconds += seconds
        self.student_fits += 1
        self.say(
            f"  student {self.student_fits}: MLP{model.hidden_layer_sizes}, {len(rows)} rows, "
            + (
                f"T={model.temperature:g}, alpha={model.alpha:g} from {teacher!r}"
                if teacher
                else "hard labels"
            )
            + f", {model.n_iter_} epochs, {seconds:.1f}s"
        )
        if teacher is not None:
            self.distilled_row_epochs[teacher] = self.distilled_row_epochs.get(teacher, 0) + int(
                model.n_iter_
            ) * len(rows)
        return model

    def timings(self) -> dict[str, float]:
        """Seconds in teacher training, teacher passes and students, and the cost avoided.

        Without a cache, online distillation runs the teacher over every row of every
        epoch of every distilled student; each row costs what it cost in the cache build
        (which also wrote to disk, so the estimate is slightly high).
        """
        online = sum(
            self.teachers[key].pass_seconds / len(self.teachers[key].cache) * row_epochs
            for key, row_epochs in self.distilled_row_epochs.items()
        )
        return {
            "teacher_training_s": sum(t.train_seconds for t in self.teachers.values()),
            "teacher_passes_s": sum(t.pass_seconds for t in self.teachers.values()),
            "students_s": self.student_seconds,
            "student_fits": self.student_fits,
            "distilled_row_epochs": int(sum(self.distilled_row_epochs.values())),
            "online_teacher_passes_estimate_s": online,
        }
