"""What each specialist trains on: its rows, labels and target logits (built in the parent).

Soft targets are prepared once here, in the calling process, so parallel jobs only
receive small per-specialist arrays plus the shared ``X``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import softmax

from kdpipe.rows import take_rows
from kdpipe.specialists.targets import (
    collapse_labels,
    collapse_logits,
    complement_mask,
    full_specialist_targets,
    probabilities_as_logits,
)
from kdpipe.specialists.training import Kind, sample_rows

__all__ = ["SpecialistPlan", "row_classes", "plan_specialist"]


@dataclass(frozen=True)
class SpecialistPlan:
    """Inputs of one :func:`~kdpipe.specialists.training.fit_specialist` job."""

    subset: np.ndarray  # (k,) class codes
    rows: np.ndarray  # (r,) rows of X
    y: np.ndarray | None  # (r,) specialist codes, -1 unlabeled
    targets: np.ndarray | None  # (r, out) or (r, M, out) T=1 target logits, float32
    correction: float  # log(r_s / r_d)


def row_classes(codes: np.ndarray, teacher_logits: Any, chunk: int = 8192) -> np.ndarray:
    """The class each row counts as when sampling: its label, else the teacher's argmax.

    Unlabeled rows (code ``-1``) exist only with teacher logits; they count as the
    class the teacher (ensemble: the mean of its members' probabilities) finds most
    probable.
    """
    out = np.asarray(codes, dtype=np.int64).copy()
    missing = np.flatnonzero(out < 0)
    for start in range(0, len(missing), chunk):
        rows = missing[start : start + chunk]
        v = np.asarray(take_rows(teacher_logits, rows), dtype=np.float64)  # (b, [M,] C)
        p = softmax(v, axis=-1)
        if p.ndim == 3:
            p = p.mean(axis=1)
        out[rows] = p.argmax(axis=1)
    return out


def plan_specialist(
    subset: np.ndarray,
    kind: Kind,
    sampling_classes: np.ndarray,
    codes: np.ndarray,
    *,
    share: float,
    rng: np.random.Generator,
    teacher_logits: Any = None,
    generalist_proba: np.ndarray | None = None,
) -> SpecialistPlan:
    """Rows, labels and targets of one specialist.

    ``"dustbin"``: labels become subset positions or the dustbin; with teacher logits
    the targets are the teacher's ``T = 1`` logits collapsed onto the subset and
    dustbin (:func:`~kdpipe.specialists.targets.collapse_logits`), otherwise there are
    none (hard labels, as in the paper). ``"full"``: labels stay class codes; the
    targets are the teacher's (else the generalist's) probabilities with the subset's
    mass moved onto the true class (section 6.1,
    :func:`~kdpipe.specialists.targets.full_specialist_targets`).

    Either way the target logits outside the subset are lowered by the sampling
    correction ``log(r_s / r_d)``: the soft targets then describe the re-balanced
    sample, exactly like the hard labels do, and adding the correction back after
    training restores the natural rates for both terms of the loss.
    """
    subset = np.asarray(subset, dtype=np.intp)
    rows, correction = sample_rows(sampling_classes, subset, share, rng)
    row_codes = np.asarray(codes, dtype=np.int64)[rows]
    if teacher_logits is not None:
        n_classes = teacher_logits.shape[-1]
    elif generalist_proba is not None:
        n_classes = generalist_proba.shape[1]
    else:
        raise ValueError("plan_specialist needs teacher_logits or generalist_proba")
    outside = complement_mask(subset, n_classes)
    targets = None
    if kind == "dustbin":
        y = collapse_labels(row_codes, subset)
        if teacher_logits is not None:
            targets = collapse_logits(take_rows(teacher_logits, rows), subset)  # (r, [M,] k+1)
            targets[..., -1] -= correction
    else:
        y = row_codes
        if teacher_logits is not None:
            v = np.asarray(take_rows(teacher_logits, rows), dtype=np.float64)  # (r, [M,] C)
            p = softmax(v, axis=-1)
        else:
            p = np.asarray(generalist_proba, dtype=np.float64)[rows]  # (r, C)
        if p.ndim == 3:
            members = [
                full_specialist_targets(p[:, m], row_codes, subset) for m in range(p.shape[1])
            ]
            t = np.stack(members, axis=1)  # (r, M, C)
        else:
            t = full_specialist_targets(p, row_codes, subset)  # (r, C)
        targets = probabilities_as_logits(t).astype(np.float64)
        targets[..., outside] -= correction
    if targets is not None:
        targets = targets.astype(np.float32)
    return SpecialistPlan(subset, rows, y, targets, correction)
