"""``module__*`` parameters: a user's ``torch.nn.Module`` constructor arguments, tunable.

An estimator with a ``module`` (a class) and a ``module_params`` (a dict of its
constructor arguments) parameter mixes in :class:`ModuleParamsMixin`; then
``get_params()`` also lists each argument as ``module__<name>`` and
``set_params(module__<name>=value)`` updates ``module_params``, exactly like
scikit-learn's nested parameters, so ``GridSearchCV`` and ``Pipeline`` can tune them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdpipe.errors import InputError
from kdpipe.students import MLP

__all__ = ["ModuleParamsMixin", "PREFIX", "build_module"]

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
