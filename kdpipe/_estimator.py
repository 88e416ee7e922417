"""Helpers the kdpipe estimators share: parameters, tags, input checks, fitted state.

- ``module__*`` parameters: an estimator with a ``module`` (a class) and a
  ``module_params`` (a dict of its constructor arguments) mixes in
  :class:`ModuleParamsMixin`; then ``get_params()`` also lists each argument as
  ``module__<name>`` and ``set_params(module__<name>=value)`` updates
  ``module_params``, exactly like scikit-learn's nested parameters, so
  ``GridSearchCV`` and ``Pipeline`` can tune them.
- The scikit-learn tags of a torch classifier.
- Input checks: :func:`validate_rows` for in-memory ``X`` of shape
  ``(n, n_features)`` (``validate_data``, as scikit-learn has it) or
  ``(n, *sample_shape)`` (images); checks ``validate_data`` cannot do: on-disk ``X`` by
  shape and dtype (:func:`check_lazy_X`; ``validate_data`` would load it), teacher
  logits by shape (values per minibatch when on disk, see
  :class:`kdpipe.rows.MinibatchSource`).
- :func:`fitted_state` / :func:`restore_state`: a failed ``fit`` leaves the estimator
  as it was.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from sklearn.utils import Tags
from sklearn.utils.validation import check_array, check_X_y, validate_data

from kdpipe.errors import ClassMismatchError, InputError
from kdpipe.rows import check_finite_rows, is_lazy_array
from kdpipe.students import MLP

__all__ = [
    "INPUT_DTYPES",
    "PREFIX",
    "ModuleParamsMixin",
    "build_module",
    "check_lazy_X",
    "check_teacher_logits",
    "fitted_sample_shape",
    "fitted_state",
    "restore_state",
    "rows_as_given",
    "torch_classifier_tags",
    "validate_rows",
]

PREFIX = "module__"
# dtypes in-memory X keeps (uint8: images, 4x smaller; scaled per batch by the uint8 rule,
# kdpipe.rows.to_model_dtype); any other becomes float32
INPUT_DTYPES = (np.float32, np.uint8)
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


def build_module(estimator: Any, sample_shape: tuple[int, ...], n_classes: int) -> torch.nn.Module:
    """A fresh student: ``module(n_features=, n_classes=, **module_params)``.

    ``n_features`` is the flattened width ``prod(sample_shape)``; a module whose
    constructor has a ``sample_shape`` parameter (:class:`kdpipe.students.ConvNet`)
    also receives the shape of one row, e.g. ``(1, 28, 28)``. With ``module=None`` the
    student is :class:`kdpipe.students.MLP` built from the estimator's
    ``hidden_layer_sizes``, ``activation`` and ``dropout``.
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
    shape = tuple(int(s) for s in sample_shape)
    if _takes_sample_shape(factory):
        if "sample_shape" in params:
            raise InputError(
                "module_params must not set sample_shape: it is the shape of X's rows, given at fit"
            )
        params["sample_shape"] = shape
    try:
        module = factory(n_features=int(np.prod(shape)), n_classes=n_classes, **params)
    except (TypeError, ValueError) as exc:  # arguments it does not take, or values it refuses
        raise InputError(f"cannot build the student {factory.__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"module must build a torch.nn.Module, got {type(module).__name__}")
    return module


def _takes_sample_shape(factory: Any) -> bool:
    try:
        return "sample_shape" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: it is not asked for
        return False


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


def fitted_sample_shape(estimator: Any) -> tuple[int, ...]:
    """The shape of one row of ``X`` the fitted ``estimator`` takes (``sample_shape_``)."""
    shape = getattr(estimator, "sample_shape_", None)
    return tuple(shape) if shape is not None else (int(estimator.n_features_in_),)


def _shape_error(estimator: Any, got: tuple[int, ...], fitted: tuple[int, ...]) -> InputError:
    return InputError(
        f"X has samples of shape {got}, but {type(estimator).__name__} was fitted on samples "
        f"of shape {fitted}: give X of shape (n_samples, {', '.join(map(str, fitted))})"
    )


def _is_nd(X: Any) -> bool:
    ndim = getattr(X, "ndim", None)
    return isinstance(ndim, (int, np.integer)) and int(ndim) > 2


def validate_rows(
    estimator: Any, X: Any, y: Any = "no_validation", *, reset: bool
) -> tuple[Any, Any, tuple[int, ...]]:
    """Validate in-memory ``X`` (and ``y``); return them and the sample shape.

    ``X`` of shape ``(n, n_features)`` goes through scikit-learn's ``validate_data``
    exactly as for any estimator (``n_features_in_``, ``feature_names_in_``, its
    messages). ``X`` of shape ``(n, *sample_shape)`` with more dimensions (images, as an
    array: numpy, torch, or on disk, then loaded) is checked by ``check_array`` with
    ``allow_nd=True``; ``reset`` sets ``n_features_in_`` to the flattened width
    ``prod(sample_shape)`` (there are no feature names), and ``reset=False`` refuses
    another sample shape than the fitted ``sample_shape_``, with an
    :class:`~kdpipe.errors.InputError` naming both. ``uint8`` stays ``uint8``
    (:data:`INPUT_DTYPES`), anything else becomes float32.

    Parameters
    ----------
    estimator : estimator
        Receives ``n_features_in_`` (and ``feature_names_in_``) when ``reset``.
    X : array-like
    y : array-like, None or "no_validation"
        As in ``validate_data``: ``None`` raises (a classifier needs labels).
    reset : bool
        True in ``fit``; False to check ``X`` against the fitted sample shape.

    Returns
    -------
    X : ndarray
    y : ndarray, or the ``y`` given when "no_validation"
    sample_shape : tuple of int
    """
    if not reset:
        fitted = fitted_sample_shape(estimator)
        got = tuple(int(s) for s in np.shape(X)[1:]) if _is_nd(X) or len(fitted) > 1 else None
        if got is not None and got != fitted:
            raise _shape_error(estimator, got, fitted)
    if not _is_nd(X):
        if isinstance(y, str) and y == "no_validation":
            X = validate_data(estimator, X, dtype=INPUT_DTYPES, reset=reset)
        else:
            X, y = validate_data(estimator, X, y, dtype=INPUT_DTYPES, reset=reset)
        return X, y, (int(X.shape[1]),)
    if isinstance(y, str) and y == "no_validation":
        X = check_array(X, allow_nd=True, dtype=INPUT_DTYPES, estimator=estimator)
    else:
        X, y = check_X_y(X, y, allow_nd=True, dtype=INPUT_DTYPES, estimator=estimator)
    sample_shape = tuple(int(s) for s in X.shape[1:])
    if 0 in sample_shape:
        raise InputError(
            f"X has samples of shape {sample_shape}: every dimension must be at least 1"
        )
    if reset:
        estimator.n_features_in_ = int(np.prod(sample_shape))
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    return X, y, sample_shape


def check_lazy_X(
    X: Any,
    sample_shape: tuple[int, ...] | None = None,
    name: str = "X",
    estimator: str = "DistilledClassifier",
) -> tuple[int, ...]:
    """Check an on-disk ``X`` by shape and dtype without reading it; return its sample shape.

    ``sample_shape``: the fitted one, which ``X`` must have (None in a fresh ``fit``).
    """
    shape, dtype = tuple(int(s) for s in X.shape), np.dtype(X.dtype)
    if len(shape) < 2:
        raise InputError(
            f"{name} must have shape (n_samples, n_features) or (n_samples, *sample_shape), got shape {shape}"
        )
    if dtype.kind not in "fiub":
        raise InputError(f"{name} must hold numbers, got dtype {dtype}")
    if shape[0] < 1:
        raise InputError(f"{name} has 0 samples: a minimum of 1 is required")
    if 0 in shape[1:]:
        raise InputError(
            f"{name} has samples of shape {shape[1:]}: every dimension must be at least 1"
        )
    if sample_shape is not None and shape[1:] != tuple(sample_shape):
        if len(shape) == 2 and len(sample_shape) == 1:
            raise InputError(
                f"X has {shape[1]} features, but {estimator} is expecting "
                f"{sample_shape[0]} features as input."
            )
        raise InputError(
            f"X has samples of shape {shape[1:]}, but {estimator} was fitted on samples "
            f"of shape {tuple(sample_shape)}"
        )
    return shape[1:]


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


def rows_as_given(given: Any, validated: Any) -> Any:
    """The rows a caller passed to ``fit``, in their own dtype, for comparing with a cache's
    row digests: numpy and lazy arrays as they are, other in-memory array-likes (lists,
    DataFrames, CPU tensors) through ``np.asarray``. ``validated`` (``validate_data``'s
    float32 copy) when they cannot be read so: float32 rows match no row of a cache built
    from float64 ones."""
    if isinstance(given, np.ndarray) or is_lazy_array(given):
        return given
    try:
        rows = np.asarray(given)
    except Exception:  # noqa: BLE001 - e.g. a CUDA tensor: compare what fit trains on
        return validated
    if rows.dtype == object or rows.shape[:1] != np.shape(validated)[:1]:
        return validated
    return rows


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
