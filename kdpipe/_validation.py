"""Input checks of :class:`kdpipe.DistilledClassifier` that ``validate_data`` cannot do.

``validate_data`` loads whatever it is given into memory, so on-disk inputs (zarr, h5py
and dask arrays, a :class:`kdpipe.LogitCache` or a lazy subset of one) are checked here
by shape and dtype only, and for NaN/inf one minibatch at a time as training reads them
(:class:`CheckedSource`). Labels are encoded against a class list that may come from
``y``, from the caller, or from the cache, with ``-1`` marking unlabeled rows when
teacher logits are given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.multiclass import check_classification_targets

from kdpipe._blocks import BlockReader
from kdpipe.batches import ArraySource, Batch
from kdpipe.errors import ClassMismatchError, InputError, TeacherOutputError

__all__ = [
    "UNLABELED",
    "is_lazy_array",
    "check_lazy_X",
    "unlabeled_mask",
    "resolve_classes",
    "encode_labels",
    "check_teacher_logits",
    "check_finite_rows",
    "CheckedSource",
    "CheckedRows",
]

UNLABELED = -1  # label of a transfer row without a true label (soft term only)
_LAZY_PACKAGES = {"zarr", "h5py", "dask"}


def is_lazy_array(array: Any) -> bool:
    """Whether ``array`` is an on-disk or lazy array that must not be loaded whole."""
    if isinstance(array, np.ndarray):
        return False
    package = type(array).__module__.split(".", 1)[0]
    if package in _LAZY_PACKAGES:
        return True
    return hasattr(array, "classes") and hasattr(array, "shape")  # a LogitCache or subset


def check_lazy_X(X: Any, n_features: int | None = None, name: str = "X") -> int:
    """Check an on-disk ``X`` by shape and dtype without reading it; return its width."""
    shape, dtype = tuple(X.shape), np.dtype(X.dtype)
    if len(shape) != 2:
        raise InputError(
            f"{name} must be two-dimensional (n_samples, n_features), got shape {shape}"
        )
    if dtype.kind not in "fiub":
        raise InputError(f"{name} must hold numbers, got dtype {dtype}")
    if shape[0] < 1:
        raise InputError(f"{name} has 0 samples: a minimum of 1 is required")
    if n_features is not None and shape[1] != n_features:
        raise InputError(
            f"X has {shape[1]} features, but DistilledClassifier is expecting "
            f"{n_features} features as input."
        )
    return int(shape[1])


def unlabeled_mask(y: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``y`` equal to :data:`UNLABELED` (``-1``).

    In string labels the string ``"-1"`` counts too: numpy turns ``["cat", -1]`` into
    ``["cat", "-1"]``.
    """
    if y.dtype.kind in "iuf":
        return np.asarray(y == UNLABELED, dtype=bool)
    if y.dtype.kind == "O":
        return np.asarray((y == UNLABELED) | (y == str(UNLABELED)), dtype=bool)
    if y.dtype.kind in "US":
        return np.asarray(y == np.asarray(str(UNLABELED), dtype=y.dtype.kind), dtype=bool)
    return np.zeros(y.shape[0], dtype=bool)


def _unique_in_order(values: Any, name: str) -> np.ndarray:
    classes = np.asarray(values)
    if classes.ndim != 1 or len(classes) == 0:
        raise InputError(f"{name} must be a non-empty 1-D list of labels, got {values!r}")
    if len(set(classes.tolist())) != len(classes):
        raise InputError(f"{name} must not repeat a label, got {classes.tolist()!r}")
    return classes


def resolve_classes(
    y_labeled: np.ndarray, declared: Any, cache_classes: Any, *, has_teacher: bool
) -> np.ndarray:
    """``classes_``: from the cache, else from the ``classes`` parameter, else from ``y``.

    The cache's list is the order of its logits and wins; a declared list must then be
    identical. Every label in ``y`` must belong to the resulting list.
    """
    if cache_classes is not None:
        classes = _unique_in_order(cache_classes, "the cache's class list")
        if declared is not None and (
            len(np.asarray(declared)) != len(classes)
            or np.asarray(declared).tolist() != classes.tolist()
        ):
            raise ClassMismatchError(
                f"classes={np.asarray(declared).tolist()!r} differs from the cache's class "
                f"list {classes.tolist()!r}, which is the order of its logits; leave "
                "classes=None to use the cache's list"
            )
    elif declared is not None:
        classes = _unique_in_order(declared, "classes")
    else:
        if len(y_labeled) == 0:
            raise InputError(
                "y has no labeled row: pass classes=[...] (or a LogitCache that knows its "
                "classes) so the student knows its outputs"
            )
        check_classification_targets(y_labeled)
        classes = np.unique(y_labeled)
    if has_teacher and unlabeled_mask(classes).any():
        raise InputError(
            "-1 marks unlabeled rows when teacher_logits are given, so it cannot also be a "
            "class; relabel that class"
        )
    return classes


