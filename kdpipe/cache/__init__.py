"""Offline logit cache: run a teacher (or an ensemble) once, keep its raw logits.

``build_cache`` writes a chunked, checksummed store (zarr v3 or HDF5) of every member's
logits over a transfer set; ``LogitCache`` reads it lazily, row subsets included.

Names are imported on first use so that readers (for example loky worker processes
that unpickle a cache subset) never import torch or dask.distributed.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "build_cache": "kdpipe.cache.build",
    "LogitCache": "kdpipe.cache.reader",
    "VerifyReport": "kdpipe.cache.verify",
    "BuildConfig": "kdpipe.cache.config",
    "SparseLogitCache": "kdpipe.cache.sparse_reader",
    "TopK": "kdpipe.cache.sparse",
    "Sampled": "kdpipe.cache.sparse",
    "Views": "kdpipe.cache.views",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kdpipe.cache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
