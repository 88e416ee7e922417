"""kdpipe: knowledge distillation (Hinton, Vinyals & Dean, 2015) as a pipeline.

An offline stage runs a teacher or an ensemble once and stores every member's raw
logits in a chunked, verifiable cache; scikit-learn estimators then train PyTorch
students from the cached soft targets.

Public names are imported on first use, so ``import kdpipe`` stays cheap and the
command line starts fast.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("kdpipe")  # one source of truth: pyproject.toml
except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from kdpipe import augment, cache, datasets, engine, errors, labels, losses, rows, students
    from kdpipe.cache import (
        LogitCache,
        LowRank,
        Sampled,
        TopK,
        TopKSampledTail,
        Views,
        build_cache,
    )
    from kdpipe.distilled import DistilledClassifier
    from kdpipe.losses import (
        distillation_loss,
        hard_label_loss,
        logit_matching_loss,
        soft_targets,
        sparse_distillation_loss,
    )
    from kdpipe.rows import LazyRows
    from kdpipe.specialists import SpecialistEnsembleClassifier
    from kdpipe.view_dataset import ViewDataset

# public name -> module that defines it
_PUBLIC = {
    "soft_targets": "kdpipe.losses",
    "distillation_loss": "kdpipe.losses",
    "logit_matching_loss": "kdpipe.losses",
    "hard_label_loss": "kdpipe.losses",
    "sparse_distillation_loss": "kdpipe.losses",
    "TopK": "kdpipe.cache",
    "TopKSampledTail": "kdpipe.cache",
    "Sampled": "kdpipe.cache",
    "LowRank": "kdpipe.cache",
    "Views": "kdpipe.cache",
    "build_cache": "kdpipe.cache",
    "LogitCache": "kdpipe.cache",
    "DistilledClassifier": "kdpipe.distilled",
    "LazyRows": "kdpipe.rows",
    "ViewDataset": "kdpipe.view_dataset",
    "SpecialistEnsembleClassifier": "kdpipe.specialists",
}
_SUBMODULES = {
    "augment",
    "datasets",
    "errors",
    "losses",
    "cache",
    "engine",
    "labels",
    "rows",
    "students",
}

__all__ = [
    "DistilledClassifier",
    "LazyRows",
    "LogitCache",
    "LowRank",
    "Sampled",
    "SpecialistEnsembleClassifier",
    "TopK",
    "TopKSampledTail",
    "ViewDataset",
    "Views",
    "build_cache",
    "distillation_loss",
    "hard_label_loss",
    "logit_matching_loss",
    "soft_targets",
    "sparse_distillation_loss",
    "augment",
    "cache",
    "datasets",
    "engine",
    "errors",
    "labels",
    "losses",
    "rows",
    "students",
    "__version__",
]
assert set(__all__) == set(_PUBLIC) | _SUBMODULES | {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"kdpipe.{name}")
    raise AttributeError(f"module 'kdpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
