"""``LowRankLogitCache``: a finished low-rank logit cache, read as dense logits.

:meth:`kdpipe.LogitCache.open` returns one for a cache built with
``sparse=LowRank(rank)`` (see :mod:`kdpipe.cache.lowrank`). Every read decodes the stored
coefficients through the cache's basis (read once, checked against the manifest's
checksum), so it behaves as a dense :class:`~kdpipe.LogitCache` in everything: rows,
views, ``np.asarray``, :attr:`~kdpipe.LogitCache.logits`, soft targets, training with
any loss, temperature and combine.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from kdpipe.cache.lowrank import LowRankBasis, read_basis
from kdpipe.cache.manifest import chunk_bounds
from kdpipe.cache.reader import LogitCache
from kdpipe.cache.verify import ChunkProblem, VerifyReport
from kdpipe.errors import CacheChunkMissingError, CacheCorruptError

__all__ = ["LowRankLogitCache"]


class LowRankLogitCache(LogitCache):
    """A low-rank logit cache, or a lazy row subset of one (see :class:`kdpipe.LogitCache`)."""

    def _basis(self) -> LowRankBasis:
        handle = self._handle
        basis = handle.__dict__.get("lowrank_basis")
        if basis is None:
            basis = handle.__dict__.setdefault(
                "lowrank_basis", read_basis(handle.root, self.manifest)
            )
        return basis

    @property
    def resident(self) -> bool:
        """False: a read decodes its rows through the basis (``rank x C`` multiply-adds a row),
        work that training overlaps in a reader thread (:func:`kdpipe.rows.prefetched`),
        not an in-memory gather."""
        return False

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", sparse={self.manifest.sparse})"

    def _read(self, rows: np.ndarray | None) -> np.ndarray:
        m = self.manifest
        if rows is None:
            out = np.empty((m.n_rows, m.n_members, m.n_classes), dtype=np.float32)
            for i in range(m.n_chunks):
                start, stop = chunk_bounds(i, m.chunk_rows, m.n_rows)
                out[start:stop] = self._decode(self._read_records(np.arange(start, stop)))
            return out
        return self._decode(self._read_records(rows))

    def read_views(self, rows: np.ndarray, views: Any) -> np.ndarray:
        """float32 logits ``(len(rows), M, C)`` of view ``views[i]`` of the row at position ``rows[i]``."""
        at, views = self._views_at(rows, views)
        records = self._read_records(at)
        if self.manifest.views is not None:
            records = records[np.arange(len(at)), views]
        return self._decode(records)

    def _decode(self, records: np.ndarray) -> np.ndarray:
        return self.manifest.sparse_layout().decode_logits(records, self._basis())

    def reconstruction_errors(self) -> np.ndarray:
        """Each row's largest logit error per member, ``(n, M)`` float32 (``(n, V, M)`` in a
        views cache): ``max_j |z_j - z_hat_j|`` against the logits a dense cache of the same
        dtype would hold, measured at build. It bounds the soft targets' error (see
        :mod:`kdpipe.cache.lowrank`).

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> import kdpipe
        >>> X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
        >>> W = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
        >>> def teacher(batch):  # a linear teacher: centred logits of rank 3
        ...     return batch @ W
        >>> teacher.kdpipe_fingerprint = "linear-3x6"
        >>> cache = kdpipe.build_cache(
        ...     teacher, X, tempfile.mkdtemp() + "/c", progress=False, sparse=kdpipe.LowRank(rank=3)
        ... )
        >>> bool(cache.reconstruction_errors().max() < 1e-5)
        True
        """
        m = self.manifest
        rows = np.arange(m.n_rows) if self._rows is None else self._rows
        return (
            m.sparse_layout()
            .decode_errors(self._read_records(rows).reshape(-1, *m.view_shape))
            .reshape(len(rows), *m.row_shape[:-2], m.n_members)
        )

    def verify(self) -> VerifyReport:
        """:meth:`kdpipe.LogitCache.verify`, and the basis: every recorded chunk fails with it."""
        report = super().verify()
        try:
            read_basis(self._handle.root, self.manifest)
        except CacheCorruptError as exc:  # a missing basis too (CacheChunkMissingError)
            kind = "missing" if isinstance(exc, CacheChunkMissingError) else "corrupt"
            failed = [i for i in range(report.n_chunks) if i not in report.incomplete]
            known = {p.index for p in report.problems}
            problems = report.problems + tuple(
                ChunkProblem(i, kind, str(exc)) for i in failed if i not in known
            )
            return replace(
                report,
                ok=False,
                problems=problems,
                corrupt=tuple(sorted({*report.corrupt, *failed})),
                n_verified=0,
            )
        return report

    def info(self) -> dict[str, Any]:
        """:meth:`kdpipe.LogitCache.info` plus ``sparse``: the settings and record bytes."""
        return {**super().info(), "sparse": self.manifest.sparse_layout().info()}
