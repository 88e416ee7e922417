"""``LogitCache``: lazy, verified reads of a finished logit cache and of its row subsets."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from kdpipe.cache.durable import is_temp_name
from kdpipe.cache.location import Location, is_remote, parse_location
from kdpipe.cache.manifest import ChunkRecord, Manifest, chunk_bounds, read_manifest, read_records
from kdpipe.cache.storage import ChunkStore, checksum, open_store, read_checked
from kdpipe.cache.verify import VerifyReport, verify_chunks
from kdpipe.errors import (
    CacheIncompleteError,
    CacheMismatchError,
    CacheNotFoundError,
    InputError,
    RowMismatchError,
)
from kdpipe.rows import ChunkMemory, index_rows, positions, take_rows

if TYPE_CHECKING:
    from kdpipe.losses import Combine

__all__ = ["LogitCache"]

DEFAULT_CHUNK_CACHE_BYTES = 64 * 2**20


class _Handle:
    """One process's access to one cache: lazily opened store, verified chunk reads.

    Every chunk read is checked against its completion record (crc32c), so a missing,
    unfinished or corrupt chunk raises instead of returning fill values.
    """

    def __init__(
        self, root: Location, manifest: Manifest, records: dict[int, ChunkRecord], cache_bytes: int
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.records = records
        self.cache_bytes = cache_bytes
        self._store: ChunkStore | None = None
        m = manifest
        self.memory = ChunkMemory(
            m.chunk_rows, m.row_shape, m.stored_dtype, cache_bytes, m.n_chunks
        )
        self._labels: np.ndarray | None = None
        self._digests: np.ndarray | None = None
        self._view_digests: np.ndarray | None = None
        self.views = manifest.views_config()  # a user augmentation: its record, until with_augment

    def view_digests(self) -> np.ndarray | None:
        """All view digests ``(n, V)`` (uint64), read once; None without views."""
        if self.manifest.views is None:
            return None
        if self._view_digests is None:
            parts = [
                read_checked(self.store, self.record(i), "views")
                for i in range(self.manifest.n_chunks)
            ]
            self._view_digests = np.concatenate(parts).astype(np.uint64, copy=False)
        return self._view_digests

    @property
    def store(self) -> ChunkStore:
        if self._store is None:
            self._store = open_store(self.root, self.manifest)
        return self._store

    def record(self, index: int) -> ChunkRecord:
        record = self.records.get(index)
        if record is None:
            start, stop = chunk_bounds(index, self.manifest.chunk_rows, self.manifest.n_rows)
            raise CacheIncompleteError(
                f"chunk {index} (rows {start}-{stop - 1}) of the cache at {self.root} is not complete; "
                "rerun build_cache with the same arguments to finish it"
            )
        return record

    def read_chunk(self, index: int) -> np.ndarray:
        """Chunk ``index`` of the logits in the storage dtype, verified against its record."""
        return read_checked(self.store, self.record(index), "logits")

    def row_digests(self) -> np.ndarray | None:
        """All row digests (uint64), read once; None in a format-1 cache."""
        if not self.manifest.has_row_digests:
            return None
        if self._digests is None:
            parts = [
                read_checked(self.store, self.record(i), "digests")
                for i in range(self.manifest.n_chunks)
            ]
            self._digests = np.concatenate(parts).astype(np.uint64, copy=False)
        return self._digests

    def labels(self) -> np.ndarray:
        """All label codes (int64, -1 unlabeled), read once."""
        if self._labels is None:
            parts = [
                read_checked(self.store, self.record(i), "labels")
                for i in range(self.manifest.n_chunks)
            ]
            self._labels = np.concatenate(parts).astype(np.int64, copy=False)
        return self._labels


def _is_user(augment: Any) -> bool:
    """Whether ``augment`` (or a step of it) is a user's callable, not rebuilt from the manifest."""
    from kdpipe.augment import Compose, Function, GlobalRandom

    if isinstance(augment, Compose):
        return any(_is_user(s) for s in augment.steps)
    return isinstance(augment, (Function, GlobalRandom))


