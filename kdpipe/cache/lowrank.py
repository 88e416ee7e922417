"""Low-rank logit caches: ``r`` coefficients per row and member in a basis stored once per cache.

A teacher with a linear head computes ``z = W h + b``: over ``C`` classes its logits lie in
an affine subspace of dimension at most ``d + 1`` (``d``: its penultimate width), whatever
``C`` is. :class:`LowRank` ``(rank)`` stores, per row and member, the ``rank``
coefficients of ``z - mu`` in an orthonormal basis ``V`` (``rank x C``) of that member,
plus the row's largest reconstruction error; ``mu`` and ``V`` are fitted once, by a
truncated SVD of the centred logits of the transfer set's first ``fit_rows`` rows, before
any chunk is written, and stored beside the chunks (``lowrank_basis.npy``, float32, its
crc32c and the fit rows' sha256 in the manifest; the basis is checked on its first read,
by ``verify`` and before a resume). Reading decodes ``z_hat = mu + c V``: a low-rank
cache serves *dense* logits, so everything a dense cache does (any temperature, both
combines, logit matching, specialists, ``np.asarray``) works from it.

The first rows must represent the data: a transfer set sorted by class fits a basis of
the first classes' logits only, and every later row is stored with a large error (the
build does not fail; the errors say so: :meth:`LowRankLogitCache.reconstruction_errors
<kdpipe.cache.lowrank_reader.LowRankLogitCache.reconstruction_errors>`). Shuffle such
data first.

Bytes: ``rank * value + 4`` per row and member (value: 2 at float16), plus
``4 (rank + 1) C`` per member once. At 5,000 classes ``LowRank(248)`` stores 500 bytes
a row and member, 5% of dense float16, and a 5 MB basis per member: negligible from a
few hundred thousand rows (``benchmarks/results/sparse_lowrank.md``).

Error bound (per row and member, measured, not estimated): the record's ``max_error``
is ``e = max_j |z_j - z_hat_j|``, measured at build between the logits rounded to the
cache's dtype (what a dense cache stores) and the decode the reader runs (exact up to
float32 rounding: the reader's matrix product may take other BLAS kernels). Every class's
soft target at ``T`` is then within a factor ``exp(+-2 e / T)`` of the dense one, so
``||p_hat - p||_1 <= exp(2 e / T) - 1``, and the gradient of the ``T**2``-scaled soft
cross-entropy (``T (q - p)`` in the student's logits) is within ``T (exp(2 e / T) - 1)``
(L1 over the classes) of the dense one. For ``loss="logit_matching"`` the targets are
the logits themselves, each within ``e``. A teacher whose centred logits have rank
``<= rank`` is stored exactly up to the coefficients' rounding.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from kdpipe.errors import (
    CacheChunkMissingError,
    CacheCorruptError,
    InputError,
    TeacherOutputError,
)

__all__ = ["LowRank", "LowRankBasis", "BASIS_NAME", "fit_basis", "read_basis", "write_basis"]

BASIS_NAME = "lowrank_basis.npy"
_BLOCK_VALUES = 2**22  # logits decoded at once (rows x classes)


@dataclass(frozen=True)
class LowRank:
    """Store each row's logits as ``rank`` coefficients in a per-member basis fitted at build.

    Parameters
    ----------
    rank : int
        Coefficients per row and member; ``1 <= rank < C``. ``rank`` at or above the
        teacher's own logit rank (its penultimate width plus one, for a linear head)
        stores the logits exactly up to rounding.
    fit_rows : int, default=4096
        The basis is the top ``rank`` right singular vectors of the centred logits of
        the transfer set's first ``min(fit_rows, n)`` rows (as the teacher scores them,
        without augmentation); they must be more than ``rank`` (centring takes one
        direction) and should represent the data (see the module's notes).
    basis_crc32c : int, optional
        Set by the build: the checksum of the stored basis.
    fit_sha256 : str, optional
        Set by the build: the sha256 of the rows the basis was fitted on (a resume
        refuses other rows). Neither is part of the settings: two ``LowRank`` that differ
        only in these are equal.

    Examples
    --------
    >>> LowRank(248).to_dict()
    {'kind': 'lowrank', 'rank': 248, 'fit_rows': 4096}
    """

    rank: int
    fit_rows: int = 4096
    basis_crc32c: int | None = field(default=None, compare=False, repr=False)
    fit_sha256: str | None = field(default=None, compare=False, repr=False)
    kind: ClassVar[str] = "lowrank"

    def __post_init__(self) -> None:
        for name in ("rank", "fit_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.fit_rows <= self.rank:
            raise ValueError(
                f"fit_rows ({self.fit_rows}) must be more than rank ({self.rank}): the centred "
                f"logits of n rows span at most n - 1 directions"
            )
        crc = self.basis_crc32c
        if crc is not None and (isinstance(crc, bool) or not isinstance(crc, (int, np.integer))):
            raise ValueError(f"basis_crc32c must be an integer, got {crc!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "rank": self.rank, "fit_rows": self.fit_rows}
        if self.basis_crc32c is not None:
            out["basis_crc32c"] = int(self.basis_crc32c)
        if self.fit_sha256 is not None:
            out["fit_sha256"] = str(self.fit_sha256)
        return out

    def check_request(self, *, temperature: float, combine: str, loss: str) -> None:
        """Every request a dense cache serves: a low-rank cache decodes to dense logits."""

    @classmethod
    def for_error(
        cls,
        logits: np.ndarray,
        max_error: float,
        *,
        fit_rows: int = 4096,
        dtype: str = "float32",
    ) -> LowRank:
        """A rank that stores ``logits`` within ``max_error`` where one rank less does not:
        the rank from the teacher's spectrum, not from a byte budget.

        The basis is fitted as the build fits it (:func:`fit_basis` on the first
        ``fit_rows`` rows, the logits rounded to ``dtype``) and each rank is judged as the
        build records it: the largest absolute logit error of every row and member given,
        coefficients rounded to ``dtype``. The rank is found by bisection: it meets
        ``max_error`` and one rank less does not. The error's sum of squares falls with
        the rank, its largest entry only nearly, so a rank further down may rarely meet
        ``max_error`` too. Soft targets at ``T`` are then within a factor
        ``exp(+-2 max_error / T)`` of the dense ones (the bound above): for 1% at
        ``T = 2``, ``max_error = log(1.01) = 0.00995``.

        Decoding costs ``rank`` multiply-adds per class, row and member (in the reader's
        thread), so a rank far above the teacher's (a byte budget's, at many classes) can
        make a fit slower than a dense cache's (``benchmarks/results/sparse_train_timing.md``).

        Parameters
        ----------
        logits : array of shape (n, M, C) or (n, C)
            The teacher's logits of rows like the transfer set's; for the rank to carry over
            to the build, its first rows (the build fits its basis on them).
        max_error : float
            The largest absolute logit error allowed, > 0.
        fit_rows : int, default=4096
            As :class:`LowRank`'s, and returned in it.
        dtype : {"float32", "float16"}, default="float32"
            The cache's dtype (:func:`~kdpipe.build_cache`'s default is float32). Its
            rounding of the coefficients bounds the error from below: float16 keeps
            about three significant digits of each.

        Returns
        -------
        LowRank

        Raises
        ------
        InputError
            Logits that are not finite or not 2-d or 3-d, fewer than 2 rows or classes, or
            no rank below ``C`` (and below the fit rows) that stores the rows within
            ``max_error`` (the message gives the least error a rank reaches).

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> features = rng.normal(size=(500, 6))  # a linear head over 6 features:
        >>> logits = features @ rng.normal(size=(6, 80)) + rng.normal(size=80)  # centred: rank 6
        >>> LowRank.for_error(logits, max_error=1e-3)
        LowRank(rank=6, fit_rows=4096)
        """
        if isinstance(max_error, bool) or not (
            isinstance(max_error, (int, float, np.integer, np.floating)) and 0 < max_error < np.inf
        ):
            raise ValueError(f"max_error must be a positive number, got {max_error!r}")
        cls(rank=1, fit_rows=fit_rows)  # fit_rows checked as the build checks it
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        z = np.asarray(logits)
        if z.ndim == 2:
            z = z[:, None, :]
        if z.ndim != 3:
            raise InputError(f"logits must be (n, C) or (n, M, C), got shape {z.shape}")
        if not np.isfinite(z).all():
            raise InputError("logits must be finite to fit a low-rank basis on them")
        fitted = z[:fit_rows]
        largest = min(len(fitted) - 1, z.shape[2] - 1)
        if largest < 1:
            raise InputError(
                f"a low-rank basis needs at least 2 rows and 2 classes, got logits of shape {z.shape}"
            )
        full = fit_basis(fitted, largest, dtype)
        step = max(1, _BLOCK_VALUES // (z.shape[1] * z.shape[2]))

        def errors(rank: int) -> Iterator[float]:  # block by block
            basis = LowRankBasis(full.mean, full.directions[:, :rank].copy(), dtype)
            for r0 in range(0, len(z), step):
                yield float(basis.encode(z[r0 : r0 + step])[1].max())

        def meets(rank: int) -> bool:  # stops at the first block over
            return all(error <= max_error for error in errors(rank))

        if not meets(largest):
            least = max(errors(largest))
            why = (
                " (at float16 mostly the coefficients' own rounding: a float32 cache keeps more)"
                if dtype == "float16"
                else ""
            )
            raise InputError(
                f"no rank below {largest + 1} stores these logits within max_error={max_error}: "
                f"the least largest error, at rank {largest}, is {least:.3g}{why}. Use a dense "
                "cache, or allow a larger error"
            )
        low, high = 0, largest  # meets(high); rank 0 is not a LowRank
        while high - low > 1:
            middle = (low + high) // 2
            if meets(middle):
                high = middle
            else:
                low = middle
        return cls(rank=high, fit_rows=fit_rows)


@dataclass(frozen=True)
class LowRankBasis:
    """The stored basis of a low-rank cache: each member's mean logits and directions.

    Parameters
    ----------
    mean : ndarray of shape (M, C), float32
    directions : ndarray of shape (M, rank, C), float32
        Orthonormal rows, per member.
    dtype : {"float32", "float16"}
        The cache's dtype: of the stored coefficients.
    """

    mean: np.ndarray
    directions: np.ndarray
    dtype: str

    @property
    def rank(self) -> int:
        return int(self.directions.shape[1])

    def encode(self, logits: np.ndarray, first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients ``(b, M, rank)`` in the cache's dtype and largest errors ``(b, M)``
        float32 of logits ``(b, M, C)`` (rounded to the cache's dtype first, as a dense cache
        stores them); ``first_row`` numbers the rows in an error message."""
        z = np.asarray(logits).astype(self.dtype).astype(np.float32)
        coefficients = np.empty((*z.shape[:2], self.rank), dtype=self.dtype)
        with np.errstate(over="ignore"):  # overflow to float16 inf: refused just below
            for j in range(z.shape[1]):  # one BLAS product per member (einsum is ~4x slower)
                coefficients[:, j] = (z[:, j] - self.mean[j]) @ self.directions[j].T
        finite = np.isfinite(coefficients).all(axis=2)  # |c| can reach sqrt(C) max|z - mu|
        if not finite.all():
            rows, members = np.nonzero(~finite)
            raise TeacherOutputError(
                f"the low-rank coefficients of member {members[0]} for rows "
                f"{', '.join(str(first_row + r) for r in np.unique(rows)[:10])} exceed the "
                f"{self.dtype} range, though their logits do not; build with dtype='float32'"
            )
        error = np.abs(self.decode(coefficients) - z).max(axis=2).astype(np.float32)
        return coefficients, error

    def decode(self, coefficients: np.ndarray) -> np.ndarray:
        """float32 logits ``(b, M, C)`` of coefficients ``(b, M, rank)``."""
        c = np.asarray(coefficients, dtype=np.float32)
        b, m, _ = c.shape
        out = np.empty((b, m, self.mean.shape[1]), dtype=np.float32)
        step = max(1, _BLOCK_VALUES // max(1, m * self.mean.shape[1]))
        for r0 in range(0, b, step):
            for j in range(m):  # into out, then the mean in place: no (rows, C) temporary
                block = out[r0 : r0 + step, j]
                np.matmul(c[r0 : r0 + step, j], self.directions[j], out=block)
                block += self.mean[j]
        return out

    def to_bytes(self) -> bytes:
        """The ``.npy`` bytes of ``(M, rank + 1, C)`` float32: each member's mean, then its directions."""
        stacked = np.concatenate([self.mean[:, None, :], self.directions], axis=1)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(stacked, dtype="<f4"), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, dtype: str) -> LowRankBasis:
        stacked = np.load(io.BytesIO(data), allow_pickle=False)
        return cls(
            mean=np.ascontiguousarray(stacked[:, 0], dtype=np.float32),
            directions=np.ascontiguousarray(stacked[:, 1:], dtype=np.float32),
            dtype=dtype,
        )