def encode_labels(y: np.ndarray, classes: np.ndarray, unlabeled: np.ndarray) -> np.ndarray:
    """Integer codes of ``y`` in ``classes`` (``-1`` where ``unlabeled``), int64."""
    codes = np.full(y.shape[0], UNLABELED, dtype=np.int64)
    labeled = ~unlabeled
    if not labeled.any():
        return codes
    values, inverse = np.unique(y[labeled], return_inverse=True)
    lookup = {label: i for i, label in enumerate(classes.tolist())}
    missing = [v for v in values.tolist() if v not in lookup]
    if missing:
        raise ClassMismatchError(
            f"labels {missing[:10]!r} of y are not among the classes {classes.tolist()[:20]!r}"
            " (from the cache or the classes parameter)"
        )
    mapped = np.array([lookup[v] for v in values.tolist()], dtype=np.int64)
    codes[labeled] = mapped[inverse.ravel()]
    return codes


def check_teacher_logits(teacher_logits: Any, n_samples: int, n_classes: int) -> Any:
    """Check shape (and values, when in memory) of the teacher logits; return them."""
    if not is_lazy_array(teacher_logits):
        teacher_logits = np.asarray(teacher_logits)
    shape = tuple(teacher_logits.shape)
    if len(shape) not in (2, 3):
        raise InputError(f"teacher_logits must have shape (n, C) or (n, M, C), got {shape}")
    if shape[0] != n_samples:
        raise InputError(
            f"teacher_logits has {shape[0]} rows but X has {n_samples}: they must be aligned"
        )
    if shape[-1] != n_classes:
        raise ClassMismatchError(
            f"teacher_logits has {shape[-1]} class columns but there are {n_classes} "
            "classes; with array logits, declare every class the teacher knows with "
            "classes=[...] in logit order"
        )
    if np.dtype(teacher_logits.dtype).kind not in "fiu":
        raise InputError(f"teacher_logits must hold numbers, got dtype {teacher_logits.dtype}")
    if isinstance(teacher_logits, np.ndarray):
        check_finite_rows(teacher_logits, np.arange(n_samples), "teacher_logits")
    return teacher_logits


def check_finite_rows(block: np.ndarray, rows: np.ndarray, name: str) -> None:
    """Raise if ``block`` (rows ``rows`` of ``name``) holds NaN or inf, naming the rows."""
    finite = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
    if finite.all():
        return
    bad = np.asarray(rows)[~finite]
    error = TeacherOutputError if name == "teacher_logits" else InputError
    raise error(
        f"{name} holds NaN or inf in {len(bad)} row(s), e.g. rows {sorted(bad.tolist())[:10]} "
        f"(indices into the {name} passed to this call)"
    )


class CheckedSource(ArraySource):
    """An :class:`~kdpipe.batches.ArraySource` that checks each on-disk minibatch for NaN/inf.

    In-memory arrays are checked once, up front, by the estimator; on-disk ones are
    never loaded whole, so each minibatch is checked as it is read. On-disk ``X`` is read
    through a :class:`~kdpipe._blocks.BlockReader` (chunk-aligned blocks, LRU).
    """

    def __init__(self, X: Any, y: np.ndarray | None = None, teacher_logits: Any = None):
        self._check_X = not isinstance(X, np.ndarray)
        super().__init__(BlockReader(X) if self._check_X else X, y, teacher_logits)
        self._check_logits = teacher_logits is not None and not isinstance(
            teacher_logits, np.ndarray
        )

    def fetch(self, rows: np.ndarray) -> Batch:
        batch = super().fetch(rows)
        if self._check_X:
            check_finite_rows(batch.X, rows, "X")
        if self._check_logits:
            check_finite_rows(batch.teacher_logits, rows, "teacher_logits")
        return batch


class CheckedRows:
    """A read-only view of an on-disk ``X`` whose row reads are checked for NaN/inf."""

    def __init__(self, X: Any):
        self.X = BlockReader(X)
        self.shape = tuple(X.shape)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        block = np.asarray(self.X[rows])
        check_finite_rows(block, rows, "X")
        return block
