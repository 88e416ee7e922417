"""Check that the rows (and labels) a caller trains on are the rows a cache was built from.

A cache stores a 64-bit digest of every input row (:func:`kdpipe.cache.fingerprint.row_digests`).
:func:`check_alignment` recomputes the digests of the rows it is given (all of them, or a
random sample) and compares them with the stored ones; where both the caller and the
cache label a row, the labels must agree too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kdpipe.cache.fingerprint import row_digests
from kdpipe.cache.reader import LogitCache
from kdpipe.errors import RowMismatchError
from kdpipe.rows import take_rows

__all__ = ["check_alignment", "check_fit_alignment"]

_SHOWN = 5  # rows named in an error message


def check_alignment(
    cache_view: Any,
    read_rows: Callable[[np.ndarray], np.ndarray],
    y_codes: Any = None,
    *,
    sample: int = 1024,
    rng: Any = None,
    transformed: bool = False,
) -> None:
    """Raise :class:`~kdpipe.errors.RowMismatchError` when X or y do not line up with ``cache_view``.

    Parameters
    ----------
    cache_view : LogitCache
        The cache, or the row subset of it, whose row ``i`` should hold the logits of
        row ``i`` of the caller's X.
    read_rows : callable
        ``read_rows(positions) -> ndarray``: the rows of the caller's X at ``positions``
        (sorted int64 positions into the view), first axis = rows.
    y_codes : array-like of int, optional
        The caller's labels encoded in the cache's class order (``cache_view.classes``),
        ``-1`` for unlabeled rows; one per row of the view.
    sample : int
        Check every row when the view has at most ``sample`` rows, else ``sample`` rows
        drawn at random without replacement.
    rng : int, numpy Generator or None
        Seed or generator of the sample.
    transformed : bool, default=False
        The caller's rows are a transform of the rows that made the cache (an earlier
        ``Pipeline`` step scaled, clipped or projected them), so their bytes may not
        match: a row found nowhere in the cache is not an error (the labels are still
        checked), a row found at another position still is. False: every checked row
        must be the cache's row at its position.

    Raises
    ------
    RowMismatchError
        Some checked row of X is another row of the cache (the message names both), or
        matches no row of the cache (unless ``transformed``); or a row labeled both by
        ``y_codes`` and by the cache has two different labels.

    Notes
    -----
    Rows are compared by their bytes in the dtype the cache was built from
    (``manifest.data_dtype``; the rows read are cast to it). Rows whose values that dtype
    cannot hold (uint8 images scaled to [0, 1], for example) match no row. Caches built
    before row digests existed (format 1) are checked by their labels only.

    The cost is one read of the sampled rows and a hash of their bytes; the stored
    digests (8 bytes a row) are read once per cache handle.
    """
    n = len(cache_view)
    _check_rows(cache_view, read_rows, n, sample, rng, transformed)  # first: it names rows
    if y_codes is not None:
        _check_labels(cache_view, np.asarray(y_codes), n)


def _check_rows(
    cache_view: Any,
    read_rows: Callable[[np.ndarray], np.ndarray],
    n: int,
    sample: int,
    rng: Any,
    transformed: bool,
) -> None:
    digests = cache_view.row_digests
    if digests is None or n == 0:
        return
    if n <= sample:
        positions = np.arange(n, dtype=np.int64)
    else:
        positions = np.sort(
            np.random.default_rng(rng).choice(n, size=sample, replace=False)
        ).astype(np.int64)
    rows = np.asarray(read_rows(positions))
    if rows.ndim == 0 or len(rows) != len(positions):
        raise ValueError(
            f"read_rows returned {np.shape(rows)[:1]} rows for {len(positions)} positions"
        )
    built = np.dtype(cache_view.manifest.data_dtype)
    try:
        cast = rows.astype(built, copy=False)
    except (TypeError, ValueError):  # another kind of data altogether: no row can match
        cast = None
    if cast is None or (
        cast.dtype != rows.dtype and not np.array_equal(cast.astype(rows.dtype), rows)
    ):
        # values the build's dtype cannot hold (e.g. uint8 images scaled to [0, 1])
        if not transformed:
            raise _no_row_matches(
                cache_view, len(positions), f"their values are not {built} values"
            )
        return
    got = row_digests(cast)
    wrong = got != digests[positions]
    if not wrong.any():
        return
    _explain(cache_view, positions, got, wrong, transformed)


def _no_row_matches(cache_view: Any, checked: int, why: str) -> RowMismatchError:
    return RowMismatchError(
        f"none of the {checked} checked rows of X is a row of the cache at {cache_view.path} "
        f"({why}): X holds other data, or a transform of the rows that made the cache (an earlier "
        "Pipeline step such as a scaler). For a transform, set rows_transformed=True on the "
        "estimator (transformed=True in check_alignment): it then checks the labels only"
    )


def check_fit_alignment(
    X: Any, y_codes: np.ndarray | None, teacher_logits: Any, *, seed: int, transformed: bool = False
) -> None:
    """The check an estimator's ``fit`` runs: are ``X`` and ``y`` the rows of its cache?

    Does nothing unless ``teacher_logits`` is a :class:`~kdpipe.LogitCache` (or a row
    subset of one, as cross-validation passes); arrays of logits carry no record of
    their rows. ``X`` is numpy or anything :func:`kdpipe.rows.take_rows` reads;
    ``transformed`` is the estimator's ``rows_transformed`` (see :func:`check_alignment`).
    """
    if isinstance(teacher_logits, LogitCache):
        check_alignment(
            teacher_logits,
            lambda positions: take_rows(X, positions),
            y_codes,
            rng=seed,
            transformed=transformed,
        )


def _check_labels(cache_view: Any, y: np.ndarray, n: int) -> None:
    if y.shape != (n,):
        raise RowMismatchError(f"y has shape {y.shape} but the cache view has {n} rows")
    stored = cache_view.labels
    both = (y >= 0) & (stored >= 0)
    bad = np.flatnonzero(both & (y != stored))
    if bad.size == 0:
        return
    classes = cache_view.classes
    shown = "; ".join(
        f"row {i}: y says {classes[y[i]].item()!r}, the cache says {classes[stored[i]].item()!r}"
        for i in bad[:_SHOWN]
    )
    more = f" (and {bad.size - _SHOWN} more)" if bad.size > _SHOWN else ""
    raise RowMismatchError(
        f"{bad.size} of the {int(both.sum())} rows labeled both in y and in the cache disagree: {shown}{more}. "
        "y is not in the order of the rows the cache was built from"
    )


def _explain(
    cache_view: Any, positions: np.ndarray, got: np.ndarray, wrong: np.ndarray, transformed: bool
) -> None:
    """Name the rows whose digest is wrong: found elsewhere in the cache, or nowhere."""
    # the whole cache, not the view: a row may come from outside it (another CV fold)
    whole = LogitCache.open(cache_view.path, allow_incomplete=True).row_digests
    assert whole is not None
    order = np.argsort(whole, kind="stable")
    sorted_digests = whole[order]
    at = np.searchsorted(sorted_digests, got)
    found = (at < len(whole)) & (sorted_digests[np.minimum(at, len(whole) - 1)] == got)
    if not found.any() and not transformed:
        raise _no_row_matches(cache_view, len(positions), "none is anywhere in the cache")
    expected_rows = cache_view.rows[positions]
    where = order[np.minimum(at, len(whole) - 1)]
    moved = np.flatnonzero(wrong & found)
    # a transform (a scaler, a clip) changes some rows or all: those it changed are found
    # nowhere and cannot be checked; a row found at another position is out of place
    unknown = np.flatnonzero(~found) if not transformed else np.array([], dtype=np.int64)
    if moved.size == 0 and unknown.size == 0:
        return
    parts = []
    if moved.size:
        shown = "; ".join(
            f"row {positions[i]} of X is row {where[i]} of the cache (expected row {expected_rows[i]})"
            for i in moved[:_SHOWN]
        )
        more = f" (and {moved.size - _SHOWN} more)" if moved.size > _SHOWN else ""
        parts.append(f"{moved.size} rows are out of place: {shown}{more}")
    if unknown.size:
        shown = ", ".join(str(positions[i]) for i in unknown[:_SHOWN])
        more = f" (and {unknown.size - _SHOWN} more)" if unknown.size > _SHOWN else ""
        parts.append(f"{unknown.size} rows match no row of the cache: rows {shown}{more} of X")
    raise RowMismatchError(
        f"X does not line up with the rows the cache at {cache_view.path} was built from "
        f"({int(wrong.sum())} of {len(positions)} checked rows differ): " + "; ".join(parts)
    )
