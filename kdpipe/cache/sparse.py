"""Sparse logit caches: the per-row reduction of a teacher's logits and its stored layout.

A dense cache stores ``C`` logits per row and member: 30 KB a row in float16 at the
15,000 classes of the paper's JFT experiment. A sparse cache stores a fixed-size record
per row and *entry* instead (one entry per member, plus one from the members' mean
logits for an ensemble; see :mod:`kdpipe.sparse_targets`):

- :class:`TopK` ``(k, temperatures)``: the ``k`` largest logits (in the cache's dtype)
  and their classes (int16, or int32 above 32,767 classes), plus a tail summary in
  float32: the tail's largest and mean logit, and at each grid temperature ``T_g`` the
  tail's log-sum-exp ``f(1/T_g)`` and its slope ``f'(1/T_g)`` (the softmax-weighted
  mean tail logit). ``f(beta) = log sum_tail exp(beta v_j)`` is convex in ``beta = 1/T``
  with ``f(0) = log(C - k)`` and ``f'(0)`` = the mean, so the tail's log-mass at any
  ``T`` is interpolated between grid points (cubic Hermite) and bounded exactly by
  the tangents and chords there (:func:`kdpipe.losses.tail_logsumexp`). Record bytes:
  ``k * (value + index bytes) + 8 + 8 * len(temperatures)``.
- :class:`Sampled` ``(draws, temperature, seed)``: ``s = draws`` classes drawn with
  replacement from ``softmax(v / T)``, stored as the distinct classes and their counts
  (uint16), ``4 s`` bytes (``6 s`` above 32,767 classes). Their empirical
  distribution is an unbiased estimate of the soft targets at that ``T`` only.

What each format can do at fit time (anything else raises
:class:`~kdpipe.errors.SparseFormatError` before training starts):

=====================  ==========================  ================================
                       TopK                        Sampled
=====================  ==========================  ================================
temperature            any (error stated in        the build temperature only
                       ``sparse_distillation_loss``)
combine="arithmetic"   yes: mean of the members'   yes: mean of the members'
                       soft terms                  unbiased estimates
combine="geometric"    yes: the mean-logit entry   yes: draws from the mean-logit
                                                   softmax
loss="logit_matching"  no (needs every logit)      no
specialists            no (their subset targets    no
                       need every subset logit)
dense reads            no (``np.asarray(cache)``   no
                       raises)
=====================  ==========================  ================================

On disk a chunk of records is a ``uint8`` array ``(rows, E, record bytes)`` in the same
chunk stores, with the same checksums, as dense logits (``Manifest.row_shape``); the
settings are recorded in the manifest (``Manifest.sparse``) and are part of what a
resume compares. Everything is computed from the logits rounded to the cache's dtype,
so a sparse cache is an exact function of the dense cache of the same dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from kdpipe.errors import InputError, SparseFormatError
from kdpipe.losses import parse_temperature
from kdpipe.sparse_targets import SampledTargets, SparseTargets, TopKTargets

__all__ = ["TopK", "Sampled", "SparseSpec", "SparseLayout", "parse_sparse", "reduce_logits"]

DEFAULT_GRID = (16.0, 8.0, 4.0, 2.0, 1.0)  # temperatures of the tail summary
_BLOCK_VALUES = 2**21  # logits reduced at once (rows x classes)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` largest logits per row and entry, plus a tail summary.

    Parameters
    ----------
    k : int
        Classes kept per row and entry; ``1 <= k < C``.
    temperatures : sequence of float, default=(16, 8, 4, 2, 1)
        Grid of the tail summary. The tail's log-mass is exact at these temperatures
        and as ``T -> inf``, interpolated between them and extrapolated below the
        smallest (with exact bounds either way). Training temperatures inside the grid
        lose least.
    """

    k: int
    temperatures: tuple[float, ...] = DEFAULT_GRID
    kind: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _positive_int(self.k, "k"))
        grid = np.atleast_1d(np.asarray(self.temperatures, dtype=object))
        if grid.ndim != 1 or len(grid) == 0:
            raise ValueError(f"temperatures must be a non-empty sequence, got {self.temperatures!r}")
        values = sorted({parse_temperature(t, "each of temperatures") for t in grid}, reverse=True)
        object.__setattr__(self, "temperatures", tuple(values))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "temperatures": list(self.temperatures)}

    def check_request(self, *, temperature: float, combine: str, loss: str) -> None:
        """Raise :class:`SparseFormatError` unless training can use this format so."""
        if loss != "distillation":
            raise SparseFormatError(
                f"a top-k sparse cache supports loss='distillation' only, not {loss!r}: logit "
                "matching needs every logit"
            )


