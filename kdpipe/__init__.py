"""kdpipe: knowledge distillation (Hinton, Vinyals & Dean, 2015) as a pipeline.

An offline stage runs a teacher or an ensemble once and stores every member's raw
logits in a chunked, verifiable cache; scikit-learn estimators then train PyTorch
students from the cached soft targets.

Public names are imported on first use, so ``import kdpipe`` stays cheap and the
command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "soft_targets": "kdpipe.losses",
    "distillation_loss": "kdpipe.losses",
    "logit_matching_loss": "kdpipe.losses",
    "hard_label_loss": "kdpipe.losses",
    "sparse_distillation_loss": "kdpipe.losses",
    "TopK": "kdpipe.cache",
    "Sampled": "kdpipe.cache",
    "Views": "kdpipe.cache",
    "build_cache": "kdpipe.cache",
    "LogitCache": "kdpipe.cache",
    "DistilledClassifier": "kdpipe.distilled",
    "LazyRows": "kdpipe.rows",
    "SpecialistEnsembleClassifier": "kdpipe.specialists",
}
_SUBMODULES = {"augment", "datasets", "errors", "losses", "cache", "engine", "labels", "rows"}

__all__ = sorted(_PUBLIC) + sorted(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"kdpipe.{name}")
    raise AttributeError(f"module 'kdpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
