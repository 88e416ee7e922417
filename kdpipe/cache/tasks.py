"""The work of one build task: compute (or check) one whole storage chunk.

A :class:`ChunkJob` is shipped once to each worker (the result of one task, which the
scheduler recomputes if its worker dies); tasks then only carry a chunk index and, for in-memory
inputs, that chunk's rows. The task that computes chunk ``i`` is the only writer of
chunk ``i``, and writes its completion record after the data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdpipe.cache.fingerprint import hash_block, row_digests
from kdpipe.cache.location import as_location
from kdpipe.cache.lowrank import LowRank, LowRankBasis, read_basis
from kdpipe.cache.manifest import ChunkRecord, Manifest, chunk_bounds, write_record
from kdpipe.cache.storage import checksum, chunk_parts, open_store, read_checked
from kdpipe.cache.teachers import Member
from kdpipe.devices import resolve_device
from kdpipe.errors import CacheCorruptError, InputError, TeacherOutputError
from kdpipe.labels import encode_labels
from kdpipe.rows import Source

__all__ = ["ChunkJob", "check_scores"]


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(r) for r in rows[:10])
    return f"{shown}{', ...' if len(rows) > 10 else ''} ({len(rows)} rows)"


def check_scores(
    out: np.ndarray,
    j: int,
    member: Member,
    r0: int,
    r1: int,
    n_classes: int,
    dtype: str,
    view: int | None = None,
) -> None:
    """Raise :class:`TeacherOutputError` unless member ``j``'s logits of rows ``r0:r1`` have
    the shape ``(r1 - r0, n_classes)`` and are finite and within ``dtype``'s range."""
    expected = (r1 - r0, n_classes)
    of_view = "" if view is None else f" (view {view})"
    if out.shape != expected:
        raise TeacherOutputError(
            f"member {j} ({member.name}) returned logits of shape {out.shape} for rows "
            f"{r0}-{r1 - 1}{of_view}; expected {expected} ({n_classes} classes)"
        )
    half = dtype == "float16"
    if np.isfinite(out).all() and not (half and np.abs(out).max() > np.finfo(np.float16).max):
        return  # the common case: whole-batch tests; the row-wise ones below only on failure
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        raise TeacherOutputError(
            f"member {j} ({member.name}) returned NaN or inf logits for rows "
            f"{_rows_text(r0 + np.flatnonzero(~finite))}{of_view}"
        )
    if half:
        too_big = (np.abs(out) > np.finfo(np.float16).max).any(axis=1)
        if too_big.any():
            raise TeacherOutputError(
                f"member {j} ({member.name}) returned logits beyond the float16 range for rows "
                f"{_rows_text(r0 + np.flatnonzero(too_big))}{of_view}; build with dtype='float32'"
            )


