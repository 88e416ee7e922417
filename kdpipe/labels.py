"""Labels and classes: the unlabeled marker, class lists, and label codes.

One rule everywhere (``build_cache`` and the estimators): a label ``-1`` marks a transfer
row without a true label, and so does the string ``"-1"``, which is what numpy makes of
``-1`` in a list of strings (``np.asarray(["cat", -1])`` is ``["cat", "-1"]``). Such a
row contributes the soft term only. Where ``-1`` marks unlabeled rows it cannot also be
a class. Labels are encoded as int64 codes: the position of the label in the class list,
``-1`` for unlabeled rows. A label equal to a class compares equal in Python (``2.0`` is
the class ``2``); anything else is an error naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.multiclass import check_classification_targets

from kdpipe.errors import ClassMismatchError, InputError

__all__ = [
    "UNLABELED",
    "unlabeled_mask",
    "class_list",
    "resolve_classes",
    "encode_labels",
    "class_columns",
]

UNLABELED = -1  # label of a transfer row without a true label (soft term only)


def unlabeled_mask(y: Any) -> np.ndarray:
    """Boolean mask of the labels equal to ``-1`` or ``"-1"`` (unlabeled rows)."""
    y = np.asarray(y)
    if y.dtype.kind in "iufb":
        return np.asarray(y == UNLABELED, dtype=bool).reshape(y.shape)
    if y.dtype.kind == "O":
        return np.fromiter((_is_marker(v) for v in y.ravel()), dtype=bool, count=y.size).reshape(
            y.shape
        )
    if y.dtype.kind in "US":
        return np.asarray(y == np.asarray(str(UNLABELED), dtype=y.dtype.kind), dtype=bool)
    return np.zeros(y.shape, dtype=bool)


def _is_marker(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (str, bytes)):
        return value in (str(UNLABELED), str(UNLABELED).encode())
    try:
        return bool(value == UNLABELED)
    except (TypeError, ValueError):
        return False


def class_list(values: Any, name: str, *, marker_allowed: bool = True) -> np.ndarray:
    """``values`` as a 1-D class array: non-empty, no repeats, ``-1`` only if allowed."""
    classes = np.asarray(values)
    if classes.ndim != 1 or len(classes) == 0:
        raise InputError(f"{name} must be a non-empty 1-D list of labels, got {values!r}")
    if len(set(classes.tolist())) != len(classes):
        raise InputError(f"{name} must not repeat a label, got {classes.tolist()!r}")
    if not marker_allowed and unlabeled_mask(classes).any():
        raise ClassMismatchError(
            f"{name} {classes.tolist()!r} contain -1, which marks unlabeled rows when teacher "
            "logits are given, so it cannot also be a class; relabel that class"
        )
    return classes


def resolve_classes(
    y_labeled: np.ndarray, declared: Any, cache_classes: Any, *, has_teacher: bool
) -> np.ndarray:
    """An estimator's ``classes_``: from the cache, else the ``classes`` parameter, else ``y``.

    The cache's list is the order of its logits and wins; a declared list must then be
    identical. With teacher logits, ``-1`` cannot be a class.
    """
    if cache_classes is not None:
        classes = class_list(cache_classes, "the cache's class list")
        if declared is not None and np.asarray(declared).tolist() != classes.tolist():
            raise ClassMismatchError(
                f"classes={np.asarray(declared).tolist()!r} differs from the cache's class "
                f"list {classes.tolist()!r}, which is the order of its logits; leave "
                "classes=None to use the cache's list"
            )
    elif declared is not None:
        classes = class_list(declared, "classes")
    else:
        if len(y_labeled) == 0:
            raise InputError(
                "y has no labeled row: pass classes=[...] (or a LogitCache that knows its "
                "classes) so the student knows its outputs"
            )
        check_classification_targets(y_labeled)
        classes = np.unique(y_labeled)
    return class_list(classes, "classes", marker_allowed=not has_teacher)


def encode_labels(
    y: Any, classes: np.ndarray, start: int = 0, *, unlabeled: np.ndarray | None = None
) -> np.ndarray:
    """Int64 codes of ``y`` in ``classes``; ``-1`` for unlabeled rows.

    Parameters
    ----------
    y : array-like of shape (n,)
    classes : ndarray of shape (C,)
    start : int, default=0
        Row number of ``y[0]`` in the caller's data, for error messages.
    unlabeled : ndarray of bool, optional
        Rows without a label; default: :func:`unlabeled_mask` of ``y`` (then ``-1``
        cannot be a class). Pass an all-False mask where ``-1`` is an ordinary label.

    Raises
    ------
    ClassMismatchError
        A label is not one of ``classes``; the message names it and its first rows.
    """
    values = np.asarray(y)
    if values.ndim != 1:
        raise InputError(f"labels must be one-dimensional, got shape {values.shape}")
    if unlabeled is None:
        unlabeled = unlabeled_mask(values)
        if unlabeled.any():
            class_list(classes, "classes", marker_allowed=False)
    codes = np.full(len(values), UNLABELED, dtype=np.int64)
    labeled = np.flatnonzero(~unlabeled)
    if len(labeled) == 0:
        return codes
    uniques, inverse = np.unique(values[labeled], return_inverse=True)
    lookup = {label: i for i, label in enumerate(np.asarray(classes).tolist())}
    mapped = np.empty(len(uniques), dtype=np.int64)
    for j, label in enumerate(uniques.tolist()):
        code = lookup.get(label)
        if code is None:
            rows = start + labeled[inverse.ravel() == j][:10]
            raise ClassMismatchError(
                f"label {label!r} of y (rows {rows.tolist()}) is not one of the classes "
                f"{np.asarray(classes).tolist()[:20]!r}"
            )
        mapped[j] = code
    codes[labeled] = mapped[inverse.ravel()]
    return codes


def class_columns(own: np.ndarray, order: np.ndarray, who: str) -> np.ndarray | None:
    """Columns of a teacher with classes ``own`` that give the class order ``order``.

    None when the orders already agree. Labels are compared as strings, so a teacher's
    ``[0, 1]`` and a declared ``["0", "1"]`` are the same classes.

    Raises
    ------
    ClassMismatchError
        ``own`` is not the same set of classes as ``order``.
    """
    own_keys, order_keys = [str(c) for c in own.tolist()], [str(c) for c in order.tolist()]
    if sorted(own_keys) != sorted(order_keys):
        raise ClassMismatchError(
            f"{who} has classes {own.tolist()} but the ensemble uses {order.tolist()}; "
            "all rows are affected, nothing was computed"
        )
    position = {c: j for j, c in enumerate(own_keys)}
    columns = np.asarray([position[c] for c in order_keys])
    return None if np.array_equal(columns, np.arange(len(order))) else columns
