"""Rows from a source: every read of rows of X, labels or teacher logits goes through here.

A source is a numpy array, a zarr, h5py or dask array, a :class:`LazyRows` view of one,
a :class:`kdpipe.LogitCache` (or a view of one), or, when a cache is built, a torch
``Dataset``. The path of one training minibatch, top to bottom:

1. :func:`prefetched` asks a :class:`MinibatchSource` for the rows of the next minibatch
   in a background thread, while the current one trains;
2. :meth:`MinibatchSource.fetch` calls :func:`take_rows` on X and on the teacher logits;
   from a cache of augmented views it picks one view per row for the epoch
   (:func:`choose_views`), regenerates it from the stored row, checks its digest
   against the one the teacher's input had, and reads that view's logits;
3. :func:`take_rows` indexes numpy arrays directly, and asks on-disk sources to
   ``read_rows``: :class:`CheckedReads` (which checks each block for NaN/inf) wrapped
   around a :class:`ChunkedReader`, a :class:`LazyRows` or a ``LogitCache``;
4. those gather the rows from a :class:`ChunkMemory` of whole storage chunks: zarr, h5py
   and the cache decompress (and the cache crc-checks) a whole chunk to return any row
   of it, so each chunk is loaded once and kept in a byte-bounded LRU, and a minibatch
   whose chunks are all held is one vectorized ``np.take``: no sorting at all.

The build side (:class:`Source`, :func:`as_source`) reads the transfer set in
``[start, stop)`` blocks, one storage chunk at a time.

Rows have any shape: ``X`` is ``(n, *sample_shape)``, such as ``(n, n_features)`` for
tables or ``(n, 1, 28, 28)`` for images, and every read keeps the sample shape (a student
or a torch teacher receives ``(b, *sample_shape)``; an MLP flattens in its own forward).

**The uint8 rule.** Rows of dtype ``uint8`` (images as they are stored) stay ``uint8``
wherever rows are stored, read, hashed and compared (chunk memory, the cache's row
digests and fingerprints, alignment checks), and become float32 ``x / 255``, in
``[0, 1]``, only when kdpipe hands a batch to a torch model: :func:`to_model_dtype`,
the one function that does it, for students (training and prediction) and torch
teachers alike. Other dtypes become float32 unscaled. So training on ``uint8`` images
gives bit for bit the model trained on ``images.astype(np.float32) / 255``, from a
quarter of the memory.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kdpipe.errors import InputError, TeacherOutputError
from kdpipe.sparse_targets import SampledTargets, SparseTargets, TopKTargets

__all__ = [
    "to_model_dtype",
    "positions",
    "n_rows",
    "take_rows",
    "is_lazy_array",
    "ChunkMemory",
    "ChunkedReader",
    "LazyRows",
    "index_rows",
    "check_finite_rows",
    "CheckedReads",
    "Batch",
    "RowSource",
    "MinibatchSource",
    "choose_views",
    "prefetched",
    "Source",
    "as_source",
]

DEFAULT_CHUNK_ROWS = 4096  # rows per block when an array does not say
DEFAULT_MEMORY_BYTES = 64 * 2**20  # chunk memory of one reader
_LAZY_PACKAGES = {"zarr", "h5py", "dask"}


# -- the dtype a torch model receives ---------------------------------------------------

_UINT8_SCALE = np.float32(255)


def to_model_dtype(x: np.ndarray) -> np.ndarray:
    """Rows as a torch model receives them: float32, with ``uint8`` scaled to ``x / 255``.

    The uint8 rule of kdpipe (see :mod:`kdpipe.rows`): ``uint8`` rows are pixel
    intensities, divided by 255 in float32 (correctly rounded, so the result equals
    ``x.astype(np.float32) / 255`` bit for bit); every other dtype is cast to float32
    unscaled (no copy when it is float32 already).

    Parameters
    ----------
    x : ndarray of shape (b, ...)
        Rows as stored.

    Returns
    -------
    ndarray of shape (b, ...), float32

    Examples
    --------
    >>> import numpy as np
    >>> from kdpipe.rows import to_model_dtype
    >>> to_model_dtype(np.array([[0, 51, 255]], dtype=np.uint8)).tolist()
    [[0.0, 0.20000000298023224, 1.0]]
    >>> to_model_dtype(np.array([[0, 51, 255]], dtype=np.int64)).tolist()
    [[0.0, 51.0, 255.0]]
    """
    if x.dtype == np.uint8:
        return np.divide(x, _UINT8_SCALE, dtype=np.float32)
    return x.astype(np.float32, copy=False)


# -- row positions ----------------------------------------------------------------------


def positions(key: Any, n: int) -> np.ndarray:
    """Row positions (int64, in ``[0, n)``) selected by a slice, int array/list or bool mask."""
    if isinstance(key, slice):
        return np.arange(n, dtype=np.int64)[key]
    idx = np.asarray(key)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise IndexError(f"boolean index of shape {idx.shape} does not match {n} rows")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise IndexError(
            f"rows must be a slice, a 1-d integer array or a boolean mask, got {key!r:.80}"
        )
    idx = idx.astype(np.int64, copy=False)
    low, high = idx.min(), idx.max()
    if low < -n or high >= n:
        raise IndexError(
            f"row index out of range for {n} rows: {idx[(idx < -n) | (idx >= n)][:5].tolist()}"
        )
    return np.where(idx < 0, idx + n, idx) if low < 0 else idx


def n_rows(array: Any) -> int:
    """Number of rows (length of the first axis) of an array-like."""
    shape = getattr(array, "shape", None)
    return int(shape[0]) if shape is not None else len(array)


def is_lazy_array(array: Any) -> bool:
    """Whether ``array`` is on disk or lazy (zarr, h5py, dask, a view or a cache): never load whole."""
    if isinstance(array, np.ndarray):
        return False
    if hasattr(array, "read_rows"):  # LazyRows, ChunkedReader, LogitCache
        return True
    return type(array).__module__.split(".", 1)[0] in _LAZY_PACKAGES


def is_resident(array: Any) -> bool:
    """Whether reading rows of ``array`` needs no storage: numpy, or a reader (a
    ``LogitCache``, :class:`LazyRows`) whose chunk memory holds every chunk."""
    return isinstance(array, np.ndarray) or bool(getattr(array, "resident", False))


def take_rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """Read ``array[rows]`` into memory, in the order of ``rows`` (which may repeat).

    numpy arrays are indexed directly; readers with chunk memory (:class:`LazyRows`,
    :class:`ChunkedReader`, a ``LogitCache``) gather from it. Other arrays (raw zarr,
    h5py, dask) are read once with sorted unique indices (h5py demands them), then
    reordered.
    """
    rows = np.asarray(rows, dtype=np.intp)
    if rows.ndim != 1:
        raise ValueError(f"row indices must be one-dimensional, got shape {rows.shape}")
    if isinstance(array, np.ndarray):
        return array[rows]
    if hasattr(array, "read_rows"):
        return array.read_rows(rows)
    unique, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(array[unique])[inverse]


# -- chunk memory -----------------------------------------------------------------------


class ChunkMemory:
    """Whole storage chunks of one array, kept in one slab, least recently used out first.

    Parameters
    ----------
    chunk_rows : int
        Rows per chunk (the last chunk may be shorter).
    row_shape : tuple of int
        Shape of one row.
    dtype : dtype
        Dtype the chunks are held in.
    max_bytes : int
        Memory for held chunks; 0 (or a chunk larger than this) holds none.
    n_chunks : int
        Number of chunks of the array.

    Notes
    -----
    Chunk ``c`` lives in slot ``slot_of[c]`` of the slab, so gathering rows whose chunks
    are all held is one ``np.take`` on ``slot * chunk_rows + row % chunk_rows``. When
    every chunk fits, chunk ``c`` takes slot ``c``: once all are held the slab is the
    array, and a gather is one ``np.take`` on the rows themselves, with no lock (nothing
    is evicted then). Thread-safe: the prefetch thread and the caller may read at once;
    chunks are loaded outside the lock.
    """

    def __init__(
        self, chunk_rows: int, row_shape: tuple[int, ...], dtype: Any, max_bytes: int, n_chunks: int
    ) -> None:
        self.chunk_rows = int(chunk_rows)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.chunk_bytes = self.chunk_rows * int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.max_bytes = int(max_bytes)
        self.n_slots = int(min(self.max_bytes // max(self.chunk_bytes, 1), n_chunks))
        self._slab: np.ndarray | None = None  # (n_slots * chunk_rows, *row_shape), on first use
        self._slot_of = np.full(n_chunks, -1, dtype=np.intp)  # chunk -> slot
        self._chunk_in = np.full(self.n_slots, -1, dtype=np.intp)  # slot -> chunk
        self._used = np.zeros(self.n_slots, dtype=np.int64)  # slot -> last use
        self._tick = 0
        self._lock = threading.Lock()
        self._everything_fits = self.n_slots == n_chunks  # then chunk c lives in slot c
        self._complete = False  # every chunk held (only when everything fits)

    def __len__(self) -> int:
        return int(np.count_nonzero(self._chunk_in >= 0))

    @property
    def nbytes(self) -> int:
        """Bytes of the chunks held now."""
        return len(self) * self.chunk_bytes

    @property
    def complete(self) -> bool:
        """Whether every chunk of the array is held: reads need no storage."""
        return self._complete

    def gather(
        self, rows: np.ndarray, load: Callable[[int], np.ndarray], out: np.ndarray
    ) -> np.ndarray:
        """Fill ``out[i]`` with row ``rows[i]``; ``load(c)`` reads chunk ``c`` when not held.

        Each chunk not held is loaded once per call, however many rows it gives.
        """
        if self._complete:
            self._take(rows, out)
            return out
        cr = self.chunk_rows
        chunks = rows // cr
        offsets = rows - chunks * cr
        with self._lock:
            slots = self._slot_of[chunks]
            held = slots >= 0
            if held.all():
                self._take(slots * cr + offsets, out)
                self._touch(slots)
                return out
            hit = np.flatnonzero(held)
            if len(hit):
                out[hit] = self._slab[slots[hit] * cr + offsets[hit]]  # type: ignore[index]
                self._touch(slots[hit])
        missed = np.flatnonzero(~held)
        missed = missed[np.argsort(chunks[missed], kind="stable")]
        for group in np.split(missed, np.flatnonzero(np.diff(chunks[missed])) + 1):
            chunk = int(chunks[group[0]])
            block = load(chunk)
            out[group] = block[offsets[group]]
            self._keep(chunk, block)
        return out

    def _take(self, flat: np.ndarray, out: np.ndarray) -> None:
        assert self._slab is not None
        if out.dtype == self._slab.dtype:
            np.take(self._slab, flat, axis=0, out=out, mode="clip")  # indices are valid: no check
        else:
            out[...] = self._slab[flat]

    def _touch(self, slots: np.ndarray) -> None:
        self._tick += 1
        self._used[slots] = self._tick

    def _keep(self, chunk: int, block: np.ndarray) -> None:
        if self.n_slots == 0:
            return
        with self._lock:
            if self._slot_of[chunk] >= 0:
                return
            if self._slab is None:
                self._slab = np.empty((self.n_slots * self.chunk_rows, *self.row_shape), self.dtype)
            if self._everything_fits:
                slot = chunk
            else:
                free = np.flatnonzero(self._chunk_in < 0)
                slot = int(free[0]) if len(free) else int(np.argmin(self._used))
                if self._chunk_in[slot] >= 0:
                    self._slot_of[self._chunk_in[slot]] = -1
            start = slot * self.chunk_rows
            self._slab[start : start + len(block)] = block
            self._slot_of[chunk], self._chunk_in[slot] = slot, chunk
            self._touch(np.asarray([slot]))
            self._complete = self._everything_fits and bool((self._slot_of >= 0).all())


# -- on-disk arrays -----------------------------------------------------------------------


def chunk_rows_of(array: Any) -> int:
    """Rows per storage chunk of a zarr, h5py or dask array (a default when unknown)."""
    chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)  # dask first
    if chunks and isinstance(chunks[0], (int, np.integer)) and int(chunks[0]) > 0:
        return int(chunks[0])
    return DEFAULT_CHUNK_ROWS


class _H5Dataset:
    """An h5py dataset by file and dataset name: pickles as that reference and reopens
    read-only in a new process (h5py handles cannot be pickled or cross a fork)."""

    def __init__(self, dataset: Any) -> None:
        self.filename = dataset.file.filename
        self.name = dataset.name
        self.shape = tuple(int(s) for s in dataset.shape)
        self.dtype = np.dtype(dataset.dtype)
        self.chunks = dataset.chunks
        self._dataset, self._pid = dataset, os.getpid()  # the caller's own handle, in its process

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None, "_pid": -1}

    def _open(self) -> Any:
        if self._dataset is None or self._pid != os.getpid() or not self._dataset.id.valid:
            import h5py

            self._dataset = h5py.File(self.filename, "r")[self.name]
            self._pid = os.getpid()
        return self._dataset

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._open()[key]


def _reference(array: Any) -> Any:
    """``array``, or a picklable reference to it where the array itself does not pickle."""
    if type(array).__module__.split(".", 1)[0] == "h5py":
        return _H5Dataset(array)
    return array


class ChunkedReader:
    """Rows of an on-disk array (zarr, h5py, dask), read in whole chunks held in memory.

    Parameters
    ----------
    array : zarr, h5py or dask array (or anything sliceable along rows)
    memory_bytes : int, default=64 MiB
        Chunk memory of this reader.
    chunk_rows : int, optional
        Rows per block read; default: the array's chunk rows.
    """

    def __init__(
        self, array: Any, memory_bytes: int = DEFAULT_MEMORY_BYTES, chunk_rows: int | None = None
    ):
        self.array = array if isinstance(array, _H5Dataset) else _reference(array)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = int(chunk_rows or chunk_rows_of(array))
        self.memory_bytes = int(memory_bytes)
        n_chunks = -(-self.shape[0] // self.chunk_rows)
        self.memory = ChunkMemory(
            self.chunk_rows, self.shape[1:], self.dtype, self.memory_bytes, n_chunks
        )

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def resident(self) -> bool:
        """Whether every row is in chunk memory (see :func:`is_resident`)."""
        return self.memory.complete

    def _load(self, chunk: int) -> np.ndarray:
        start = chunk * self.chunk_rows
        return np.asarray(self.array[start : start + self.chunk_rows])

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]`` as numpy (rows in ``[0, n)``, any order, may repeat)."""
        rows = np.asarray(rows, dtype=np.intp)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        return self.memory.gather(rows, self._load, out)

    __getitem__ = read_rows

    def __getstate__(self) -> dict[str, Any]:  # the chunk memory stays behind
        return {
            "array": self.array,
            "memory_bytes": self.memory_bytes,
            "chunk_rows": self.chunk_rows,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        ChunkedReader.__init__(self, state["array"], state["memory_bytes"], state["chunk_rows"])


def _is_full(part: Any) -> bool:
    return part is Ellipsis or (isinstance(part, slice) and part == slice(None))


def index_rows(view: Any, key: Any) -> Any:
    """``view[key]`` for a lazy row view (one with ``len``, ``take`` and ``read_rows``).

    A key that picks whole rows gives another lazy view (``view.take``); one row, or a
    key that also indexes within rows, gives numpy.
    """
    rest: tuple[Any, ...] = ()
    if isinstance(key, tuple):
        key, rest = (key[0], key[1:]) if key else (slice(None), ())
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        row = view.read_rows(positions([key], len(view)))[0]
        return row[rest] if rest else row
    subset = view.take(key)
    if all(_is_full(part) for part in rest):
        return subset
    return np.asarray(subset)[(slice(None), *rest)]


class LazyRows:
    """A lazy row view of an on-disk ``X``, for scikit-learn's model selection.

    ``GridSearchCV``, ``cross_val_score``, ``cross_validate`` and ``Pipeline`` index ``X``
    by rows (``X[indices, ...]``) and, with ``n_jobs > 1``, pickle it to worker
    processes. A raw zarr array rejects that indexing and an h5py dataset does not
    pickle; wrap either (or a dask array) in ``LazyRows``: indexing returns another
    view, reading nothing, and a view pickles as a reference (the zarr store, or the
    HDF5 file and dataset name, reopened read-only; plus the row numbers), never as data.
    :class:`kdpipe.DistilledClassifier` reads a view one minibatch at a time through
    chunk memory; ``np.asarray(view)`` reads its rows.

    Rows have any shape (images ``(n, 1, 28, 28)`` index to views of that sample shape)
    and keep their dtype (``uint8`` stays ``uint8``: the uint8 rule applies when a batch
    reaches a torch model, :func:`to_model_dtype`).

    Parameters
    ----------
    array : zarr, h5py or dask array, numpy array, or LazyRows
    memory_bytes : int, default=64 MiB
        Chunk memory shared by this view and the views indexed from it (per process).

    Examples
    --------
    >>> import numpy as np, zarr
    >>> from kdpipe import LazyRows
    >>> z = zarr.create_array(store={}, shape=(6, 2), chunks=(4, 2), dtype="f4")
    >>> z[:] = np.arange(12).reshape(6, 2)
    >>> view = LazyRows(z)[[5, 0]]
    >>> view.shape, np.asarray(view)[:, 0].tolist()
    ((2, 2), [10.0, 0.0])
    """

    _reader: ChunkedReader
    _rows: np.ndarray | None  # None: every row, in order

    def __init__(self, array: Any, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        if isinstance(array, LazyRows):
            self._reader, self._rows = array._reader, array._rows
        else:
            self._reader, self._rows = ChunkedReader(array, memory_bytes), None

    @classmethod
    def _view(cls, reader: ChunkedReader, rows: np.ndarray | None) -> LazyRows:
        view = cls.__new__(cls)
        view._reader, view._rows = reader, rows
        return view

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._reader.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._reader.dtype

    @property
    def ndim(self) -> int:
        return len(self._reader.shape)

    @property
    def rows(self) -> np.ndarray:
        """Row numbers of this view in the wrapped array."""
        return (
            np.arange(self._reader.shape[0], dtype=np.int64) if self._rows is None else self._rows
        )

    def __len__(self) -> int:
        return self._reader.shape[0] if self._rows is None else len(self._rows)

    def __repr__(self) -> str:
        of = "" if self._rows is None else f" of {self._reader.shape[0]} rows"
        return f"LazyRows({type(self._reader.array).__name__}, shape={self.shape}{of})"

    def take(self, indices: Any) -> LazyRows:
        """The view of the rows at ``indices`` (positions in this view)."""
        at = positions(indices, len(self))
        return LazyRows._view(self._reader, at if self._rows is None else self._rows[at])

    def __getitem__(self, key: Any) -> Any:
        return index_rows(self, key)

    @property
    def resident(self) -> bool:
        """Whether every row is in chunk memory (see :func:`is_resident`)."""
        return self._reader.resident

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows at positions ``rows`` of this view, as numpy."""
        return self._reader.read_rows(rows if self._rows is None else self._rows[rows])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read_rows(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"reader": self._reader, "rows": self._rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._reader, self._rows = state["reader"], state["rows"]


# -- minibatches --------------------------------------------------------------------------


def check_finite_rows(block: np.ndarray, rows: np.ndarray, name: str) -> None:
    """Raise if ``block`` (rows ``rows`` of ``name``) holds NaN or inf, naming those rows."""
    if block.dtype.kind in "biu":  # integers are finite
        return
    finite = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
    if finite.all():
        return
    bad = sorted(set(np.asarray(rows)[~finite].tolist()))
    error = TeacherOutputError if name == "teacher_logits" else InputError
    listed = f"rows {bad}" if len(bad) <= 10 else f"rows {bad[:10]} and {len(bad) - 10} more"
    raise error(
        f"{name} holds NaN or inf in {listed} (indices into the {name} passed to this call)"
    )


@dataclass(frozen=True)
class Batch:
    """One minibatch, as numpy arrays.

    Attributes
    ----------
    X : ndarray of shape (b, *sample_shape), float32
        Student inputs, as :func:`to_model_dtype` makes them.
    y : ndarray of shape (b,), int64, or None
        Class codes, ``-1`` for unlabeled rows.
    teacher_logits : ndarray of shape (b, C) or (b, M, C), sparse targets, or None
        Raw teacher logits, when distilling; the rows of a sparse cache are
        :class:`~kdpipe.sparse_targets.TopKTargets` or
        :class:`~kdpipe.sparse_targets.SampledTargets`.
    """

    X: np.ndarray
    y: np.ndarray | None
    teacher_logits: np.ndarray | SparseTargets | None


class RowSource(Protocol):
    """Anything that returns the minibatch of given rows."""

    def __len__(self) -> int: ...

    def fetch(self, rows: np.ndarray) -> Batch: ...


class CheckedReads:
    """Rows of an on-disk array, each read checked for NaN/inf (naming the bad rows).

    In-memory arrays are checked once, up front, by the estimator; on-disk ones are
    never loaded whole, so each block is checked as it is read.

    Parameters
    ----------
    array : zarr, h5py or dask array, LazyRows, or a LogitCache (or a view of one)
    name : str
        What the array is, for error messages: ``"X"`` or ``"teacher_logits"``.
    """

    def __init__(self, array: Any, name: str):
        self.array = _reader(array)
        self.name = name
        self.shape = tuple(array.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def resident(self) -> bool:
        """Whether every row is in memory (see :func:`is_resident`)."""
        return is_resident(self.array)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        block = take_rows(self.array, rows)
        check_finite_rows(block, rows, self.name)
        return block


def choose_views(seed: int, epoch: int, rows: np.ndarray, n_views: int) -> np.ndarray:
    """The view each row trains on in ``epoch``: uniform in ``[0, n_views)``, from
    ``SeedSequence([seed, epoch, row])`` alone (any process, worker or resumed run picks the same).

    Examples
    --------
    >>> import numpy as np
    >>> views = choose_views(0, 1, np.arange(6), 4)
    >>> views.shape, bool(((views >= 0) & (views < 4)).all())
    ((6,), True)
    """
    from kdpipe.augment import stream_words  # numpy only: no torch here

    words = stream_words(
        [int(seed) % 2**32, int(epoch) % 2**32, np.asarray(rows, dtype=np.int64)], 1
    )[:, 0]
    return ((words.astype(np.uint64) * np.uint64(n_views)) >> np.uint64(32)).astype(np.intp)


CHECKED_BATCHES = 4  # minibatches of a fit whose every regenerated view is checked
SAMPLED_VIEWS = 16  # views checked per minibatch after those


class MinibatchSource:
    """Rows of aligned inputs, labels and teacher logits, read one minibatch at a time.

    Parameters
    ----------
    X : array-like of shape (n, *sample_shape)
        numpy, or on disk (zarr, h5py, dask, :class:`LazyRows`): read through chunk
        memory and checked for NaN/inf per minibatch (:class:`CheckedReads`). Batches
        keep the sample shape and go through :func:`to_model_dtype` (uint8 -> x / 255).
    y : ndarray of shape (n,), optional
        Integer class codes, ``-1`` for unlabeled rows (held in memory: small).
    teacher_logits : array-like of shape (n, C) or (n, M, C), optional
        numpy, an on-disk array, or a :class:`kdpipe.LogitCache` (or a view of one);
        on-disk arrays are checked per minibatch too, a cache is not: ``build_cache``
        stores finite logits only and every chunk read is crc-checked.
    view_seed : int, default=0
        With a cache of augmented views (``teacher_logits.views`` set): each epoch
        (:meth:`set_epoch`) row ``i`` trains on view :func:`choose_views` ``(view_seed,
        epoch, i)``, regenerated from its stored row (``teacher_logits.augment_rows``) and
        paired with that view's logits. The digests of the regenerated inputs are checked
        against the stored ones (:meth:`kdpipe.LogitCache.check_views`): every row of the
        first ``CHECKED_BATCHES`` minibatches, then ``SAMPLED_VIEWS`` rows of each; a
        mismatch is a :class:`~kdpipe.errors.RowMismatchError` naming row and view.
    """

    def __init__(
        self, X: Any, y: np.ndarray | None = None, teacher_logits: Any = None, *, view_seed: int = 0
    ):
        n = n_rows(X)
        for name, other in (("y", y), ("teacher_logits", teacher_logits)):
            if other is not None and n_rows(other) != n:
                raise ValueError(
                    f"X has {n} rows but {name} has {n_rows(other)}: they must be aligned"
                )
        self.X = _checked(X, "X")
        self.y = None if y is None else np.asarray(y, dtype=np.int64)
        self.teacher_logits = (
            None if teacher_logits is None else _checked(teacher_logits, "teacher_logits")
        )
        self._n = n
        self.views = teacher_logits if getattr(teacher_logits, "views", None) is not None else None
        self.view_seed = int(view_seed)
        self.epoch = 0
        self._fetches = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick every row's view for ``epoch`` (a cache of augmented views; otherwise nothing changes)."""
        self.epoch = int(epoch)

    def views_of(self, rows: np.ndarray) -> np.ndarray | None:
        """The views ``rows`` train on this epoch; None without a cache of views."""
        if self.views is None:
            return None
        return choose_views(self.view_seed, self.epoch, rows, self.views.n_views)

    def __len__(self) -> int:
        return self._n

    @property
    def resident(self) -> bool:
        """Whether every row of every array is in memory: a read needs no storage."""
        return is_resident(self.X) and (
            self.teacher_logits is None or is_resident(self.teacher_logits)
        )

    def fetch(self, rows: np.ndarray) -> Batch:
        """Read the given rows of every array (of a views cache: this epoch's view of each row)."""
        x = take_rows(self.X, rows)
        views = self.views_of(rows)
        if views is not None:
            assert self.views is not None
            x = self.views.augment_rows(
                x, rows, views
            )  # in the stored dtype, as the teacher saw it
            self._fetches += 1
            if self._fetches <= CHECKED_BATCHES or len(rows) <= SAMPLED_VIEWS:
                self.views.check_views(x, rows, views)
            else:  # a sample: which rows, a function of the rows and epoch (no shared RNG state)
                pick = np.random.default_rng(
                    [self.view_seed % 2**32, self.epoch, self._fetches]
                ).choice(len(rows), SAMPLED_VIEWS, replace=False)
                self.views.check_views(x[pick], rows[pick], views[pick])
        X = to_model_dtype(x)  # (b, *sample_shape)
        logits = None
        if views is not None:
            assert self.views is not None
            logits = self.views.read_views(rows, views)
        elif self.teacher_logits is not None:
            logits = take_rows(self.teacher_logits, rows)
            if not isinstance(
                logits, (TopKTargets, SampledTargets)
            ):  # a sparse cache's rows stay sparse
                logits = logits.astype(np.float32, copy=False)
        return Batch(X=X, y=None if self.y is None else self.y[rows], teacher_logits=logits)


def _checked(array: Any, name: str) -> Any:
    """On-disk arrays get a NaN/inf check per read, unless finite by construction (a cache)."""
    if isinstance(array, np.ndarray) or getattr(array, "finite", False):
        return array
    return CheckedReads(array, name)


def _reader(array: Any) -> Any:
    """numpy and readers with chunk memory as they are; other on-disk arrays get one."""
    if isinstance(array, np.ndarray) or hasattr(array, "read_rows"):
        return array
    if is_lazy_array(array):
        return ChunkedReader(array)
    return np.asarray(array)


_DONE = object()


def prefetched(
    source: RowSource, row_batches: Iterable[np.ndarray], depth: int = 2
) -> Iterator[Batch]:
    """Yield ``source.fetch(rows)`` for each batch of rows, reading ahead in a thread.

    Reading (disk, decompression, numpy copies) releases the GIL, so it overlaps with
    the training step on the current batch; an exception in the reader is raised here,
    in order. A source whose rows are all in memory (``source.resident``: numpy arrays,
    a cache whose chunks are all in chunk memory, so from the second epoch on) is read
    inline: gathering one minibatch costs tens of microseconds, less than a thread
    competing with torch's for the cores costs the step (benchmarks/bench_rows.py).
    """
    if getattr(source, "resident", False):
        for rows in row_batches:
            yield source.fetch(rows)
        return
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for rows in row_batches:
                if stop.is_set():
                    return
                slots.put(source.fetch(rows))
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
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


# -- the build side: the transfer set in [start, stop) blocks ------------------------------


class Source:
    """Rows of a transfer set for ``build_cache``; subclasses implement :meth:`read`.

    Sources pickle small (a zarr array, an HDF5 file and dataset name) so a distributed
    worker reads its own rows.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    in_memory = False  # True when the driver holds the data (blocks are shipped to workers)

    @property
    def n_rows(self) -> int:
        return int(self.shape[0])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``[start, stop)`` as ``(x, y)``; ``y`` is None when the source has no labels."""
        raise NotImplementedError


class ArrayBlocks(Source):
    """A numpy array (or memmap), a zarr or h5py array: anything that slices to numpy."""

    def __init__(self, array: Any) -> None:
        self.array = _reference(array)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.in_memory = isinstance(array, np.ndarray) and not isinstance(array, np.memmap)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        return np.asarray(self.array[start:stop]), None


class DaskBlocks(Source):
    """A dask array; each block is computed with the synchronous scheduler inside its task."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, None]:
        return np.asarray(self.array[start:stop].compute(scheduler="sync")), None


class DatasetBlocks(Source):
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
        if all(v is None for v in ys):
            return x, None
        return x, np.asarray([-1 if v is None else v for v in ys])


def as_source(X: Any) -> Source:
    """Wrap a transfer set (numpy, zarr, h5py, dask, LazyRows, torch Dataset) in a :class:`Source`."""
    if isinstance(X, LazyRows):
        X = X._reader.array if X._rows is None else X  # a view slices through its reads
    if type(X).__module__.split(".", 1)[0] == "dask":
        source: Source = DaskBlocks(X)
    elif isinstance(X, LazyRows):
        source = ArrayBlocks(_ViewSlices(X))
    elif hasattr(X, "shape") and hasattr(X, "dtype") and hasattr(X, "__getitem__"):
        source = ArrayBlocks(X)
    elif hasattr(X, "__getitem__") and hasattr(X, "__len__"):
        source = DatasetBlocks(X)
    else:
        raise InputError(f"X must be an array or a torch Dataset, got {type(X).__name__}")
    if len(source.shape) < 1 or source.n_rows == 0:
        raise InputError(f"the transfer set is empty (shape {source.shape})")
    if source.dtype.kind not in "biuf":
        raise InputError(
            f"X has dtype {source.dtype}; a transfer set holds numbers (bool, integer or float): "
            "convert it first, e.g. X.astype(np.float32)"
        )
    return source


class _ViewSlices:
    """``view[start:stop]`` of a :class:`LazyRows` as numpy, for :class:`ArrayBlocks`."""

    def __init__(self, view: LazyRows) -> None:
        self.view, self.shape, self.dtype = view, view.shape, view.dtype

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.view.read_rows(np.arange(len(self.view))[key])
