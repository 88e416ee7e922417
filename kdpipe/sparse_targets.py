"""Teacher targets in sparse form: what a minibatch carries instead of dense logits.

A sparse logit cache (``build_cache(..., sparse=...)``, see :mod:`kdpipe.cache.sparse`)
reads back, for a minibatch of ``b`` rows, one of two containers; both hold numpy
arrays on the reading side and torch tensors once :meth:`to_torch` moved them to the
training device. ``E`` is the number of *entries* per row: one per ensemble member
(``M``), plus, for an ensemble (``M > 1``), one more entry (the last) made from the
members' mean logits, which serves geometric combination.

- :class:`TopKTargets`: per entry the ``k`` largest raw logits, their classes, and a
  summary of the other ``C - k`` ("tail") logits from which the tail's log-mass at any
  temperature is computed (see :func:`kdpipe.losses.tail_logsumexp`), and how the
  training spreads that mass over the tail classes (``tail_spread``).
- :class:`TopKSampledTargets`: the same, plus a few tail classes drawn from the
  teacher's softmax restricted to the tail, with their counts and logits.
- :class:`SampledTargets`: per entry ``s`` classes drawn from the teacher's softmax at
  one temperature, as distinct classes with their counts.

This module holds data only; the math that uses it is in :mod:`kdpipe.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

__all__ = ["TopKTargets", "TopKSampledTargets", "SampledTargets", "SparseTargets"]


class _RowArrays:
    """Row slicing and device moves shared by the two containers.

    Fields that hold arrays have the rows on their first axis; the other fields are
    plain settings, copied as they are.
    """

    _arrays: ClassVar[tuple[str, ...]] = ()

    def __len__(self) -> int:
        return int(getattr(self, self._arrays[0]).shape[0])

    def __getitem__(self, rows: Any) -> Any:
        """The targets of some rows (a slice, an integer array or a mask)."""
        return replace(self, **{name: getattr(self, name)[rows] for name in self._arrays})  # type: ignore[type-var]

    def to_torch(self, device: Any) -> Any:
        """The same targets as torch tensors on ``device`` (pinned first for a GPU)."""
        import torch

        device = torch.device(device)
        pin = device.type == "cuda"

        def move(a: np.ndarray) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(a))
            if device.type == "cpu":
                return t
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        return replace(self, **{name: move(getattr(self, name)) for name in self._arrays})  # type: ignore[type-var]

    @property
    def n_entries(self) -> int:
        return int(getattr(self, self._arrays[0]).shape[1])


@dataclass(frozen=True)
class TopKTargets(_RowArrays):
    """The ``k`` largest teacher logits of every row and entry, plus a tail summary.

    Attributes
    ----------
    values : array of shape (b, E, k), float32
        The ``k`` largest raw logits, in descending order.
    indices : array of shape (b, E, k), int64
        Their class codes.
    tail_max : array of shape (b, E), float32
        Largest logit of the tail (the ``C - k`` classes not kept).
    tail_mean : array of shape (b, E), float32
        Mean tail logit: the slope of the tail's log-sum-exp at ``1/T = 0``.
    tail_lse : array of shape (b, E, G), float32
        ``log sum_{j in tail} exp(v_j / T_g)`` at each grid temperature ``T_g``.
    tail_slope : array of shape (b, E, G), float32
        ``sum_{j in tail} softmax(v / T_g)_j v_j``: the derivative of ``tail_lse`` with
        respect to ``1/T`` at ``T_g``.
    temperatures : tuple of float
        The grid ``T_g``, descending.
    n_classes : int
        ``C``; the tail holds ``C - k`` classes.
    n_members : int
        ``M``; an ensemble has ``E = M + 1`` entries, the last from the mean logits.
    tail_spread : {"bucket", "uniform", "sampled"}, default="bucket"
        How :func:`kdpipe.losses.sparse_distillation_loss` spreads the tail's mass over
        the tail classes: one bucket whose split the student chooses, an equal share per
        tail class, or by the drawn tail classes (:class:`TopKSampledTargets` only).
    """

    values: Any
    indices: Any
    tail_max: Any
    tail_mean: Any
    tail_lse: Any
    tail_slope: Any
    temperatures: tuple[float, ...]
    n_classes: int
    n_members: int
    tail_spread: str = "bucket"

    _arrays: ClassVar[tuple[str, ...]] = (
        "values",
        "indices",
        "tail_max",
        "tail_mean",
        "tail_lse",
        "tail_slope",
    )

    @property
    def k(self) -> int:
        return int(self.values.shape[-1])


@dataclass(frozen=True, kw_only=True)
class TopKSampledTargets(TopKTargets):
    """Top-k targets plus tail classes drawn from the teacher's softmax over the tail.

    Attributes
    ----------
    tail_indices : array of shape (b, E, s), int64
        Distinct drawn tail classes, packed to the front; padding slots hold class 0.
    tail_counts : array of shape (b, E, s), float32
        How often each was drawn; 0 in padding slots. Every row and entry sums to ``s``.
    tail_values : array of shape (b, E, s), float32
        The teacher's raw logits of the drawn classes (0 in padding slots): they
        reweight the draws to another temperature.
    draw_temperature : float
        ``T_d``: the draws come from ``softmax(v / T_d)`` restricted to the tail.
    tail_draws : int
        ``s``, the number of draws per row and entry.

    The other attributes are those of :class:`TopKTargets`; ``tail_spread`` is
    ``"sampled"``.
    """

    tail_indices: Any
    tail_counts: Any
    tail_values: Any
    draw_temperature: float
    tail_draws: int
    tail_spread: str = "sampled"

    _arrays = (*TopKTargets._arrays, "tail_indices", "tail_counts", "tail_values")


@dataclass(frozen=True)
class SampledTargets(_RowArrays):
    """Classes drawn from the teacher's softmax at one temperature, with their counts.

    Attributes
    ----------
    indices : array of shape (b, E, s), int64
        Distinct drawn classes, packed to the front; padding slots hold class 0.
    counts : array of shape (b, E, s), float32
        How often each was drawn; 0 in padding slots. Every row and entry sums to ``s``.
    temperature : float
        The temperature of the distribution the classes were drawn from.
    draws : int
        ``s``, the number of draws per row and entry.
    n_classes : int
    n_members : int
        ``M``; an ensemble has ``E = M + 1`` entries, the last drawn from
        ``softmax(mean_m(v_m) / T)``.
    """

    indices: Any
    counts: Any
    temperature: float
    draws: int
    n_classes: int
    n_members: int

    _arrays = ("indices", "counts")


SparseTargets = TopKTargets | TopKSampledTargets | SampledTargets
