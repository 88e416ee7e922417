"""Building and training one specialist (Hinton et al. 2015, sections 5.2 and 6.1).

A specialist starts as a copy of the generalist's network with a new output layer,
trains on a re-balanced sample (a share of its own classes, the rest drawn at random
from the other classes) with the shared engine (:func:`kdpipe.engine.train_student`),
and finally has the sampling bias removed from its output bias. Everything a job needs
is in its arguments, so jobs run in any joblib backend (threads, processes, Dask).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.special import logsumexp, softmax
from torch import nn

from kdpipe.engine import TrainingConfig, predict_logits, seeded, train_student
from kdpipe.errors import InputError
from kdpipe.rows import Batch, take_rows, to_model_dtype

__all__ = [
    "Specialist",
    "SpecialistSource",
    "output_layer",
    "sample_rows",
    "init_specialist_module",
    "fit_specialist",
]

Kind = Literal["dustbin", "full"]


@dataclass
class Specialist:
    """A trained specialist.

    Attributes
    ----------
    subset : ndarray of shape (k,), int
        Class codes the specialist covers (indices into ``classes_``).
    kind : {"dustbin", "full"}
        ``"dustbin"``: ``k + 1`` outputs (subset, then dustbin); ``"full"``: one per class.
    module : torch.nn.Module
        The network; its output bias already includes ``correction``.
    correction : float
        ``log(r_s / r_d)``, added to the dustbin logit (``"full"``: to every logit
        outside the subset) to undo the re-balanced sampling.
    n_rows : int
        Training rows (subset rows plus sampled outer rows).
    history : list of dict
        The engine's per-epoch records.
    """

    subset: np.ndarray
    kind: Kind
    module: nn.Module
    correction: float
    n_rows: int
    history: list[dict[str, float]] = field(default_factory=list)

    def predict_proba(self, X: Any, device: str = "cpu") -> np.ndarray:
        """Probabilities ``(n, k + 1)`` (``"dustbin"``) or ``(n, C)`` (``"full"``), float64.

        The module runs on ``device`` and is back on the CPU when this returns (also
        when it raises), where a fitted specialist lives.
        """
        try:
            z = predict_logits(self.module, X, device=device)  # (n, out) float32
        finally:
            self.module.cpu()
        return softmax(z.astype(np.float64), axis=1)


class SpecialistSource:
    """A :class:`~kdpipe.rows.RowSource` over a specialist's rows of a shared ``X``.

    ``X`` is the whole transfer set (memory-mapped by joblib's process backend rather
    than copied per specialist); ``rows`` picks the specialist's sample; labels and
    target logits are already mapped to the specialist's outputs.
    """

    def __init__(self, X: Any, rows: np.ndarray, y: np.ndarray | None, targets: np.ndarray | None):
        self.X, self.rows, self.y, self.targets = X, np.asarray(rows, np.intp), y, targets

    def __len__(self) -> int:
        return len(self.rows)

    def fetch(self, rows: np.ndarray) -> Batch:
        """Batch of the specialist's sample positions ``rows``."""
        X = to_model_dtype(take_rows(self.X, self.rows[rows]))
        y = None if self.y is None else self.y[rows]
        targets = None if self.targets is None else self.targets[rows]
        return Batch(X=X, y=y, teacher_logits=targets)