def fit_basis(logits: np.ndarray, rank: int, dtype: str) -> LowRankBasis:
    """The basis of :class:`LowRank` from logits ``(n, M, C)``: per member, the mean row and
    the top ``rank`` right singular vectors of the centred rows (logits rounded to ``dtype``).

    Raises
    ------
    InputError
        Fewer than ``rank + 1`` rows, ``rank >= C``, or a member whose logits are the same
        on every row (no direction to fit).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 40))  # 50 rows of rank 3
    >>> logits = z[:, None, :]  # one member
    >>> basis = fit_basis(logits, rank=3, dtype="float32")
    >>> coefficients, max_error = basis.encode(logits)
    >>> coefficients.shape, bool(max_error.max() < 1e-4)
    ((50, 1, 3), True)
    """
    z = np.asarray(logits)
    n, m, c = z.shape
    if n <= rank:
        raise InputError(
            f"LowRank(rank={rank}) fits its basis on the transfer set's first rows, but X has "
            f"{n} rows, whose centred logits span at most {n - 1} directions: use rank < {n}, "
            "or a dense cache"
        )
    if rank >= c:
        raise InputError(
            f"LowRank(rank={rank}) keeps every one of the {c} classes: use rank < {c}, or a "
            "dense cache (sparse=None)"
        )
    mean = np.empty((m, c), dtype=np.float32)
    directions = np.empty((m, rank, c), dtype=np.float32)
    for j in range(m):  # one member's float64 copy at a time
        member = z[:, j].astype(dtype).astype(np.float64)
        centre = member.mean(axis=0)
        # the right singular vectors; the sign of each is whatever LAPACK gives, stored as is
        _, sigma, vt = np.linalg.svd(member - centre, full_matrices=False)
        if sigma[0] == 0:
            raise InputError(
                f"member {j} gives the same logits for each of the first {n} rows, so they span "
                "no direction to fit a low-rank basis on: shuffle X, or use a dense cache"
            )
        mean[j], directions[j] = centre, vt[:rank]
    return LowRankBasis(mean, directions, dtype)


