"""``SparseLogitCache``: a finished sparse logit cache, read as sparse targets.

:meth:`kdpipe.LogitCache.open` returns one for a cache built with ``sparse=...``. Rows,
row subsets (``cache[idx]``, :meth:`~kdpipe.LogitCache.take`), labels, row digests,
pickling, ``verify`` and ``info`` behave as for a dense cache; reading rows gives
:class:`~kdpipe.sparse_targets.TopKTargets` or
:class:`~kdpipe.sparse_targets.SampledTargets` instead of dense logits, which a sparse
cache does not hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdpipe.cache.reader import LogitCache
from kdpipe.cache.sparse import SparseLayout, SparseSpec, parse_sparse
from kdpipe.errors import SparseFormatError
from kdpipe.sparse_targets import SparseTargets

__all__ = ["SparseLogitCache"]


class SparseLogitCache(LogitCache):
    """A sparse logit cache, or a lazy row subset of one (see :class:`kdpipe.LogitCache`).

    ``shape`` is still ``(n, members, classes)``, the teacher's, so estimators check it
    as they check dense logits; :meth:`read_rows` returns sparse targets, and reading
    dense logits (``np.asarray``, :attr:`logits`, :meth:`soft_targets`) raises
    :class:`~kdpipe.errors.SparseFormatError`.
    """

    @property
    def sparse(self) -> SparseSpec:
        """The sparse format: :class:`~kdpipe.cache.sparse.TopK`,
        :class:`~kdpipe.cache.sparse.TopKSampledTail` or :class:`~kdpipe.cache.sparse.Sampled`."""
        spec = parse_sparse(self.manifest.sparse)
        assert spec is not None
        return spec

    @property
    def layout(self) -> SparseLayout:
        return self.manifest.sparse_layout()

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", sparse={self.manifest.sparse})"

    def read_rows(self, rows: np.ndarray) -> SparseTargets:  # type: ignore[override]
        """Sparse targets of the rows at positions ``rows`` of this view."""
        self._refuse_views("read_rows(rows)")
        rows = np.asarray(rows, dtype=np.intp)
        at = rows if self._rows is None else self._rows[rows]
        return self.layout.decode(self._read_records(at))

    def read_views(self, rows: np.ndarray, views: Any) -> SparseTargets:  # type: ignore[override]
        """Sparse targets of view ``views[i]`` of the row at position ``rows[i]``."""
        at, views = self._views_at(rows, views)
        records = self._read_records(at)
        if self.manifest.views is not None:
            records = records[np.arange(len(at)), views]
        return self.layout.decode(records)

    def _dense(self, what: str) -> SparseFormatError:
        return SparseFormatError(
            f"the cache at {self.path} is sparse ({self.manifest.sparse}) and holds no dense "
            f"logits, so {what} is not available; read sparse targets with read_rows, or "
            "train from it with DistilledClassifier(loss='distillation')"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise self._dense("np.asarray(cache)")

    @property
    def logits(self) -> Any:
        raise self._dense("cache.logits")

    def soft_targets(self, temperature: float, combine: str = "arithmetic") -> Any:
        raise self._dense("cache.soft_targets(...)")

    def info(self) -> dict[str, Any]:
        """:meth:`kdpipe.LogitCache.info` plus ``sparse``: the settings, entries and record bytes."""
        return {**super().info(), "sparse": self.layout.info()}
