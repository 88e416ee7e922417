"""Old import path of the label and input checks, kept for ``kdpipe.specialists`` until its
imports move: labels and classes now live in :mod:`kdpipe.labels`, the estimator input
checks in :mod:`kdpipe._estimator`. Nothing else imports this module."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdpipe._estimator import check_lazy_X, check_teacher_logits
from kdpipe.labels import UNLABELED, resolve_classes, unlabeled_mask
from kdpipe.labels import encode_labels as _encode_labels
from kdpipe.rows import check_finite_rows, is_lazy_array

__all__ = [
    "UNLABELED",
    "is_lazy_array",
    "check_lazy_X",
    "unlabeled_mask",
    "resolve_classes",
    "encode_labels",
    "check_teacher_logits",
    "check_finite_rows",
]


def encode_labels(y: np.ndarray, classes: np.ndarray, unlabeled: Any) -> np.ndarray:
    """:func:`kdpipe.labels.encode_labels` with the old ``(y, classes, unlabeled)`` order."""
    return _encode_labels(y, classes, unlabeled=np.asarray(unlabeled, dtype=bool))