def output_layer(module: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The last ``nn.Linear`` of ``module`` (its output layer), with its parent and name."""
    found = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            found = name
    if found is None:
        raise InputError(
            f"the generalist's module {type(module).__name__} has no nn.Linear output "
            "layer to build specialists from"
        )
    parent_name, _, attr = found.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    return parent, attr, getattr(parent, attr)


def sample_rows(
    row_classes: np.ndarray, subset: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """A specialist's training rows and the log-odds correction of their sampling.

    Every row whose class is in ``subset`` is used (rate ``r_s = 1``); rows of other
    classes are drawn without replacement so that they make up ``1 - share`` of the
    sample, or all of them when there are too few (rate ``r_d``).

    Returns
    -------
    rows : ndarray of int, sorted
    correction : float
        ``log(r_s / r_d)`` from :func:`kdpipe.specialists.targets.sampling_correction`.
    """
    from kdpipe.specialists.targets import sampling_correction

    inside = np.isin(row_classes, subset)
    rows_in, rows_out = np.flatnonzero(inside), np.flatnonzero(~inside)
    if len(rows_in) == 0 or len(rows_out) == 0:
        raise InputError(
            f"the specialist for class codes {np.asarray(subset).tolist()} has "
            f"{len(rows_in)} transfer rows of its classes and {len(rows_out)} of others; "
            "it needs both"
        )
    n_out = min(len(rows_out), max(1, round(len(rows_in) * (1.0 - share) / share)))
    picked = rng.choice(rows_out, size=n_out, replace=False)
    correction = sampling_correction(len(rows_in), len(rows_in), len(rows_out), n_out)
    return np.sort(np.concatenate([rows_in, picked])), correction


def _penultimate(module: nn.Module, layer: nn.Linear, X: np.ndarray) -> np.ndarray:
    """Inputs ``(n, hidden)`` of ``layer`` when ``module`` runs on ``X``."""
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        module.eval()
        with torch.no_grad():
            module(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
    finally:
        hook.remove()
    return captured[0].reshape(len(X), -1).double().numpy()


def init_specialist_module(
    generalist: nn.Module, subset: np.ndarray, kind: Kind, X_fit: np.ndarray, shift: float
) -> nn.Module:
    """A copy of the generalist with the output layer a specialist needs.

    ``"full"``: the same output layer, with ``shift`` added to the biases of the classes
    outside ``subset``. ``"dustbin"``: ``k + 1`` outputs; the subset's rows of weights
    and biases are copied, and the dustbin row is the least-squares linear fit, on the
    hidden features of ``X_fit``, of the generalist's exact collapsed dustbin logit
    ``logsumexp(z_outside)`` (plus ``shift``), so the specialist starts as the
    generalist collapsed onto its subset, up to the fit error.
    """
    module = copy.deepcopy(generalist).cpu()
    parent, name, layer = output_layer(module)
    subset = np.asarray(subset, dtype=np.int64)
    outside = np.ones(layer.out_features, dtype=bool)
    outside[subset] = False
    with torch.no_grad():
        if kind == "full":
            if layer.bias is not None:
                layer.bias[torch.from_numpy(outside)] += shift
            return module
        W = layer.weight.double().numpy()  # (C, hidden)
        b = layer.bias.double().numpy() if layer.bias is not None else np.zeros(len(W))  # (C,)
        h = _penultimate(module, layer, X_fit)  # (n, hidden)
        z_out = h @ W[outside].T + b[outside]  # (n, C - k)
        lse = logsumexp(z_out, axis=1)  # (n,)
        design = np.hstack([h, np.ones((len(h), 1))])  # (n, hidden + 1)
        ridge = 1e-6 * np.eye(design.shape[1])
        coef = np.linalg.solve(design.T @ design + ridge, design.T @ lse)  # (hidden + 1,)
        new = nn.Linear(layer.in_features, len(subset) + 1, bias=True)
        new.weight.copy_(torch.from_numpy(np.vstack([W[subset], coef[:-1]])).float())
        new.bias.copy_(torch.from_numpy(np.append(b[subset], coef[-1] + shift)).float())
    setattr(parent, name, new)
    return module


def fit_specialist(
    generalist: nn.Module,
    X: Any,
    rows: np.ndarray,
    y: np.ndarray | None,
    targets: np.ndarray | None,
    subset: np.ndarray,
    kind: Kind,
    correction: float,
    config: TrainingConfig,
    seed: int,
) -> Specialist:
    """Initialize, train and bias-correct one specialist (one parallel job).

    Parameters
    ----------
    generalist : torch.nn.Module
        The fitted generalist's network (copied, never modified).
    X : array-like of shape (n, ...)
        The whole transfer set.
    rows : ndarray of int
        The specialist's sample (see :func:`sample_rows`).
    y : ndarray of shape (len(rows),), optional
        Specialist codes (subset position or dustbin ``k``; class codes for ``"full"``),
        ``-1`` unlabeled.
    targets : ndarray of shape (len(rows), out) or (len(rows), M, out), optional
        ``T = 1`` target logits, already shifted by ``-correction`` outside the subset.
    subset, kind, correction
        See :class:`Specialist`.
    config : TrainingConfig
    seed : int
        Seeds the output-layer initialization, shuffling and dropout.
    """
    rows = np.asarray(rows, dtype=np.intp)
    init_rows = rows[np.random.default_rng(seed).permutation(len(rows))[:2048]]
    X_fit = to_model_dtype(take_rows(X, np.sort(init_rows)))
    with seeded(seed):
        module = init_specialist_module(generalist, subset, kind, X_fit, -correction)
    source = SpecialistSource(X, rows, y, targets)
    history = train_student(module, source, np.arange(len(rows)), config, seed=seed)
    _, _, layer = output_layer(module)
    with torch.no_grad():
        if kind == "dustbin":
            layer.bias[-1] += correction
        elif layer.bias is not None:
            outside = np.ones(layer.out_features, dtype=bool)
            outside[np.asarray(subset, dtype=np.int64)] = False
            layer.bias[torch.from_numpy(outside)] += correction
    module.cpu().eval()
    return Specialist(
        subset=np.asarray(subset, dtype=np.intp),
        kind=kind,
        module=module,
        correction=float(correction),
        n_rows=len(rows),
        history=history,
    )