@dataclass
class ChunkJob:
    """Everything a worker needs to compute any chunk of one cache."""

    root: Any  # str, or a RemotePath (a URL and its storage options)
    manifest: Manifest
    members: list[Member]
    device: Any
    batch_size: int
    source: Source | None = None  # None: the driver sends each chunk's rows
    codes: np.ndarray | None = None  # encoded labels of all rows, when given up front
    precision: str = "model"  # torch teachers' forward precision (see teachers.parse_precision)
    views: Any = (
        None  # the build's kdpipe.cache.views.Views (its augmentation may be a user callable)
    )

    def _inputs(self, index: int, x: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The chunk's input rows (read here unless the driver sent them) and label codes."""
        start, stop = chunk_bounds(index, self.manifest.chunk_rows, self.manifest.n_rows)
        y = None
        if x is None:
            assert self.source is not None
            x, y = self.source.read(start, stop)
        if self.codes is not None:
            codes = self.codes[start:stop]
        else:
            classes = self.manifest.class_array()
            codes = (
                encode_labels(y, classes, start)
                if y is not None
                else np.full(stop - start, -1, np.int64)
            )
        if len(x) != stop - start:
            raise InputError(
                f"chunk {index}: the input gave {len(x)} rows, expected {stop - start}"
            )
        return x, np.ascontiguousarray(codes, dtype=np.int64)

    def compute(self, index: int, x: np.ndarray | None = None) -> ChunkRecord:
        """Run every member over chunk ``index`` (every view of it), write the chunk, then (last) its record.

        Only the task that computes a chunk writes it: one writer per chunk. In a views
        cache view ``v`` of row ``r`` is made from the row's stored bytes and the stream
        of ``(seed, r, v)`` alone (:class:`~kdpipe.cache.views.Views`), so a resumed or
        distributed build scores the views an uninterrupted one would.
        """
        m = self.manifest
        start, stop = chunk_bounds(index, m.chunk_rows, m.n_rows)
        x, codes = self._inputs(index, x)
        device = resolve_device(self.device)
        views = self.views
        # (rows, members, classes), or (rows, entries, record bytes) of a sparse cache;
        # a views cache: (rows, views, ...) of either
        logits = np.empty((stop - start, *m.row_shape), dtype=m.stored_dtype)
        view_digests = (
            None if views is None else np.empty((stop - start, m.n_views), dtype=np.uint64)
        )
        for v in range(m.n_views):
            seen = x if views is None else views.apply(x, np.arange(start, stop), v)
            if views is not None:
                assert view_digests is not None
                view_digests[:, v] = row_digests(seen)
            self._score(index, seen, start, v if views is not None else None, logits, device)
        digests = row_digests(x)
        self._writable_store().write_chunk(index, logits, codes, digests, view_digests)
        record = ChunkRecord(
            index=index,
            start=start,
            stop=stop,
            logits_crc32c=checksum(logits),
            labels_crc32c=checksum(codes),
            data_sha256=hash_block(x),
            device=str(device),
            digests_crc32c=checksum(digests),
            views_crc32c=None if view_digests is None else checksum(view_digests),
        )
        write_record(self.root, record)
        return record

    def _score(
        self,
        index: int,
        x: np.ndarray,
        start: int,
        view: int | None,
        logits: np.ndarray,
        device: Any,
    ) -> None:
        """Fill ``logits`` (``logits[:, view]`` of a views cache) with every member's scores of ``x``."""
        m = self.manifest
        rows = len(x)
        out = logits if view is None else logits[:, view]
        sparse = m.sparse_layout()
        uniforms = None if sparse is None else sparse.uniforms(index, rows, view)
        basis = self._basis()
        for b0 in range(0, rows, self.batch_size):
            b1 = min(b0 + self.batch_size, rows)
            # a sparse cache never holds a dense chunk: one batch at a time is reduced
            dense = (
                out[b0:b1]
                if sparse is None
                else np.empty((b1 - b0, m.n_members, m.n_classes), m.dtype)
            )
            for j, member in enumerate(self.members):
                scores = member.predict(x[b0:b1], device, self.precision)
                self._check(scores, j, member, start + b0, start + b1, view)
                dense[:, j] = scores
            if sparse is not None:
                out[b0:b1] = sparse.encode(
                    dense, None if uniforms is None else uniforms[b0:b1], basis
                )

    def _writable_store(self) -> Any:
        """This thread's writable chunk store, opened once (not once per chunk)."""
        local = self.__dict__.get("_local")
        if local is None:
            local = self.__dict__.setdefault("_local", threading.local())
        store = getattr(local, "store", None)
        if store is None:
            store = local.store = open_store(self.root, self.manifest, writable=True)
        return store

    def _basis(self) -> LowRankBasis | None:
        """A low-rank cache's stored basis, read (and checked) once per worker; else None."""
        if (self.manifest.sparse or {}).get("kind") != LowRank.kind:
            return None
        basis = self.__dict__.get("_lowrank_basis")
        if basis is None:
            basis = self.__dict__.setdefault(
                "_lowrank_basis", read_basis(as_location(self.root), self.manifest)
            )
        return basis

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_lowrank_basis")}

    def _check(
        self, out: np.ndarray, j: int, member: Member, r0: int, r1: int, view: int | None = None
    ) -> None:
        check_scores(out, j, member, r0, r1, self.manifest.n_classes, self.manifest.dtype, view)

    def check(self, record: ChunkRecord, x: np.ndarray | None = None) -> str:
        """Compare a complete chunk with this build's inputs and with its stored data.

        Returns ``"ok"``, ``"data"`` (the input rows changed), ``"labels"`` (the labels
        changed), ``"no labels"`` (the chunk has labels, this build gives none) or ``"damaged"`` (stored chunk missing or corrupt: recompute it).
        """
        x, codes = self._inputs(record.index, x)
        if hash_block(x) != record.data_sha256:
            return "data"
        if checksum(codes) != record.labels_crc32c:
            return "no labels" if bool((codes == -1).all()) else "labels"
        store = open_store(self.root, self.manifest)
        try:
            for what in chunk_parts(self.manifest):
                read_checked(store, record, what)
        except CacheCorruptError:
            return "damaged"
        return "ok"
