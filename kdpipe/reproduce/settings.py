"""Profiles of ``kdpipe reproduce``: the sizes and training lengths of each experiment.

A profile is a frozen record: the report prints it whole, so every number a reader
needs to rerun an experiment is in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["EXPERIMENTS", "PROFILES", "Profile", "parse_experiments", "get_profile"]

# experiment number -> short name; the order is the paper's
EXPERIMENTS = {
    1: "distill a big teacher into a 2x800 student",
    2: "a 2x30 student's accuracy against the temperature",
    3: "a class left out of the transfer set, then its bias shifted",
    4: "an ensemble distilled into one model",
    5: "soft targets from 3% of the data",
    6: "a generalist plus specialists on confusable classes (table 4)",
}
NOT_IMPLEMENTED: dict[int, str] = {}


@dataclass(frozen=True)
class Profile:
    """Every setting of one run. Sizes are rows; ``None`` means all that are available."""

    name: str
    dataset: str  # "digits" (scikit-learn, always installed) or "fashion-mnist"
    verdicts: bool  # smoke runs are too small to judge anything
    seeds: int
    n_train: int | None
    n_val: int
    n_test: int | None
    batch_size: int
    learning_rate: float
    # the teacher of experiments 1, 2, 3 and 5 (the paper's 2x1200, dropout, jitter)
    teacher_hidden: tuple[int, ...]
    teacher_dropout: float
    teacher_epochs: int
    jitter_copies: int
    jitter_pixels: int
    teacher_members: int  # several such nets, combined: the "big regularized model"
    # jittered views per row that the teachers score into a second cache, for the students
    # of experiments 1 and 4 that train on the views the teacher saw (0: no views arm)
    views: int
    # the share of those views that are shifted; the rest are the row itself, as the
    # teachers trained on the rows and jittered copies alike
    views_shifted: float
    # experiment 1
    student_hidden: tuple[int, ...]
    student_epochs: int
    # a control: experiment 1's hard-label student trained this long (is the teacher better
    # than a student trained to convergence, not only than one stopped at student_epochs?)
    control_epochs: int
    exp1_temperatures: tuple[float, ...]  # tried on validation (the paper's is 20)
    alphas: tuple[float, ...]  # hard-label weights tried on validation
    # experiment 2
    small_hidden: tuple[int, ...]
    small_epochs: int
    temperatures: tuple[float, ...]
    small_alpha: float
    # experiment 3
    left_out_class: int
    kept_classes: tuple[int, int]  # the variant whose transfer set has only these two classes
    # experiment 4
    members: int
    member_hidden: tuple[int, ...]
    member_dropout: float
    member_epochs: int
    ensemble_temperatures: tuple[float, ...]
    ensemble_alpha: float
    ensemble_unlabeled_rows: int  # unused training images added, unlabeled, to the transfer set
    # experiment 5
    fractions: tuple[float, ...]
    fraction_epochs: int
    early_stopping_patience: int
    # experiment 6 (kdpipe.datasets.make_confusable_classification)
    confusable_rows: int
    confusable_classes: int
    confusable_group_size: int
    confusable_teacher_hidden: tuple[int, ...]
    confusable_teacher_epochs: int
    confusable_teacher_members: int
    generalist_hidden: tuple[int, ...]
    generalist_epochs: int
    specialist_counts: tuple[int, ...]  # numbers of specialists tried on validation
    specialist_epochs: int
    classes_per_specialist: int  # > group size: specialists overlap, as the paper's did
    # experiment 6 on the run's own image data (the big teacher's cache)
    image_specialists: int
    image_classes_per_specialist: int
    image_specialist_seeds: int  # the image variant is cheap: more seeds than the profile's

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain JSON-able values."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        dataset="digits",
        verdicts=False,
        seeds=2,
        n_train=None,
        n_val=300,
        n_test=None,
        batch_size=128,
        learning_rate=3e-3,
        teacher_hidden=(64, 64),
        teacher_dropout=0.2,
        teacher_epochs=3,
        jitter_copies=1,
        jitter_pixels=1,
        teacher_members=1,
        views=2,
        views_shifted=0.5,
        student_hidden=(32, 32),
        student_epochs=4,
        control_epochs=8,
        exp1_temperatures=(20.0,),
        alphas=(0.1,),
        small_hidden=(8, 8),
        small_epochs=4,
        temperatures=(1.0, 3.0, 10.0),
        small_alpha=0.1,
        left_out_class=3,
        kept_classes=(7, 8),
        members=2,
        member_hidden=(16,),
        member_dropout=0.0,
        member_epochs=3,
        ensemble_temperatures=(1.0, 2.0),
        ensemble_alpha=0.5,
        ensemble_unlabeled_rows=0,
        fractions=(0.1, 1.0),
        fraction_epochs=4,
        early_stopping_patience=2,
        confusable_rows=800,
        confusable_classes=12,
        confusable_group_size=4,
        confusable_teacher_hidden=(64,),
        confusable_teacher_epochs=8,
        confusable_teacher_members=1,
        generalist_hidden=(16,),
        generalist_epochs=10,
        specialist_counts=(3,),
        specialist_epochs=3,
        classes_per_specialist=6,
        image_specialists=2,
        image_classes_per_specialist=4,
        image_specialist_seeds=2,
    ),
    "cpu": Profile(
        name="cpu",
        dataset="fashion-mnist",
        verdicts=True,
        seeds=3,
        n_train=None,
        n_val=5_000,
        n_test=None,
        batch_size=128,
        learning_rate=1e-3,
        teacher_hidden=(1200, 1200),
        teacher_dropout=0.2,
        teacher_epochs=12,
        jitter_copies=1,
        jitter_pixels=2,
        teacher_members=3,
        views=4,
        views_shifted=0.5,
        student_hidden=(800, 800),
        student_epochs=10,
        control_epochs=40,
        exp1_temperatures=(2.0, 5.0, 20.0),
        alphas=(0.1,),
        small_hidden=(30, 30),
        small_epochs=15,
        temperatures=(1.0, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0),
        small_alpha=0.1,
        left_out_class=3,
        kept_classes=(7, 8),
        members=5,
        member_hidden=(800, 800),
        member_dropout=0.0,
        member_epochs=8,
        ensemble_temperatures=(2.0, 5.0),
        ensemble_alpha=0.1,
        ensemble_unlabeled_rows=0,
        fractions=(0.03, 0.1),
        fraction_epochs=150,
        early_stopping_patience=5,
        confusable_rows=60_000,
        confusable_classes=100,
        confusable_group_size=10,
        confusable_teacher_hidden=(128,),
        confusable_teacher_epochs=20,
        confusable_teacher_members=3,
        generalist_hidden=(16,),
        generalist_epochs=20,
        specialist_counts=(10, 20),
        specialist_epochs=10,
        classes_per_specialist=12,
        image_specialists=3,
        image_classes_per_specialist=4,
        image_specialist_seeds=5,
    ),
    "paper": Profile(
        name="paper",
        dataset="fashion-mnist",
        verdicts=True,
        seeds=5,
        n_train=None,
        n_val=5_000,
        n_test=None,
        batch_size=128,
        learning_rate=1e-3,
        teacher_hidden=(1200, 1200),
        teacher_dropout=0.5,
        teacher_epochs=60,
        jitter_copies=3,
        jitter_pixels=2,
        teacher_members=2,
        views=8,
        views_shifted=0.5,
        student_hidden=(800, 800),
        student_epochs=60,
        control_epochs=200,
        exp1_temperatures=(2.0, 5.0, 10.0, 20.0),
        alphas=(0.0, 0.05, 0.1, 0.3),
        small_hidden=(30, 30),
        small_epochs=100,
        temperatures=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 10.0, 20.0),
        small_alpha=0.1,
        left_out_class=3,
        kept_classes=(7, 8),
        members=10,
        member_hidden=(800, 800),
        member_dropout=0.3,
        member_epochs=30,
        ensemble_temperatures=(1.0, 2.0, 5.0, 10.0),
        ensemble_alpha=0.5,
        ensemble_unlabeled_rows=0,
        fractions=(0.03, 0.1, 0.3, 1.0),
        fraction_epochs=100,
        early_stopping_patience=10,
        confusable_rows=100_000,
        confusable_classes=200,
        confusable_group_size=10,
        confusable_teacher_hidden=(256,),
        confusable_teacher_epochs=40,
        confusable_teacher_members=5,
        generalist_hidden=(32,),
        generalist_epochs=40,
        specialist_counts=(20, 40),
        specialist_epochs=20,
        classes_per_specialist=15,
        image_specialists=3,
        image_classes_per_specialist=4,
        image_specialist_seeds=5,
    ),
}


def get_profile(name: str | Profile, *, seeds: int | None = None) -> Profile:
    """The named profile (or ``name`` itself when it is a :class:`Profile`), with ``seeds``
    replaced when given."""
    if isinstance(name, Profile):
        profile = name
    elif name in PROFILES:
        profile = PROFILES[name]
    else:
        raise ValueError(f"profile must be one of {sorted(PROFILES)} or a Profile, got {name!r}")
    if seeds is not None:
        if int(seeds) < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds!r}")
        profile = replace(profile, seeds=int(seeds))
    return profile


def parse_experiments(values: Sequence[int | str] | None) -> tuple[int, ...]:
    """Experiment numbers, unique, in the order given (the order they run); ``None``: all, in order."""
    if values is None:
        return tuple(EXPERIMENTS)
    chosen: dict[int, None] = {}  # ordered
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                number = int(part)
            except ValueError:
                raise ValueError(f"experiments are numbers 1-6, got {part!r}") from None
            if number in NOT_IMPLEMENTED:
                raise ValueError(
                    f"experiment {number} ({NOT_IMPLEMENTED[number]}) is not implemented yet"
                )
            if number not in EXPERIMENTS:
                raise ValueError(f"experiments are numbers 1-6, got {number!r}")
            chosen.setdefault(number)
    if not chosen:
        raise ValueError("no experiment chosen")
    return tuple(chosen)
