"""Helpers the kdpipe estimators share: parameters, tags, input checks, fitted state.

- ``module__*`` parameters: an estimator with a ``module`` (a class) and a
  ``module_params`` (a dict of its constructor arguments) mixes in
  :class:`ModuleParamsMixin`; then ``get_params()`` also lists each argument as
  ``module__<name>`` and ``set_params(module__<name>=value)`` updates
  ``module_params``, exactly like scikit-learn's nested parameters, so
  ``GridSearchCV`` and ``Pipeline`` can tune them.
- The scikit-learn tags of a torch classifier.
- Checks ``validate_data`` cannot do: on-disk ``X`` by shape and dtype (it would load
  it), teacher logits by shape (values per minibatch when on disk, see
  :class:`kdpipe.rows.MinibatchSource`).
- :func:`fitted_state` / :func:`restore_state`: a failed ``fit`` leaves the estimator
  as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.utils import Tags

from kdpipe.errors import ClassMismatchError, InputError
from kdpipe.rows import check_finite_rows, is_lazy_array
from kdpipe.students import MLP

__all__ = [
    "ModuleParamsMixin",
    "PREFIX",
    "build_module",
    "torch_classifier_tags",
    "check_lazy_X",
    "check_teacher_logits",
    "fitted_state",
    "restore_state",
]

PREFIX = "module__"
_MLP_ARGS = {"hidden_layer_sizes", "activation", "dropout"}


class ModuleParamsMixin:
    """Expose the entries of ``module_params`` as ``module__<name>`` parameters."""

    module_params: dict[str, Any] | None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep=deep)  # type: ignore[misc]
        if deep and isinstance(self.module_params, dict):
            for name, value in self.module_params.items():
                params[PREFIX + name] = value
        return params

    def set_params(self, **params: Any) -> Any:
        routed = {k[len(PREFIX) :]: params.pop(k) for k in list(params) if k.startswith(PREFIX)}
        if routed:
            # a new dict: never mutate one a clone or the caller may share
            base = params.pop("module_params", self.module_params)
            merged = dict(base) if isinstance(base, dict) else {}
            merged.update(routed)
            params["module_params"] = merged
        return super().set_params(**params)  # type: ignore[misc]


def build_module(estimator: Any, n_features: int, n_classes: int) -> torch.nn.Module:
    """A fresh student: ``module(n_features=, n_classes=, **module_params)``.

    With ``module=None`` the student is :class:`kdpipe.students.MLP` built from the
    estimator's ``hidden_layer_sizes``, ``activation`` and ``dropout``.
    """
    params = dict(estimator.module_params or {})
    factory: Any = estimator.module
    if factory is None:
        if _MLP_ARGS & set(params):
            raise InputError(
                f"module_params {sorted(_MLP_ARGS & set(params))} repeat parameters of "
                f"{type(estimator).__name__} itself; set those directly"
            )
        sizes = [int(u) for u in np.ravel(estimator.hidden_layer_sizes)]
        params.update(
            hidden_layer_sizes=sizes, activation=estimator.activation, dropout=estimator.dropout
        )
        factory = MLP
    try:
        module = factory(n_features=n_features, n_classes=n_classes, **params)
    except TypeError as exc:
        raise InputError(f"cannot build the student {factory.__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"module must build a torch.nn.Module, got {type(module).__name__}")
    return module


def torch_classifier_tags(tags: Tags) -> Tags:
    """Declare what a kdpipe classifier (a torch student on dense float32 rows) accepts.

    Dense inputs only, no NaN, labels required, multiclass but not multilabel;
    deterministic on CPU for a fixed ``random_state`` (CUDA kernels may differ run to run).
    """
    tags.input_tags.allow_nan = False
    tags.input_tags.sparse = False
    tags.target_tags.required = True
    tags.classifier_tags.multi_class = True
    tags.classifier_tags.multi_label = False
    tags.non_deterministic = False
    return tags


def check_lazy_X(X: Any, n_features: int | None = None, name: str = "X") -> int:
    """Check an on-disk ``X`` by shape and dtype without reading it; return its width."""
    shape, dtype = tuple(X.shape), np.dtype(X.dtype)
    if len(shape) != 2:
        raise InputError(
            f"{name} must be two-dimensional (n_samples, n_features), got shape {shape}"
        )
    if dtype.kind not in "fiub":
        raise InputError(f"{name} must hold numbers, got dtype {dtype}")
    if shape[0] < 1:
        raise InputError(f"{name} has 0 samples: a minimum of 1 is required")
    if n_features is not None and shape[1] != n_features:
        raise InputError(
            f"X has {shape[1]} features, but DistilledClassifier is expecting "
            f"{n_features} features as input."
        )
    return int(shape[1])


def check_teacher_logits(teacher_logits: Any, n_samples: int, n_classes: int) -> Any:
    """Check shape (and values, when in memory) of the teacher logits; return them."""
    if not is_lazy_array(teacher_logits):
        teacher_logits = np.asarray(teacher_logits)
    shape = tuple(teacher_logits.shape)
    if len(shape) not in (2, 3):
        raise InputError(f"teacher_logits must have shape (n, C) or (n, M, C), got {shape}")
    if shape[0] != n_samples:
        raise InputError(
            f"teacher_logits has {shape[0]} rows but X has {n_samples}: they must be aligned"
        )
    if shape[-1] != n_classes:
        raise ClassMismatchError(
            f"teacher_logits has {shape[-1]} class columns but there are {n_classes} "
            "classes; with array logits, declare every class the teacher knows with "
            "classes=[...] in logit order"
        )
    if np.dtype(teacher_logits.dtype).kind not in "fiu":
        raise InputError(f"teacher_logits must hold numbers, got dtype {teacher_logits.dtype}")
    if isinstance(teacher_logits, np.ndarray):
        check_finite_rows(teacher_logits, np.arange(n_samples), "teacher_logits")
    return teacher_logits


def fitted_state(estimator: Any) -> dict[str, Any]:
    """The fitted attributes (trailing underscore) of ``estimator``, to restore on failure."""
    return {k: v for k, v in vars(estimator).items() if k.endswith("_") and not k.startswith("__")}


def restore_state(estimator: Any, state: dict[str, Any]) -> None:
    """Put back exactly the fitted attributes ``state`` (dropping any added since)."""
    for name in list(fitted_state(estimator)):
        if name not in state:
            delattr(estimator, name)
    for name, value in state.items():
        setattr(estimator, name, value)