@dataclass(frozen=True)
class Sampled:
    """Draw classes from the teacher's softmax at one temperature (RS-KD style).

    Parameters
    ----------
    draws : int
        Classes drawn with replacement per row and entry (at most 65,535).
    temperature : float
        The temperature of the distribution drawn from; training must use it.
    seed : int, default=0
        Seeds the draws (chunk ``i`` uses the stream ``[seed, i]``, so a resumed build
        draws what an uninterrupted one would).
    """

    draws: int
    temperature: float
    seed: int = 0
    kind: ClassVar[str] = "sampled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "draws", _positive_int(self.draws, "draws"))
        if self.draws > np.iinfo(np.uint16).max:
            raise ValueError(f"draws must be at most 65535, got {self.draws}")
        object.__setattr__(self, "temperature", parse_temperature(self.temperature))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "draws": self.draws, "temperature": self.temperature, "seed": self.seed}

    def check_request(self, *, temperature: float, combine: str, loss: str) -> None:
        """Raise :class:`SparseFormatError` unless training can use this format so."""
        if loss != "distillation":
            raise SparseFormatError(
                f"a sampled sparse cache supports loss='distillation' only, not {loss!r}: logit "
                "matching needs every logit"
            )
        if not math.isclose(float(temperature), self.temperature, rel_tol=1e-9):
            raise SparseFormatError(
                f"this sampled cache drew its classes at temperature {self.temperature:g}; its "
                f"gradient is unbiased only there, not at temperature {float(temperature):g}. "
                f"Train at temperature={self.temperature:g}, or build a top-k cache "
                "(sparse=TopK(k)) to choose the temperature at fit time"
            )


SparseSpec = TopK | Sampled


