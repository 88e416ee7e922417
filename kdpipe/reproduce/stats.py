"""Means, standard errors and the verdict rule of ``kdpipe reproduce``.

A verdict counts a difference only when it lies beyond two standard errors of the
mean over seeds; with a single seed nothing can be judged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "REPRODUCED",
    "PARTLY",
    "NOT",
    "NO_GAP",
    "UNDETERMINED",
    "mean_se",
    "share_verdict",
    "beats_verdict",
]

REPRODUCED = "reproduced"
PARTLY = "partly"
NOT = "not reproduced"
UNDETERMINED = "undetermined (one seed: no standard error)"
NO_GAP = "not reproduced (no gap: the model to catch up with is no better than the baseline)"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (``std(ddof=1) / sqrt(n)``; nan for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_se needs at least one value")
    if x.size < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def share_verdict(mean: float, se: float, bar: float) -> str:
    """Verdict on a share of a gap (gap closed, gain kept) against the paper's bar.

    Reproduced when the share is at least ``bar`` even two standard errors below its
    mean; partly when it is positive beyond two standard errors but may fall short of
    ``bar``; not reproduced otherwise. A nan share means there was no gap to close
    (e.g. the teacher no better than the hard-label student): not reproduced, saying so.
    """
    if math.isnan(mean):
        return NO_GAP
    if math.isnan(se):
        return UNDETERMINED
    low = mean - 2.0 * se
    if low >= bar:
        return REPRODUCED
    if low > 0.0:
        return PARTLY
    return NOT


def beats_verdict(differences: Sequence[tuple[float, float]]) -> str:
    """Verdict on "beats every reference": ``(mean, se)`` of each paired difference.

    Reproduced when every difference is positive beyond two standard errors, partly
    when some are, not reproduced when none is.
    """
    if not differences:
        raise ValueError("beats_verdict needs at least one difference")
    if any(math.isnan(se) for _, se in differences):
        return UNDETERMINED
    wins = sum(mean - 2.0 * se > 0.0 for mean, se in differences)
    if wins == len(differences):
        return REPRODUCED
    return PARTLY if wins else NOT