def write_basis(root: Any, basis: LowRankBasis) -> int:
    """Write the basis into the cache folder ``root`` (atomically); return its crc32c."""
    from kdpipe.cache.durable import atomic_write_bytes
    from kdpipe.cache.storage import checksum

    data = basis.to_bytes()
    atomic_write_bytes(root / BASIS_NAME, data)
    return checksum(np.frombuffer(data, dtype=np.uint8))


def read_basis(root: Any, manifest: Any) -> LowRankBasis:
    """The basis of the low-rank cache at ``root``, checked against the manifest's checksum.

    Raises
    ------
    CacheChunkMissingError
        The basis file is absent.
    CacheCorruptError
        It cannot be read (a folder in its place), fails its checksum, or its shape
        disagrees with the manifest.
    """
    from kdpipe.cache.storage import checksum

    path = root / BASIS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CacheChunkMissingError(
            f"the low-rank basis {path} of the cache at {root} is missing: every row's logits "
            "are coefficients in it, so none can be read. Rebuild with overwrite=True"
        ) from None
    except OSError as exc:  # a folder, or a file that cannot be read, in its place
        raise CacheCorruptError(
            f"the low-rank basis {path} of the cache at {root} cannot be read ({exc}): every "
            "row's logits are coefficients in it. Rebuild with overwrite=True"
        ) from exc
    expected = manifest.sparse.get("basis_crc32c")
    if checksum(np.frombuffer(data, dtype=np.uint8)) != expected:
        raise CacheCorruptError(
            f"the low-rank basis {path} of the cache at {root} fails its checksum (crc32c "
            f"recorded {expected}): it was changed or damaged after the build. Rebuild with "
            "overwrite=True"
        )
    basis = LowRankBasis.from_bytes(data, manifest.dtype)
    want = (manifest.n_members, int(manifest.sparse["rank"]), manifest.n_classes)
    if basis.directions.shape != want:
        raise CacheCorruptError(
            f"the low-rank basis {path} has shape {basis.directions.shape}, the manifest says {want}"
        )
    return basis
