"""Row-block readers over the inputs a cache can be built from, and label encoding.

A source reads rows ``[start, stop)`` as a numpy block and never loads the whole input.
Sources pickle small (a path and a dataset name for HDF5) so a distributed worker can
read its own rows.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kdpipe.errors import ClassMismatchError, InputError

__all__ = ["Source", "ArraySource", "H5Source", "DaskSource", "DatasetSource", "as_source", "encode_labels"]


class Source:
    """Rows of a transfer set; subclasses implement :meth:`read`."""

    shape: tuple[int, ...]
    dtype: np.dtype
    in_memory = False  # True when the driver holds the data (blocks are shipped to workers)

    @property
    def n_rows(self) -> int:
        return int(self.shape[0])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``[start, stop)`` as ``(x, y)``; ``y`` is None when the source has no labels."""
        raise NotImplementedError


class ArraySource(Source):
    """A numpy array (or memmap), or any array that slices to one (zarr)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.in_memory = isinstance(array, np.ndarray) and not isinstance(array, np.memmap)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        return np.asarray(self.array[start:stop]), None


class H5Source(Source):
    """An h5py dataset, reopened by file name in each process (handles never cross a fork)."""

    def __init__(self, dataset: Any) -> None:
        self.filename = dataset.file.filename
        self.name = dataset.name
        self.shape = tuple(int(s) for s in dataset.shape)
        self.dtype = np.dtype(dataset.dtype)
        self._file: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def read(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.filename, "r")
            self._pid = os.getpid()
        return self._file[self.name][start:stop], None


class DaskSource(Source):
    """A dask array; each block is computed with the synchronous scheduler inside its task."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        return np.asarray(self.array[start:stop].compute(scheduler="sync")), None


class DatasetSource(Source):
    """A ``torch.utils.data.Dataset`` whose items are tensors or ``(x, y)`` tuples."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        n = len(dataset)
        if n == 0:
            raise InputError("the transfer set is empty")
        first, _ = self._split(dataset[0])
        self.shape = (n, *first.shape)
        self.dtype = first.dtype

    @staticmethod
    def _split(item: Any) -> tuple[np.ndarray, Any]:
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        if y is not None and hasattr(y, "item"):
            y = y.item()
        return x, y

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        pairs = [self._split(self.dataset[i]) for i in range(start, stop)]
        x = np.stack([p[0] for p in pairs])
        ys = [p[1] for p in pairs]
        return x, (None if all(v is None for v in ys) else np.asarray([-1 if v is None else v for v in ys]))


def as_source(X: Any) -> Source:
    """Wrap ``X`` (numpy, zarr, h5py, dask, torch Dataset) in a :class:`Source`."""
    module = type(X).__module__.split(".")[0]
    if module == "h5py":
        source: Source = H5Source(X)
    elif module == "dask":
        source = DaskSource(X)
    elif hasattr(X, "shape") and hasattr(X, "dtype") and hasattr(X, "__getitem__"):
        source = ArraySource(X)
    elif hasattr(X, "__getitem__") and hasattr(X, "__len__"):
        source = DatasetSource(X)
    else:
        raise InputError(f"X must be an array or a torch Dataset, got {type(X).__name__}")
    if len(source.shape) < 1 or source.n_rows == 0:
        raise InputError(f"the transfer set is empty (shape {source.shape})")
    return source


def _is_unlabeled(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iuf":
        return values == -1
    if values.dtype.kind == "O":
        return np.fromiter((isinstance(v, (int, np.integer)) and v == -1 for v in values), bool, len(values))
    return np.zeros(len(values), bool)


def encode_labels(y: Any, classes: np.ndarray, start: int = 0) -> np.ndarray:
    """Codes of ``y`` in ``classes`` as int64; the label ``-1`` means unlabeled and stays ``-1``.

    ``start`` is the row number of ``y[0]``, used in error messages.
    """
    values = np.asarray(y)
    if values.ndim != 1:
        raise InputError(f"labels must be one-dimensional, got shape {values.shape}")
    codes = np.full(len(values), -1, dtype=np.int64)
    labeled = ~_is_unlabeled(values)
    if not labeled.any():
        return codes
    if classes.dtype.kind in "iuf" and np.any(classes == -1):
        raise ClassMismatchError("-1 marks unlabeled rows, so it cannot also be a class")
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    present = values[labeled]
    if classes.dtype.kind == "U":
        present = present.astype(str)
    uniques, inverse = np.unique(present, return_inverse=True)
    mapped = np.empty(len(uniques), dtype=np.int64)
    for j, u in enumerate(uniques.tolist()):
        if u not in lookup:
            rows = start + np.flatnonzero(labeled)[inverse == j][:10]
            raise ClassMismatchError(
                f"label {u!r} (rows {rows.tolist()}) is not one of the classes {classes.tolist()}"
            )
        mapped[j] = lookup[u]
    codes[labeled] = mapped[inverse]
    return codes
