"""Sparse logit caches: the per-row reduction of a teacher's logits and its stored layout.

A dense cache stores ``C`` logits per row and member: 30 KB a row in float16 at the
15,000 classes of the paper's JFT experiment. A sparse cache stores a fixed-size record
per row and *entry* instead (one entry per member, plus one from the members' mean
logits for an ensemble; see :mod:`kdpipe.sparse_targets`):

- :class:`TopK` ``(k, temperatures, tail, values)``: the ``k`` largest logits and their
  classes (int16, or int32 above 32,767 classes), plus a tail summary in float32: the
  tail's largest and mean logit, and at each grid temperature ``T_g`` the tail's
  log-sum-exp ``f(1/T_g)`` and its slope ``f'(1/T_g)`` (the softmax-weighted mean tail
  logit). ``f(beta) = log sum_tail exp(beta v_j)`` is convex in ``beta = 1/T`` with
  ``f(0) = log(C - k)`` and ``f'(0)`` = the mean, so the tail's log-mass at any ``T``
  is interpolated between grid points (cubic Hermite) and bounded exactly by the
  tangents and chords there (:func:`kdpipe.losses.tail_logsumexp`). ``tail`` says how
  training spreads that mass over the ``C - k`` tail classes: ``"bucket"`` (one bucket
  the student splits as it likes; the default, the only behaviour before issue 21, and
  what a manifest without ``tail`` means) or ``"uniform"`` (an equal share each).
  ``values="float"`` stores the kept logits in the cache's dtype; ``"uint8"`` stores
  8-bit codes on the row's range ``[tail_max, max]`` and that maximum (float32).
  Record bytes: ``k * (value + index bytes) + 8 + 8 * len(temperatures)``, plus 4 for
  ``uint8`` (value bytes 1).
- :class:`TopKSampledTail` ``(k, draws, temperature, temperatures, values, seed)``: a
  top-k record plus ``s = draws`` tail classes drawn with replacement from
  ``softmax(v / T_d)`` restricted to the tail, stored as distinct classes, counts
  (uint16) and their logits (the cache's dtype): ``s * (index + 2 + value bytes)``
  more. The drawn classes carry the tail's mass, unbiased at ``T_d`` and reweighted to
  any other ``T`` (self-normalized importance sampling).
- :class:`Sampled` ``(draws, temperature, seed)``: ``s = draws`` classes drawn with
  replacement from ``softmax(v / T)``, stored as the distinct classes and their counts
  (uint16), ``4 s`` bytes (``6 s`` above 32,767 classes). Their empirical
  distribution is an unbiased estimate of the soft targets at that ``T`` only.
- :class:`~kdpipe.cache.lowrank.LowRank` ``(rank, fit_rows)``: ``rank`` coefficients per
  row and member in a basis fitted once at build and stored beside the chunks
  (:mod:`kdpipe.cache.lowrank`); one entry per member, no mean entry. It decodes to
  dense logits, so it serves everything a dense cache does.

Error bounds (per row and entry, of the ``T**2``-scaled soft term's gradient against the
dense one, L1 over the classes; ``p_tail(T, k)`` is the teacher's mass outside its top
``k`` at ``T``; derivations in :func:`kdpipe.losses.sparse_distillation_loss`):

=============================  ======================================================
format                         gradient error
=============================  ======================================================
TopK, any ``tail``             ``<= 2 T p_tail``; exactly ``2 T p_tail TV(tail shape)``
                               for ``"uniform"`` (TV: total variation between the
                               teacher's tail distribution and the uniform one); plus
                               ``2 T p_tail (e**|delta| - 1)`` off the grid
                               (``delta``: the error of the interpolated log-mass)
``values="uint8"``             adds ``<= T (e**(2h/T) - 1)`` (about ``2h``), ``h`` =
                               half a step, ``(max - tail_max) / 510``
TopKSampledTail                ``<= 2 T p_tail`` (plus the off-grid term); at ``T_d``
                               unbiased (the expected spread is the teacher's tail);
                               elsewhere consistent, bias ``O(1 / draws)``
Sampled                        unbiased at its ``T``, variance ``T**2 p_j (1-p_j) / s``
LowRank                        ``<= T (e**(2 e/T) - 1)``, ``e`` = the row's stored
                               ``max_error``, ``max_j |v_j - v_hat_j|`` (measured at build)
=============================  ======================================================

What each top-k or sampled format can do at fit time (anything else raises
:class:`~kdpipe.errors.SparseFormatError` before training starts; a low-rank cache does
what a dense one does):

=====================  ==========================  ================================
                       TopK, TopKSampledTail       Sampled
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

How each trains at 5,000 classes and 5% of dense float16 bytes (20 epochs, 3 seeds):
``benchmarks/results/sparse_train_accuracy.md`` (T = 4) and ``sparse_train_sweep*.md``
(T = 2 and 8) on a linear teacher; ``sparse_lowrank.md`` (T = 2, 4, 8) on an MLP teacher
of logit rank 513, with ``LowRank(248)`` against top-k at the same bytes a row.

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

from kdpipe.cache.lowrank import LowRank, LowRankBasis
from kdpipe.errors import SparseFormatError, SparseSizeError
from kdpipe.losses import parse_temperature
from kdpipe.sparse_targets import SampledTargets, SparseTargets, TopKSampledTargets, TopKTargets

__all__ = [
    "LowRank",
    "TopK",
    "TopKSampledTail",
    "Sampled",
    "SparseSpec",
    "SparseLayout",
    "parse_sparse",
    "parse_sparse_option",
    "reduce_logits",
]

DEFAULT_GRID = (16.0, 8.0, 4.0, 2.0, 1.0)  # temperatures of the tail summary
_BLOCK_VALUES = 2**21  # logits reduced at once (rows x classes)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


TAIL_SPREADS = ("bucket", "uniform")
VALUE_CODES = ("float", "uint8")


def _parse_choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return str(value)


def _parse_grid(temperatures: Any) -> tuple[float, ...]:
    grid = np.atleast_1d(np.asarray(temperatures, dtype=object))
    if grid.ndim != 1 or len(grid) == 0:
        raise ValueError(f"temperatures must be a non-empty sequence, got {temperatures!r}")
    return tuple(sorted({parse_temperature(t, "each of temperatures") for t in grid}, reverse=True))


def _parse_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _distillation_only(loss: str) -> None:
    if loss != "distillation":
        raise SparseFormatError(
            f"a top-k sparse cache supports loss='distillation' only, not {loss!r}: logit "
            "matching needs every logit"
        )


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
    tail : {"bucket", "uniform"}, default="bucket"
        How training spreads the teacher's tail mass over the ``C - k`` tail classes:
        one bucket whose split among the tail classes the student chooses (its tail
        shape is left free), or an equal share each (the student learns a flat tail:
        no better than the bucket at ``T <= 4`` and worse at ``T = 8``, where the
        teacher's tail holds much mass and is far from flat; see
        ``benchmarks/results/sparse_train_*.md``).
    values : {"float", "uint8"}, default="float"
        How the kept logits are stored: in the cache's dtype, or as 8-bit codes on the
        row's range ``[tail_max, max]`` (one float32 for the maximum more, 3 instead of
        4 bytes per kept class at float16), within half a step
        ``(max - tail_max) / 510`` of the cache dtype's logit.

    Examples
    --------
    >>> TopK(32, tail="uniform").to_dict()["tail"]
    'uniform'
    """

    k: int
    temperatures: tuple[float, ...] = DEFAULT_GRID
    tail: str = "bucket"
    values: str = "float"
    kind: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _positive_int(self.k, "k"))
        object.__setattr__(self, "temperatures", _parse_grid(self.temperatures))
        object.__setattr__(self, "tail", _parse_choice(self.tail, "tail", TAIL_SPREADS))
        object.__setattr__(self, "values", _parse_choice(self.values, "values", VALUE_CODES))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "k": self.k,
            "temperatures": list(self.temperatures),
        }
        if (
            self.tail != "bucket"
        ):  # absent: what every cache before issue 21 is, and older kdpipe reads it
            out["tail"] = self.tail
        if self.values != "float":
            out["values"] = self.values
        return out

    def check_request(self, *, temperature: float, combine: str, loss: str) -> None:
        """Raise :class:`SparseFormatError` unless training can use this format so."""
        _distillation_only(loss)