def _soft_targets_block(logits: np.ndarray, temperature: float, combine: Combine) -> np.ndarray:
    """``(rows, members, classes)`` -> ``(rows, classes)``, by :func:`kdpipe.losses.soft_targets`."""
    import torch  # only where soft targets are computed: unpickling a cache stays torch-free

    from kdpipe.losses import soft_targets

    return soft_targets(
        torch.from_numpy(np.ascontiguousarray(logits)), temperature, combine
    ).numpy()


class LogitCache:
    """A finished logit cache, or a lazy row subset of one.

    Array-like of shape ``(n, members, classes)``: ``np.asarray(cache)`` reads the float32
    logits. Indexing rows (``cache[idx]``, ``cache[mask]``, ``cache[a:b]``,
    ``cache[idx, ...]``, :meth:`take`) returns another lazy ``LogitCache`` that reads only
    the chunks it touches, once per chunk. Pickling keeps only the path and the rows.

    Use :meth:`open` to create one; see :func:`kdpipe.build_cache` to build one.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from kdpipe import LogitCache, build_cache
    >>> X = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> def teacher(batch):
    ...     return np.concatenate([batch, -batch], axis=1)
    >>> teacher.kdpipe_fingerprint = "plus-minus"
    >>> path = tempfile.mkdtemp() + "/cache.zarr"
    >>> _ = build_cache(teacher, X, path, progress=False)
    >>> cache = LogitCache.open(path)
    >>> cache.shape, cache.n_members, cache.n_classes
    ((6, 1, 4), 1, 4)
    >>> subset = cache[[4, 1]]  # lazy: reads only the chunks it touches
    >>> np.asarray(subset)[:, 0, :2].tolist()
    [[8.0, 9.0], [2.0, 3.0]]
    >>> cache.soft_targets(1e6)[:1].compute().round(2).tolist()  # T -> inf: uniform
    [[0.25, 0.25, 0.25, 0.25]]
    """

    ndim = 3
    dtype = np.dtype(np.float32)
    # build_cache refuses NaN/inf (and float16 overflow) before a chunk is written, and
    # every read is crc-checked: readers need not check the values again
    finite = True

    def __init__(self, handle: _Handle, rows: np.ndarray | None = None) -> None:
        self._handle = handle
        self._rows = rows  # absolute row numbers; None means every row in order

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | Location,
        *,
        allow_incomplete: bool = False,
        chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES,
        storage_options: dict[str, Any] | None = None,
    ) -> LogitCache:
        """Open the cache at ``path``.

        Parameters
        ----------
        path : path or URL
            A cache folder, or a URL in object storage (``"s3://bucket/run.zarr"``).
        allow_incomplete : bool
            Open an unfinished cache (reading a missing chunk still raises).
        chunk_cache_bytes : int
            Memory for recently read chunks (per process); 0 disables it. In object
            storage every chunk read is a request: chunk memory saves most of them.
        storage_options : dict, optional
            Options of the URL's fsspec file system (``endpoint_url``, ``profile``...).
            A pickled cache carries them (a worker reaches the same store); nothing
            kdpipe prints or writes shows their secrets.

        Raises
        ------
        CacheNotFoundError
            There is no cache at ``path`` (also a ``FileNotFoundError``).
        CacheIncompleteError
            The build has not finished (unless ``allow_incomplete``).
        CacheCorruptError
            The manifest cannot be decoded, or a field of it is nonsense or disagrees with
            the stores (rows, chunk rows, dtype, members, classes, chunk records): the
            message names the field.
        """
        root = parse_location(path, storage_options)
        if not is_remote(root) and not root.is_dir():  # in object storage, the manifest read tells
            what = "is a file" if root.exists() else "does not exist"
            raise CacheNotFoundError(
                f"no kdpipe logit cache at {root}: it {what} (a cache is a folder)"
            )
        manifest = read_manifest(root)
        if manifest is None:
            where = (
                "there is no manifest.json under it"
                if is_remote(root)
                else "the folder has no manifest.json"
            )
            raise CacheNotFoundError(f"no kdpipe logit cache at {root}: {where}")
        store = open_store(root, manifest)
        store.check_layout()  # every manifest field against the stores
        if manifest.complete:
            records = {r.index: r for r in manifest.chunks}
        else:
            records = read_records(root, manifest)
            if not allow_incomplete:
                raise CacheIncompleteError(
                    f"the cache at {root} is not finished: {len(records)} of {manifest.n_chunks} chunks "
                    "complete; rerun build_cache with the same arguments to finish it"
                )
        kind: type[LogitCache] = cls
        if manifest.sparse is not None and cls is LogitCache:
            if manifest.sparse.get("kind") == "lowrank":
                from kdpipe.cache.lowrank_reader import LowRankLogitCache

                kind = LowRankLogitCache
            else:
                from kdpipe.cache.sparse_reader import SparseLogitCache

                kind = SparseLogitCache
        handle = _Handle(root, manifest, records, int(chunk_cache_bytes))
        handle._store = store
        return kind(handle)

    # -- pickling: the path (or URL and storage options) and the rows only; the store
    # reopens in the new process
    def __getstate__(self) -> dict[str, Any]:
        h = self._handle
        return {
            "path": h.root if is_remote(h.root) else str(h.root),
            "rows": self._rows,
            "allow_incomplete": not h.manifest.complete,
            "chunk_cache_bytes": h.cache_bytes,
            # a user augmentation given by with_augment travels with the cache (pickled as the
            # caller's object); built-ins are rebuilt from the manifest
            "augment": None
            if h.views is None or not _is_user(h.views.augment)
            else h.views.augment,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        opened = LogitCache.open(
            state["path"],
            allow_incomplete=state["allow_incomplete"],
            chunk_cache_bytes=state["chunk_cache_bytes"],
        )
        if state.get("augment") is not None:
            # checked when it was first given; unpickled, its code hash can differ (the
            # globals a function from __main__ sees there), not what it computes
            opened = opened._bound(state["augment"])
        self._handle = opened._handle
        self._rows = state["rows"]

    def __dask_tokenize__(self) -> Any:
        m = self._handle.manifest
        # a stable hash (Python's hash of bytes is salted per process)
        rows = (
            None
            if self._rows is None
            else (len(self._rows), hashlib.blake2b(self._rows.tobytes()).hexdigest())
        )
        return ("kdpipe.LogitCache", str(self._handle.root), m.created, m.data_fingerprint, rows)

    # -- metadata
    @property
    def path(self) -> Location:
        return self._handle.root

    @property
    def manifest(self) -> Manifest:
        return self._handle.manifest

    @property
    def n_members(self) -> int:
        return self.manifest.n_members

    @property
    def n_classes(self) -> int:
        return self.manifest.n_classes

    @property
    def classes(self) -> np.ndarray:
        """Class labels in logit order."""
        return self.manifest.class_array()

    @property
    def rows(self) -> np.ndarray:
        """Row numbers of this view in the full cache."""
        return np.arange(self.manifest.n_rows, dtype=np.int64) if self._rows is None else self._rows

    def __len__(self) -> int:
        return self.manifest.n_rows if self._rows is None else len(self._rows)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), self.n_members, self.n_classes)

    def __repr__(self) -> str:
        view = "" if self._rows is None else f" (subset of {self.manifest.n_rows})"
        return (
            f"LogitCache({str(self.path)!r}, shape={self.shape}{view}, dtype={self.manifest.dtype})"
        )

    @property
    def labels(self) -> np.ndarray:
        """Label codes, int64; -1 marks unlabeled rows."""
        labels = self._handle.labels()
        return labels.copy() if self._rows is None else labels[self._rows]

    @property
    def row_digests(self) -> np.ndarray | None:
        """uint64 digests of the input rows of this view (see :func:`kdpipe.cache.fingerprint.row_digests`).

        Computed in the dtype ``manifest.data_dtype``; read once per handle. None for a
        cache built before kdpipe stored them (format 1).
        """
        digests = self._handle.row_digests()
        if digests is None:
            return None
        return digests.copy() if self._rows is None else digests[self._rows]

    # -- row selection
    def __getitem__(self, key: Any) -> Any:
        return index_rows(self, key)

    def take(self, indices: Any) -> LogitCache:
        """Lazy subset of the rows at ``indices`` (positions in this view)."""
        at = positions(indices, len(self))
        rows = at if self._rows is None else self._rows[at]
        return type(self)(self._handle, rows)

    # -- reading
    @property
    def resident(self) -> bool:
        """Whether every chunk is in chunk memory: reads need no storage."""
        return self._handle.memory.complete

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self._refuse_views("np.asarray(cache)")
        out = self._read(self._rows)
        return out if dtype is None else out.astype(dtype, copy=False)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 logits of the rows at positions ``rows`` of this view."""
        self._refuse_views("read_rows(rows)")
        return self._read(rows if self._rows is None else self._rows[rows])

    # -- views
    def _refuse_views(self, what: str) -> None:
        if self.manifest.views is not None:
            raise InputError(
                f"the cache at {self.path} holds {self.n_views} views of every row, so {what} is "
                "ambiguous: read_views(rows, views) gives the logits of chosen views, and "
                "DistilledClassifier.fit(X, y, teacher_logits=cache) trains on a view per row and epoch"
            )

    @property
    def views(self) -> Any:
        """The :class:`~kdpipe.cache.views.Views` the cache was built with; None without views."""
        return self._handle.views

    @property
    def n_views(self) -> int:
        """Views per row (1 without views)."""
        return self.manifest.n_views

    @property
    def view_digests(self) -> np.ndarray | None:
        """uint64 digests ``(n, V)`` of the augmented inputs the teacher scored; None without views."""
        digests = self._handle.view_digests()
        if digests is None:
            return None
        return digests.copy() if self._rows is None else digests[self._rows]

    def _views_at(self, rows: np.ndarray, views: Any) -> tuple[np.ndarray, np.ndarray]:
        """Cache rows of positions ``rows`` of this view, and checked view numbers."""
        rows = np.asarray(rows, dtype=np.intp)
        views = np.broadcast_to(np.asarray(views, dtype=np.intp), rows.shape)
        if views.size and (views.min() < 0 or views.max() >= self.n_views):
            raise IndexError(
                f"views must lie in [0, {self.n_views}), got {np.unique(views[(views < 0) | (views >= self.n_views)])[:5].tolist()}"
            )
        return (rows if self._rows is None else self._rows[rows]), views

    def read_views(self, rows: np.ndarray, views: Any) -> np.ndarray:
        """float32 logits ``(len(rows), M, C)`` of view ``views[i]`` of the row at position ``rows[i]``.

        A cache without views has view 0 only.
        """
        at, views = self._views_at(rows, views)
        if self.manifest.views is None:
            return self._read(at)
        m = self.manifest
        whole = self._handle.memory.gather(
            at, self._handle.read_chunk, np.empty((len(at), *m.row_shape), np.float32)
        )
        return whole[np.arange(len(at)), views]

    def with_augment(self, augment: Any) -> LogitCache:
        """This cache, replaying its views with ``augment``: the user augmentation it was built with.

        kdpipe never runs code it reads from a cache, so a cache built with a callable
        augmentation (:class:`kdpipe.augment.Function`, :class:`~kdpipe.augment.GlobalRandom`)
        replays its views only once given the same one; its fingerprint must match.

        Raises
        ------
        CacheMismatchError
            ``augment`` is not the augmentation the cache recorded.
        """
        from kdpipe.augment import parse_augment
        from kdpipe.cache.views import comparable

        h = self._handle
        if h.views is None:
            raise InputError(f"the cache at {self.path} has no views to augment")
        given = parse_augment(augment)
        recorded = h.manifest.views["augment"] if h.manifest.views else None
        if given is None or comparable(given.to_dict()) != comparable(recorded):
            raise CacheMismatchError(
                f"the cache at {self.path} was built with the augmentation {recorded}, not "
                f"{None if given is None else given.to_dict()}"
            )
        return self._bound(given)

    def _bound(self, augment: Any) -> LogitCache:
        from kdpipe.cache.views import Views

        h = self._handle
        handle = _Handle(h.root, h.manifest, h.records, h.cache_bytes)
        handle.views = Views(count=h.views.count, augment=augment, seed=h.views.seed)
        return type(self)(handle, self._rows)

    def augment_rows(self, x: np.ndarray, rows: np.ndarray, views: Any) -> np.ndarray:
        """The inputs the teacher scored for view ``views[i]`` of the row at position ``rows[i]``,
        given that row's stored content ``x[i]`` (in the stored dtype). Without views: ``x``."""
        at, views = self._views_at(rows, views)
        if self.views is None:
            return x
        return self.views.apply(np.asarray(x), at, views)

    def replay(self, X: Any, rows: Any, views: Any) -> np.ndarray:
        """Exactly the inputs the teacher scored: view ``views[i]`` of the row at position ``rows[i]``.

        Parameters
        ----------
        X : array-like of shape ``(len(self), *sample_shape)``
            The rows this cache (or this row subset of it) was built from, aligned with it.
        rows : int array of positions in this view
        views : int or int array, one per row, in ``[0, n_views)``

        Returns
        -------
        ndarray of shape ``(len(rows), *view_shape)``, in ``X``'s stored dtype
        """
        rows = positions(rows, len(self))
        return self.augment_rows(take_rows(X, rows), rows, views)

    def check_views(
        self, inputs: np.ndarray, rows: np.ndarray, views: Any, *, what: str = "row"
    ) -> None:
        """Raise :class:`~kdpipe.errors.RowMismatchError` unless ``inputs`` (regenerated views of
        the rows at positions ``rows``) have the digests of the inputs the teacher scored."""
        from kdpipe.cache.fingerprint import row_digests

        at, views = self._views_at(rows, views)
        stored = self._handle.view_digests()
        if stored is None:
            return
        inputs = np.asarray(inputs)
        try:
            inputs = inputs.astype(np.dtype(self.manifest.data_dtype), copy=False)
        except (TypeError, ValueError):
            pass
        wrong = np.flatnonzero(row_digests(inputs) != stored[at, views])
        if not len(wrong):
            return
        shown = "; ".join(
            f"{what} {int(np.asarray(rows)[i])} (row {int(at[i])} of the cache), view {int(views[i])}"
            for i in wrong[:5]
        )
        more = f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""
        augment = (
            None
            if self.views is None or self.views.augment is None
            else self.views.augment.to_dict()
        )
        raise RowMismatchError(
            f"{len(wrong)} of {len(at)} regenerated views differ from the inputs the teacher scored "
            f"(by their digests): {shown}{more}. The augmentation {augment} (seed "
            f"{None if self.views is None else self.views.seed}) no longer makes the views the cache "
            "was built from: another augmentation, another library version, or X is not the rows of the cache"
        )

    def _read(self, rows: np.ndarray | None) -> np.ndarray:
        """float32 logits of cache rows ``rows`` (None: all), each touched chunk read once."""
        m, memory = self.manifest, self._handle.memory
        if rows is None:
            out = np.empty((m.n_rows, m.n_members, m.n_classes), dtype=np.float32)
            for i in range(m.n_chunks):
                start, stop = chunk_bounds(i, m.chunk_rows, m.n_rows)
                memory.gather(np.arange(start, stop), self._handle.read_chunk, out[start:stop])
            return out
        out = np.empty((len(rows), m.n_members, m.n_classes), dtype=np.float32)
        return memory.gather(rows, self._handle.read_chunk, out)

    def _read_records(self, rows: np.ndarray) -> np.ndarray:
        """Stored records ``(len(rows), *row_shape)`` uint8 of a sparse or low-rank cache's
        rows, each touched chunk read once."""
        m = self.manifest
        out = np.empty((len(rows), *m.row_shape), dtype=np.uint8)
        return self._handle.memory.gather(rows, self._handle.read_chunk, out)

    @property
    def logits(self) -> Any:
        """Lazy dask array ``(n, members, classes)`` of float32 logits."""
        import dask
        import dask.array as da

        self._refuse_views("cache.logits")
        m = self.manifest
        if self._rows is None:
            bounds = [chunk_bounds(i, m.chunk_rows, m.n_rows) for i in range(m.n_chunks)]
        else:
            bounds = [
                (s, min(s + m.chunk_rows, len(self))) for s in range(0, len(self), m.chunk_rows)
            ]
        token = dask.base.tokenize(self)
        parts = [
            da.from_delayed(
                dask.delayed(np.asarray, pure=True)(
                    self.take(slice(a, b)), dask_key_name=f"kdpipe-logits-{token}-{k}"
                ),
                shape=(b - a, m.n_members, m.n_classes),
                dtype=np.float32,
            )
            for k, (a, b) in enumerate(bounds)
        ]
        return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)

    def soft_targets(self, temperature: float, combine: str = "arithmetic") -> Any:
        """Lazy dask array ``(n, classes)`` of float32 soft targets at ``temperature``.

        ``"arithmetic"``: mean over members of ``softmax(v_m / T)``; ``"geometric"``:
        ``softmax(mean_m(v_m) / T)`` (Hinton et al. 2015, section 2).
        """
        from kdpipe.losses import parse_combine, parse_temperature  # torch: only when asked

        t, combine = parse_temperature(temperature), parse_combine(combine)
        return self.logits.map_blocks(
            _soft_targets_block,
            t,
            combine,
            drop_axis=1,
            dtype=np.float32,
            meta=np.empty((0, 0), np.float32),
        )

    # -- checks
    def verify(self) -> VerifyReport:
        """Re-read every chunk of the whole cache and check it against its record."""
        h = self._handle
        records = h.records if self.manifest.complete else read_records(h.root, self.manifest)
        return verify_chunks(str(h.root), self.manifest, records, h.store)

    def info(self) -> dict[str, Any]:
        """Summary: rows, classes, members, dtype, bytes on disk, fingerprints, chunks.

        ``labels_stored`` says whether any complete chunk holds a label (a row not marked
        ``-1``), told from the chunks' recorded label checksums without reading them.
        """
        m = self.manifest
        records = self._handle.records if m.complete else read_records(self.path, m)
        unlabeled = {r.stop - r.start: 0 for r in records.values()}
        for rows in unlabeled:
            unlabeled[rows] = checksum(np.full(rows, -1, dtype=np.int64))
        if is_remote(self.path):
            size = sum(self.path.sizes().values())
        else:
            size = sum(
                p.stat().st_size
                for p in self.path.rglob("*")
                if p.is_file() and not is_temp_name(p.name)
            )
        return {
            "path": str(self.path),
            "format_version": m.format_version,
            "backend": m.backend,
            "rows": m.n_rows,
            "members": m.n_members,
            "classes": m.classes["values"],
            "n_classes": m.n_classes,
            "dtype": m.dtype,
            "chunk_rows": m.chunk_rows,
            "n_chunks": m.n_chunks,
            "complete_chunks": len(records),
            "complete": m.complete,
            "labels_stored": any(
                r.labels_crc32c != unlabeled[r.stop - r.start] for r in records.values()
            ),
            "bytes_on_disk": size,
            "bytes_per_row": size / m.n_rows,
            "format": "dense" if m.sparse is None else m.sparse["kind"],
            "views": m.views,
            "logit_bytes_per_row": int(np.prod(m.row_shape)) * np.dtype(m.stored_dtype).itemsize,
            "teachers": [t.to_dict() for t in m.teachers],
            "data": {
                "shape": list(m.data_shape),
                "dtype": m.data_dtype,
                "fingerprint": m.data_fingerprint,
                "row_digests": m.has_row_digests,
            },
            "build": m.build,
            "versions": m.versions,
            "created": m.created,
            "finished": m.finished,
        }
