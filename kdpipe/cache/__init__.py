"""Offline logit cache: run a teacher (or an ensemble) once, keep its raw logits.

``build_cache`` writes a chunked, checksummed store (zarr v3 or HDF5) of every member's
logits over a transfer set; ``LogitCache`` reads it lazily, row subsets included.

Names are imported on first use so that readers (for example loky worker processes
that unpickle a cache subset) never import torch or dask.distributed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from kdpipe.cache.build import build_cache
    from kdpipe.cache.config import BuildConfig
    from kdpipe.cache.lowrank import LowRank
    from kdpipe.cache.lowrank_reader import LowRankLogitCache
    from kdpipe.cache.reader import LogitCache
    from kdpipe.cache.sparse import Sampled, TopK, TopKSampledTail
    from kdpipe.cache.sparse_reader import SparseLogitCache
    from kdpipe.cache.verify import VerifyReport
    from kdpipe.cache.views import Views

_PUBLIC = {
    "build_cache": "kdpipe.cache.build",
    "LogitCache": "kdpipe.cache.reader",
    "VerifyReport": "kdpipe.cache.verify",
    "BuildConfig": "kdpipe.cache.config",
    "SparseLogitCache": "kdpipe.cache.sparse_reader",
    "LowRankLogitCache": "kdpipe.cache.lowrank_reader",
    "LowRank": "kdpipe.cache.lowrank",
    "TopK": "kdpipe.cache.sparse",
    "TopKSampledTail": "kdpipe.cache.sparse",
    "Sampled": "kdpipe.cache.sparse",
    "Views": "kdpipe.cache.views",
}

__all__ = [
    "BuildConfig",
    "LogitCache",
    "LowRank",
    "LowRankLogitCache",
    "Sampled",
    "SparseLogitCache",
    "TopK",
    "TopKSampledTail",
    "VerifyReport",
    "Views",
    "build_cache",
]
assert set(__all__) == set(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kdpipe.cache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
