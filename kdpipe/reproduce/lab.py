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
    test_correct: np.ndarray  # (n_test,) bool: the combined members right on each test row
    # the same members over jittered views of every transfer row (None: no views arm)
    views_cache: Any = None
    views_pass_seconds: float = 0.0
    X_transfer_images: np.ndarray | None = None  # X_transfer as (n, 1, H, W), what views shift


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
        views: int = 0,
    ) -> Teacher:
        """Train ``n_members`` MLPs on ``splits`` (the run's by default), run them once over
        its training rows and ``unlabeled_rows`` of its unlabeled ones into the cache ``key``,
        and keep them under :attr:`teachers`.

        With ``views`` (image data only), the members also score that many views of every
        transfer row, a share ``profile.views_shifted`` of them shifted by up to
        ``profile.jitter_pixels`` (the jitter the paper's teacher was trained on) and the
        rest the row itself, into a second cache: students that read it train
        on the views the teacher scored (:meth:`fit` with ``views=True``)."""
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
        views_cache, views_seconds, images = None, 0.0, None
        if views and s.image_shape is not None:
            from kdpipe.augment import Shift
            from kdpipe.cache.views import Views

            images = X_transfer.reshape(len(X_transfer), 1, *s.image_shape)
            start = time.perf_counter()
            views_cache = build_cache(
                members,
                images,
                self.cache_dir / f"{key}-views.zarr",
                y=y_transfer,
                views=Views(
                    count=views,
                    augment=Shift(p.jitter_pixels, p=p.views_shifted),
                    seed=_TEACHER_SEEDS.get(key, 0) + 1,
                ),
                overwrite=True,
                progress=False,
                device=self.device,
                classes=np.arange(s.n_classes),
            )
            views_seconds = time.perf_counter() - start
        with torch.inference_mode():
            logits = np.stack([m(torch.from_numpy(s.X_test)).numpy() for m in members], axis=1)
        proba = torch.softmax(torch.from_numpy(logits), dim=-1).mean(1).numpy()
        correct = proba.argmax(1) == s.y_test
        teacher = Teacher(
            members,
            cache,
            float(np.mean(correct)),
            [float(np.mean(logits[:, m].argmax(1) == s.y_test)) for m in range(n_members)],
            logits,
            train_seconds,
            pass_seconds,
            X_transfer,
            y_transfer,
            correct,
            views_cache,
            views_seconds,
            images,
        )
        self.say(
            f"teacher {key!r}: {n_members} x {hidden}, trained in {train_seconds:.1f}s, "
            f"cache built in {pass_seconds:.1f}s"
            + (f", {views} views of every row in {views_seconds:.1f}s" if views_cache else "")
            + f", test accuracy {teacher.test_accuracy:.4f}"
        )
        self.teachers[key] = teacher
        return teacher

    def big_teacher(self) -> Teacher:
        """The paper's MNIST teacher: wide MLPs with dropout, trained on jittered copies and
        combined (``profile.teacher_members`` of them), with a views cache."""
        if "big" not in self.teachers:
            p = self.profile
            self.train_teacher(
                "big",
                n_members=p.teacher_members,
                views=p.views,
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
                views=p.views,
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

    def fit(
        self,
        model: Any,
        rows: np.ndarray | None = None,
        teacher: str | None = None,
        *,
        views: bool = False,
    ) -> Any:
        """Fit ``model`` on training ``rows`` (all by default) and charge the student clock.

        With ``teacher`` (a key of :attr:`teachers`), the student reads that teacher's
        cache, restricted to ``rows`` of its transfer set (all of it by default, unlabeled
        rows included); without it, the hard labels of the training rows alone. With
        ``views``, it reads the teacher's views cache and trains on the images, each epoch
        on one jittered view per row, the one the teacher scored.
        """
        X, y, logits = self.splits.X_train, self.splits.y_train, None
        if teacher is not None:
            t = self.teachers[teacher]
            X, y = t.X_transfer, t.y_transfer
            if views:
                if t.views_cache is None or t.X_transfer_images is None:
                    raise ValueError(f"teacher {teacher!r} has no views cache (profile views=0?)")
                X = t.X_transfer_images
        rows = np.arange(len(y)) if rows is None else np.asarray(rows)
        if teacher is not None:
            cache = self.teachers[teacher].views_cache if views else self.teachers[teacher].cache
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
            + (" (views)" if views else "")
            + f", {model.n_iter_} epochs, {seconds:.1f}s"
        )
        if teacher is not None:
            key = f"{teacher}-views" if views else teacher
            self.distilled_row_epochs[key] = self.distilled_row_epochs.get(key, 0) + int(
                model.n_iter_
            ) * len(rows)
        return model

    def timings(self) -> dict[str, float]:
        """Seconds in teacher training, teacher passes and students, and the cost avoided.

        Without a cache, online distillation runs the teacher over every row of every
        epoch of every distilled student; each row costs what it cost in the cache build
        (which also wrote to disk, so the estimate is slightly high).
        """

        def row_cost(key: str) -> float:
            if key.endswith("-views"):
                t = self.teachers[key.removesuffix("-views")]
                return t.views_pass_seconds / (len(t.views_cache) * self.profile.views)
            t = self.teachers[key]
            return t.pass_seconds / len(t.cache)

        online = sum(
            row_cost(key) * row_epochs for key, row_epochs in self.distilled_row_epochs.items()
        )
        return {
            "teacher_training_s": sum(t.train_seconds for t in self.teachers.values()),
            "teacher_passes_s": sum(
                t.pass_seconds + t.views_pass_seconds for t in self.teachers.values()
            ),
            "students_s": self.student_seconds,
            "student_fits": self.student_fits,
            "distilled_row_epochs": int(sum(self.distilled_row_epochs.values())),
            "online_teacher_passes_estimate_s": online,
        }
