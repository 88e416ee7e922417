"""Where training minibatches come from: one small interface, in memory or on disk.

The training engine only ever calls :meth:`RowSource.fetch` with an array of row
indices, so the rows can live in numpy arrays, zarr/h5py/dask arrays or a
:class:`kdpipe.LogitCache` without the engine knowing. :func:`prefetched` reads the
next minibatch in a background thread while the current one trains.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kdpipe._arrays import n_rows, take_rows

__all__ = ["Batch", "RowSource", "ArraySource", "prefetched"]


@dataclass(frozen=True)
class Batch:
    """One minibatch, as numpy arrays.

    Attributes
    ----------
    X : ndarray of shape (b, ...), float32
        Student inputs.
    y : ndarray of shape (b,), int64, or None
        Class codes, ``-1`` for unlabeled rows.
    teacher_logits : ndarray of shape (b, C) or (b, M, C), or None
        Raw teacher logits, when distilling.
    """

    X: np.ndarray
    y: np.ndarray | None
    teacher_logits: np.ndarray | None


class RowSource(Protocol):
    """Anything that returns the minibatch of given rows."""

    def __len__(self) -> int: ...

    def fetch(self, rows: np.ndarray) -> Batch: ...


class ArraySource:
    """Rows of aligned array-likes: inputs, optional labels, optional teacher logits.

    Parameters
    ----------
    X : array-like of shape (n, ...)
        numpy, zarr, h5py or dask array; read row by row, never loaded whole.
    y : ndarray of shape (n,), optional
        Integer class codes, ``-1`` for unlabeled rows (held in memory: small).
    teacher_logits : array-like of shape (n, C) or (n, M, C), optional
        numpy array, on-disk array or :class:`kdpipe.LogitCache` (or a subset of one).
    """

    def __init__(self, X: Any, y: np.ndarray | None = None, teacher_logits: Any = None):
        n = n_rows(X)
        for name, other in (("y", y), ("teacher_logits", teacher_logits)):
            if other is not None and n_rows(other) != n:
                raise ValueError(
                    f"X has {n} rows but {name} has {n_rows(other)}: they must be aligned"
                )
        self.X = X
        self.y = None if y is None else np.asarray(y, dtype=np.int64)
        self.teacher_logits = teacher_logits
        self._n = n

    def __len__(self) -> int:
        return self._n

    def fetch(self, rows: np.ndarray) -> Batch:
        """Read the given rows of every array."""
        X = take_rows(self.X, rows).astype(np.float32, copy=False)
        y = None if self.y is None else self.y[rows]
        logits = None
        if self.teacher_logits is not None:
            logits = take_rows(self.teacher_logits, rows).astype(np.float32, copy=False)
        return Batch(X=X, y=y, teacher_logits=logits)


_DONE = object()


def prefetched(
    source: RowSource, row_batches: Iterable[np.ndarray], depth: int = 2
) -> Iterator[Batch]:
    """Yield ``source.fetch(rows)`` for each batch of rows, reading ahead in a thread.

    Reading (disk, decompression) releases the GIL, so it overlaps with the training
    step on the current batch. An exception in the reader is raised here, in order.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for rows in row_batches:
                if stop.is_set():
                    return
                slots.put(source.fetch(rows))
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(exc)
            return
        slots.put(_DONE)

    reader = threading.Thread(target=read, name="kdpipe-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.01)