@dataclass(frozen=True)
class TopKSampledTail:
    """Top-k plus a few tail classes drawn from the teacher's softmax over the tail.

    Parameters
    ----------
    k : int
        Classes kept per row and entry; ``1 <= k < C``.
    draws : int
        Tail classes drawn with replacement per row and entry (at most 65,535), from
        ``softmax(v / temperature)`` restricted to the ``C - k`` tail classes; stored
        as the distinct classes, their counts and their logits.
    temperature : float
        ``T_d`` of the draws. At ``T_d`` the spread of the tail mass over the drawn
        classes is unbiased; at another ``T`` the draws are reweighted by
        ``exp(v_j (1/T - 1/T_d))`` (self-normalized importance sampling: consistent,
        biased by ``O(1 / draws)``), so the temperature can still be swept at fit time.
    temperatures : sequence of float, default=(16, 8, 4, 2, 1)
        Grid of the tail summary, as :class:`TopK`'s.
    values : {"float", "uint8"}, default="float"
        How the kept logits are stored, as :class:`TopK`'s (the drawn classes' logits
        are stored in the cache's dtype).
    seed : int, default=0
        Seeds the draws (chunk ``i`` uses the stream ``[seed, i]``).
    """

    k: int
    draws: int
    temperature: float
    temperatures: tuple[float, ...] = DEFAULT_GRID
    values: str = "float"
    seed: int = 0
    kind: ClassVar[str] = "topk+sampled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", _positive_int(self.k, "k"))
        object.__setattr__(self, "draws", _positive_int(self.draws, "draws"))
        if self.draws > np.iinfo(np.uint16).max:
            raise ValueError(f"draws must be at most 65535, got {self.draws}")
        object.__setattr__(self, "temperature", parse_temperature(self.temperature))
        object.__setattr__(self, "temperatures", _parse_grid(self.temperatures))
        object.__setattr__(self, "values", _parse_choice(self.values, "values", VALUE_CODES))
        object.__setattr__(self, "seed", _parse_seed(self.seed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "k": self.k,
            "draws": self.draws,
            "temperature": self.temperature,
            "temperatures": list(self.temperatures),
            "values": self.values,
            "seed": self.seed,
        }

    def check_request(self, *, temperature: float, combine: str, loss: str) -> None:
        """Raise :class:`SparseFormatError` unless training can use this format so."""
        _distillation_only(loss)


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
        object.__setattr__(self, "seed", _parse_seed(self.seed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "draws": self.draws,
            "temperature": self.temperature,
            "seed": self.seed,
        }

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


SparseSpec = TopK | TopKSampledTail | Sampled | LowRank
_KINDS: dict[str, type[SparseSpec]] = {
    "topk": TopK,
    "topk+sampled": TopKSampledTail,
    "sampled": Sampled,
    "lowrank": LowRank,
}


def parse_sparse(value: Any) -> SparseSpec | None:
    """``None``, a :class:`TopK`, :class:`TopKSampledTail`, :class:`Sampled` or
    :class:`~kdpipe.cache.lowrank.LowRank`, or their ``to_dict()`` form, checked.

    A ``"topk"`` dict without ``tail`` (every one recorded before issue 21) is a
    ``"bucket"`` one.
    """
    if value is None or isinstance(value, (TopK, TopKSampledTail, Sampled, LowRank)):
        return value
    if isinstance(value, dict):
        data = dict(value)
        kind = data.pop("kind", None)
        cls = _KINDS.get(kind)
        if cls is None:
            raise ValueError(
                f"sparse kind must be one of {', '.join(map(repr, _KINDS))}, got {kind!r}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"bad sparse settings {value!r}: {exc}") from None
    raise ValueError(
        f"sparse must be None, kdpipe.cache.TopK(k=...), kdpipe.cache.TopKSampledTail(k=..., "
        f"draws=..., temperature=...), kdpipe.cache.Sampled(draws=..., temperature=...), "
        f"kdpipe.cache.LowRank(rank=...) or a dict of one, got {value!r}"
    )


def parse_sparse_option(text: str) -> SparseSpec:
    """A sparse format from its command-line form (``kdpipe build-cache --sparse``).

    ``topk:K`` (bucket tail), ``topk:K:uniform``, ``topk:K:uint8`` (8-bit values; the
    two suffixes combine, ``topk:K:uniform:uint8``), ``topk:K+DRAWS@T`` (top-k plus
    ``DRAWS`` tail classes drawn at ``T``; ``:uint8`` may follow), ``sampled:DRAWS@T``,
    ``lowrank:R`` (``R`` coefficients in a basis fitted on the first 4,096 rows) or
    ``lowrank:R@ROWS`` (fitted on the first ``ROWS``). A ``ValueError`` names the bad value.

    Examples
    --------
    >>> parse_sparse_option("topk:64")
    TopK(k=64, temperatures=(16.0, 8.0, 4.0, 2.0, 1.0), tail='bucket', values='float')
    >>> parse_sparse_option("sampled:32@4").to_dict()
    {'kind': 'sampled', 'draws': 32, 'temperature': 4.0, 'seed': 0}
    >>> parse_sparse_option("topk:64+32@4:uint8").to_dict()["values"]
    'uint8'
    >>> parse_sparse_option("lowrank:248@8192")
    LowRank(rank=248, fit_rows=8192)
    """
    usage = (
        "use topk:K[:uniform][:uint8], topk:K+DRAWS@T[:uint8], sampled:DRAWS@T or lowrank:R[@ROWS]"
    )
    kind, _, rest = str(text).partition(":")

    def number(value: str, what: str, cast: Any) -> Any:
        try:
            return cast(value)
        except ValueError:
            raise ValueError(
                f"--sparse {text!r}: {what} must be {'an integer' if cast is int else 'a number'}, "
                f"got {value!r}; {usage}"
            ) from None

    try:
        if kind == "lowrank" and rest:
            rank, at, rows = rest.partition("@")
            if not at:
                return LowRank(number(rank, "R", int))
            return LowRank(number(rank, "R", int), number(rows, "ROWS", int))
        if kind == "sampled" and "@" in rest:
            draws, _, t = rest.partition("@")
            return Sampled(number(draws, "DRAWS", int), number(t, "T", float))
        if kind == "topk" and rest:
            head, *options = rest.split(":")
            if len(set(options)) != len(options) or not set(options) <= {"uniform", "uint8"}:
                raise ValueError(
                    f"--sparse {text!r}: unknown or repeated options {options}; {usage}"
                )
            values = "uint8" if "uint8" in options else "float"
            if "+" in head:
                if "uniform" in options or "@" not in head:
                    raise ValueError(f"--sparse {text!r}: {usage}")
                k, _, draw = head.partition("+")
                draws, _, t = draw.partition("@")
                return TopKSampledTail(
                    number(k, "K", int),
                    number(draws, "DRAWS", int),
                    number(t, "T", float),
                    values=values,
                )
            tail = "uniform" if "uniform" in options else "bucket"
            return TopK(number(head, "K", int), tail=tail, values=values)
    except ValueError as exc:
        if str(exc).startswith("--sparse"):
            raise
        raise ValueError(f"--sparse {text!r}: {exc}") from None
    raise ValueError(f"--sparse {text!r} is not a sparse format; {usage}")


def _index_dtype(n_classes: int) -> str:
    return "<i2" if n_classes <= np.iinfo(np.int16).max else "<i4"


def _draw(a: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes drawn from ``softmax(a)`` by inverse CDF of ``u`` ``(b, s)``, per row of
    ``a`` ``(b, n)``: the distinct classes packed to the front and their counts (0, and
    class 0, in unused slots), both ``(b, s)`` int64."""
    b, c = a.shape
    s = u.shape[1]
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
    return indices, counts


@dataclass(frozen=True)
class SparseLayout:
    """How one cache's records are computed, laid out and read back.

    Parameters
    ----------
    spec : TopK, TopKSampledTail, Sampled or LowRank
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
        value = "<f2" if self.dtype == "float16" else "<f4"
        spec = self.spec
        if isinstance(spec, LowRank):
            if spec.rank >= c:
                raise SparseSizeError(
                    f"LowRank(rank={spec.rank}) keeps as many values as the {c} classes: use "
                    f"rank < {c}, or a dense cache (sparse=None)"
                )
            record = np.dtype([("coefficients", value, (spec.rank,)), ("max_error", "<f4")])
        elif isinstance(spec, (TopK, TopKSampledTail)):
            if spec.k >= c:
                raise SparseSizeError(
                    f"{type(spec).__name__}(k={spec.k}) keeps every one of the {c} classes: use "
                    f"k < {c}, or a dense cache (sparse=None)"
                )
            k, g = spec.k, len(spec.temperatures)
            head: list[tuple[Any, ...]] = (
                [("values", "u1", (k,)), ("head_max", "<f4")]
                if spec.values == "uint8"
                else [("values", value, (k,))]
            )
            fields = head + [
                ("indices", idx, (k,)),
                ("tail_max", "<f4"),
                ("tail_mean", "<f4"),
                ("tail_lse", "<f4", (g,)),
                ("tail_slope", "<f4", (g,)),
            ]
            if isinstance(spec, TopKSampledTail):
                s = spec.draws
                fields += [
                    ("tail_indices", idx, (s,)),
                    ("tail_counts", "<u2", (s,)),
                    ("tail_values", value, (s,)),
                ]
            record = np.dtype(fields)
        else:
            s = spec.draws
            record = np.dtype([("indices", idx, (s,)), ("counts", "<u2", (s,))])
        object.__setattr__(self, "record", record)

    @property
    def n_entries(self) -> int:
        """Entries per row: the members, plus their mean for an ensemble (not for
        :class:`LowRank`, whose decoded members' mean is the mean logits)."""
        if isinstance(self.spec, LowRank):
            return self.n_members
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
        if not isinstance(self.spec, (Sampled, TopKSampledTail)):
            return None
        key = [self.spec.seed, int(chunk)] + ([] if view is None else [int(view)])
        rng = np.random.default_rng(key)
        return rng.random((rows, self.n_entries, self.spec.draws))

    def encode(
        self,
        logits: np.ndarray,
        uniforms: np.ndarray | None = None,
        basis: LowRankBasis | None = None,
    ) -> np.ndarray:
        """Records ``(b, E, record bytes)`` uint8 of raw logits ``(b, M, C)``.

        ``uniforms`` ``(b, E, s)`` in [0, 1) drive the draws of a sampled layout;
        ``basis`` is the stored basis of a :class:`LowRank` one.
        """
        v = np.asarray(logits).astype(self.dtype).astype(np.float64)  # as a dense cache stores them
        if v.ndim != 3 or v.shape[1:] != (self.n_members, self.n_classes):
            raise ValueError(
                f"logits must have shape (b, {self.n_members}, {self.n_classes}), got {v.shape}"
            )
        out = np.zeros((v.shape[0], self.n_entries), dtype=self.record)
        if isinstance(self.spec, LowRank):
            if basis is None:
                raise ValueError("a LowRank layout encodes with its cache's basis")
            out["coefficients"], out["max_error"] = basis.encode(v)
            return out.view(np.uint8).reshape(v.shape[0], self.n_entries, self.record.itemsize)
        step = max(
            1, _BLOCK_VALUES // self.n_classes
        )  # float64 temporaries of ~16 MB, not (b, C) ones
        for r0 in range(0, v.shape[0], step):
            rows = slice(r0, r0 + step)
            for e in range(self.n_entries):
                ve = v[rows, e] if e < self.n_members else v[rows].mean(axis=1)  # (rows, C)
                u = None if uniforms is None else uniforms[rows, e]
                block = out[rows, e]
                if isinstance(self.spec, Sampled):
                    assert u is not None
                    block["indices"], block["counts"] = _draw(ve / self.spec.temperature, u)
                else:
                    self._encode_topk(ve, block, u)
                out[rows, e] = block
        return out.view(np.uint8).reshape(v.shape[0], self.n_entries, self.record.itemsize)

    def _encode_topk(self, v: np.ndarray, out: np.ndarray, u: np.ndarray | None) -> None:
        spec = self.spec
        assert isinstance(spec, (TopK, TopKSampledTail))
        k, c = spec.k, self.n_classes
        part = np.argpartition(-v, k - 1, axis=1)  # (b, C): the first k are the head, unordered
        order = np.argsort(-np.take_along_axis(v, part[:, :k], axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part[:, :k], order, axis=1)  # (b, k), descending
        values = np.take_along_axis(v, top, axis=1)
        out["indices"] = top
        tail = np.ones(v.shape, dtype=bool)
        np.put_along_axis(tail, top, False, axis=1)
        tv = np.where(tail, v, -np.inf)  # (b, C), head masked out
        tail_max = tv.max(axis=1).astype(np.float32)
        out["tail_max"] = tail_max
        if spec.values == "uint8":
            head_max = values[:, 0].astype(np.float32)
            out["head_max"] = head_max
            step = (head_max.astype(np.float64) - tail_max) / 255  # as decode computes it
            safe = np.where(step > 0, step, 1.0)[:, None]
            out["values"] = np.clip(np.rint((head_max[:, None] - values) / safe), 0, 255)
        else:
            out["values"] = values
        out["tail_mean"] = np.where(tail, v, 0.0).sum(axis=1) / (c - k)
        for g, t in enumerate(spec.temperatures):
            a = tv / t
            top_a = a.max(axis=1, keepdims=True)
            w = np.exp(a - top_a)  # 0 on the head
            total = w.sum(axis=1)
            out["tail_lse"][:, g] = top_a[:, 0] + np.log(total)
            out["tail_slope"][:, g] = (w * np.where(tail, v, 0.0)).sum(axis=1) / total
        if isinstance(spec, TopKSampledTail):
            assert u is not None
            tail_classes = part[:, k:]  # (b, C - k), unordered
            tail_logits = np.take_along_axis(v, tail_classes, axis=1)
            slots, counts = _draw(tail_logits / spec.temperature, u)
            used = counts > 0
            out["tail_indices"] = np.where(used, np.take_along_axis(tail_classes, slots, axis=1), 0)
            out["tail_counts"] = counts
            out["tail_values"] = np.where(used, np.take_along_axis(tail_logits, slots, axis=1), 0.0)

    # -- read side

    def _records(self, raw: np.ndarray) -> np.ndarray:
        """Structured records ``(b, E)`` of stored bytes ``(b, E, record bytes)``."""
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if raw.ndim != 3 or raw.shape[1:] != self.row_shape:
            raise ValueError(
                f"records must have shape (b, {self.row_shape[0]}, {self.row_shape[1]}), got {raw.shape}"
            )
        return raw.view(self.record)[..., 0]

    def decode_logits(self, raw: np.ndarray, basis: LowRankBasis) -> np.ndarray:
        """float32 logits ``(b, M, C)`` of a :class:`LowRank` layout's stored records."""
        return basis.decode(self._records(raw)["coefficients"])

    def decode_errors(self, raw: np.ndarray) -> np.ndarray:
        """The largest logit error ``(b, M)`` float32 of each stored :class:`LowRank` record."""
        return self._records(raw)["max_error"].astype(np.float32)

    def decode(self, raw: np.ndarray) -> SparseTargets:
        """Targets of stored records ``(b, E, record bytes)`` uint8 (not of a :class:`LowRank`
        layout, whose records decode to dense logits: :meth:`decode_logits`)."""
        rec = self._records(raw)  # (b, E)
        spec = self.spec
        if isinstance(spec, LowRank):
            raise SparseFormatError("a low-rank cache decodes to dense logits (decode_logits)")
        if isinstance(spec, Sampled):
            return SampledTargets(
                indices=rec["indices"].astype(np.int64),
                counts=rec["counts"].astype(np.float32),
                temperature=spec.temperature,
                draws=spec.draws,
                n_classes=self.n_classes,
                n_members=self.n_members,
            )
        tail_max = rec["tail_max"].astype(np.float32)
        if spec.values == "uint8":
            head_max = rec["head_max"].astype(np.float64)
            step = (head_max - tail_max) / 255
            values = (head_max[..., None] - rec["values"] * step[..., None]).astype(np.float32)
        else:
            values = rec["values"].astype(np.float32)
        common: dict[str, Any] = {
            "values": values,
            "indices": rec["indices"].astype(np.int64),
            "tail_max": tail_max,
            "tail_mean": rec["tail_mean"].astype(np.float32),
            "tail_lse": rec["tail_lse"].astype(np.float32),
            "tail_slope": rec["tail_slope"].astype(np.float32),
            "temperatures": spec.temperatures,
            "n_classes": self.n_classes,
            "n_members": self.n_members,
        }
        if isinstance(spec, TopKSampledTail):
            return TopKSampledTargets(
                **common,
                tail_indices=rec["tail_indices"].astype(np.int64),
                tail_counts=rec["tail_counts"].astype(np.float32),
                tail_values=rec["tail_values"].astype(np.float32),
                draw_temperature=spec.temperature,
                tail_draws=spec.draws,
            )
        return TopKTargets(**common, tail_spread=spec.tail)

    def info(self) -> dict[str, Any]:
        """The settings, entries and record bytes, for :meth:`kdpipe.LogitCache.info`."""
        return {
            **self.spec.to_dict(),
            "entries": self.n_entries,
            "record_bytes": self.record.itemsize,
        }


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
    if isinstance(spec, LowRank):
        raise TypeError(
            "LowRank stores dense logits through a basis: kdpipe.cache.lowrank.fit_basis(logits, "
            "rank, dtype) gives its encode and decode"
        )
    layout = SparseLayout(spec, dtype, v.shape[2], v.shape[1])
    return layout.decode(layout.encode(v, layout.uniforms(chunk, v.shape[0])))