def parse_sparse(value: Any) -> SparseSpec | None:
    """``None``, a :class:`TopK` or :class:`Sampled`, or their ``to_dict()`` form, checked."""
    if value is None or isinstance(value, (TopK, Sampled)):
        return value
    if isinstance(value, dict):
        data = dict(value)
        kind = data.pop("kind", None)
        cls = {"topk": TopK, "sampled": Sampled}.get(kind)  # type: ignore[arg-type]
        if cls is None:
            raise ValueError(f"sparse kind must be 'topk' or 'sampled', got {kind!r}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"bad sparse settings {value!r}: {exc}") from None
    raise ValueError(
        f"sparse must be None, kdpipe.cache.TopK(k=...), kdpipe.cache.Sampled(draws=..., "
        f"temperature=...) or a dict of one, got {value!r}"
    )


def _index_dtype(n_classes: int) -> str:
    return "<i2" if n_classes <= np.iinfo(np.int16).max else "<i4"


@dataclass(frozen=True)
class SparseLayout:
    """How one cache's records are computed, laid out and read back.

    Parameters
    ----------
    spec : TopK or Sampled
    dtype : {"float32", "float16"}
        The cache's dtype: of the stored top-k values, and the rounding of every logit
        before it is reduced.
    n_classes : int
    n_members : int
    """

    spec: SparseSpec
    dtype: str
    n_classes: int
    n_members: int
    record: np.dtype = field(init=False)

    def __post_init__(self) -> None:
        c = self.n_classes
        idx = _index_dtype(c)
        if isinstance(self.spec, TopK):
            if self.spec.k >= c:
                raise InputError(
                    f"TopK(k={self.spec.k}) keeps every one of the {c} classes: use k < {c}, "
                    "or a dense cache (sparse=None)"
                )
            k, g = self.spec.k, len(self.spec.temperatures)
            value = "<f2" if self.dtype == "float16" else "<f4"
            record = np.dtype([
                ("values", value, (k,)), ("indices", idx, (k,)), ("tail_max", "<f4"),
                ("tail_mean", "<f4"), ("tail_lse", "<f4", (g,)), ("tail_slope", "<f4", (g,)),
            ])
        else:
            s = self.spec.draws
            record = np.dtype([("indices", idx, (s,)), ("counts", "<u2", (s,))])
        object.__setattr__(self, "record", record)

    @property
    def n_entries(self) -> int:
        """Entries per row: the members, plus their mean for an ensemble."""
        return self.n_members + (self.n_members > 1)

    @property
    def row_shape(self) -> tuple[int, int]:
        """Shape of one stored row: ``(entries, record bytes)`` of uint8."""
        return (self.n_entries, self.record.itemsize)

    @property
    def bytes_per_row(self) -> int:
        return self.n_entries * self.record.itemsize

    # -- build side

    def uniforms(self, chunk: int, rows: int, view: int | None = None) -> np.ndarray | None:
        """The uniform variates of chunk ``chunk``'s draws, ``(rows, E, s)``; None for top-k.

        View ``view`` of a views cache draws from the stream ``[seed, chunk, view]``.
        """
        if not isinstance(self.spec, Sampled):
            return None
        key = [self.spec.seed, int(chunk)] + ([] if view is None else [int(view)])
        rng = np.random.default_rng(key)
        return rng.random((rows, self.n_entries, self.spec.draws))

    def encode(self, logits: np.ndarray, uniforms: np.ndarray | None = None) -> np.ndarray:
        """Records ``(b, E, record bytes)`` uint8 of raw logits ``(b, M, C)``.

        ``uniforms`` ``(b, E, s)`` in [0, 1) drive the draws of a sampled layout.
        """
        v = np.asarray(logits).astype(self.dtype).astype(np.float64)  # as a dense cache stores them
        if v.ndim != 3 or v.shape[1:] != (self.n_members, self.n_classes):
            raise ValueError(f"logits must have shape (b, {self.n_members}, {self.n_classes}), got {v.shape}")
        out = np.zeros((v.shape[0], self.n_entries), dtype=self.record)
        step = max(1, _BLOCK_VALUES // self.n_classes)  # float64 temporaries of ~16 MB, not (b, C) ones
        for r0 in range(0, v.shape[0], step):
            rows = slice(r0, r0 + step)
            for e in range(self.n_entries):
                ve = v[rows, e] if e < self.n_members else v[rows].mean(axis=1)  # (rows, C)
                if isinstance(self.spec, TopK):
                    self._encode_topk(ve, out[rows, e])
                else:
                    assert uniforms is not None
                    self._encode_sampled(ve, uniforms[rows, e], out[rows, e])
        return out.view(np.uint8).reshape(v.shape[0], self.n_entries, self.record.itemsize)

    def _encode_topk(self, v: np.ndarray, out: np.ndarray) -> None:
        assert isinstance(self.spec, TopK)
        k, c = self.spec.k, self.n_classes
        part = np.argpartition(-v, k - 1, axis=1)[:, :k]  # (b, k), unordered
        order = np.argsort(-np.take_along_axis(v, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)  # (b, k), descending
        out["values"] = np.take_along_axis(v, top, axis=1)
        out["indices"] = top
        tail = np.ones(v.shape, dtype=bool)
        np.put_along_axis(tail, top, False, axis=1)
        tv = np.where(tail, v, -np.inf)  # (b, C), head masked out
        out["tail_max"] = tv.max(axis=1)
        out["tail_mean"] = np.where(tail, v, 0.0).sum(axis=1) / (c - k)
        for g, t in enumerate(self.spec.temperatures):
            a = tv / t
            top_a = a.max(axis=1, keepdims=True)
            w = np.exp(a - top_a)  # 0 on the head
            total = w.sum(axis=1)
            out["tail_lse"][:, g] = top_a[:, 0] + np.log(total)
            out["tail_slope"][:, g] = (w * np.where(tail, v, 0.0)).sum(axis=1) / total

    def _encode_sampled(self, v: np.ndarray, u: np.ndarray, out: np.ndarray) -> None:
        assert isinstance(self.spec, Sampled)
        b, c = v.shape
        s = self.spec.draws
        a = v / self.spec.temperature
        p = np.exp(a - a.max(axis=1, keepdims=True))
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = 1.0
        # one sorted search for every row: row r's cdf shifted into [r, r + 1]
        offset = np.arange(b, dtype=np.float64)[:, None]
        found = np.searchsorted((cdf + offset).ravel(), (u + offset).ravel(), side="right")
        drawn = np.minimum(found.reshape(b, s) - np.arange(b)[:, None] * c, c - 1)
        drawn.sort(axis=1)
        first = np.ones((b, s), dtype=bool)
        first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
        slot = np.cumsum(first, axis=1) - 1  # (b, s): slot of each draw's class
        rows = np.repeat(np.arange(b), s).reshape(b, s)
        counts = np.zeros((b, s), dtype=np.int64)
        np.add.at(counts, (rows, slot), 1)
        indices = np.zeros((b, s), dtype=np.int64)
        indices[rows[first], slot[first]] = drawn[first]
        out["indices"] = indices
        out["counts"] = counts

    # -- read side

    def decode(self, raw: np.ndarray) -> SparseTargets:
        """Targets of stored records ``(b, E, record bytes)`` uint8."""
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if raw.ndim != 3 or raw.shape[1:] != self.row_shape:
            raise ValueError(f"records must have shape (b, {self.row_shape[0]}, {self.row_shape[1]}), got {raw.shape}")
        rec = raw.view(self.record)[..., 0]  # (b, E)
        if isinstance(self.spec, TopK):
            return TopKTargets(
                values=rec["values"].astype(np.float32),
                indices=rec["indices"].astype(np.int64),
                tail_max=rec["tail_max"].astype(np.float32),
                tail_mean=rec["tail_mean"].astype(np.float32),
                tail_lse=rec["tail_lse"].astype(np.float32),
                tail_slope=rec["tail_slope"].astype(np.float32),
                temperatures=self.spec.temperatures,
                n_classes=self.n_classes,
                n_members=self.n_members,
            )
        return SampledTargets(
            indices=rec["indices"].astype(np.int64),
            counts=rec["counts"].astype(np.float32),
            temperature=self.spec.temperature,
            draws=self.spec.draws,
            n_classes=self.n_classes,
            n_members=self.n_members,
        )

    def info(self) -> dict[str, Any]:
        """The settings, entries and record bytes, for :meth:`kdpipe.LogitCache.info`."""
        return {**self.spec.to_dict(), "entries": self.n_entries, "record_bytes": self.record.itemsize}


def reduce_logits(
    logits: Any, sparse: Any, *, dtype: str = "float32", chunk: int = 0
) -> SparseTargets:
    """Sparse targets of in-memory logits, exactly as a sparse cache would store them.

    Parameters
    ----------
    logits : array-like of shape (n, C) or (n, M, C)
    sparse : TopK, Sampled or dict
    dtype : {"float32", "float16"}, default="float32"
        The cache dtype to round to first.
    chunk : int, default=0
        The chunk number whose draws a sampled layout uses.

    Returns
    -------
    TopKTargets or SampledTargets

    Examples
    --------
    >>> import numpy as np
    >>> from kdpipe.cache import Sampled, TopK
    >>> from kdpipe.cache.sparse import reduce_logits
    >>> logits = np.array([[4.0, 1.0, 0.5, -2.0, 3.0]])  # one row, five classes
    >>> top = reduce_logits(logits, TopK(k=2, temperatures=(1.0,)))
    >>> top.indices.tolist(), top.values.tolist()
    ([[[0, 4]]], [[[4.0, 3.0]]])
    >>> round(float(top.tail_lse[0, 0, 0]), 4)  # log(e**1 + e**0.5 + e**-2)
    1.5046
    >>> drawn = reduce_logits(logits, Sampled(draws=100, temperature=2.0))
    >>> int(drawn.counts.sum())
    100
    """
    v = np.asarray(logits, dtype=np.float32)
    if v.ndim == 2:
        v = v[:, None, :]
    spec = parse_sparse(sparse)
    if spec is None:
        raise ValueError("sparse must name a sparse format, got None")
    layout = SparseLayout(spec, dtype, v.shape[2], v.shape[1])
    return layout.decode(layout.encode(v, layout.uniforms(chunk, v.shape[0])))
