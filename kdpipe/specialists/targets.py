"""Specialist targets: collapsing distributions onto a class subset plus a dustbin.

A specialist for the class subset ``S`` (``k = |S|`` classes) predicts ``k + 1``
probabilities: one per class of ``S`` (in the order of ``S``) and a last *dustbin*
entry for "any class outside ``S``" (Hinton et al. 2015, section 5.2). Everything here
is pure numpy and works in probability space.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

__all__ = [
    "complement_mask",
    "collapse_probabilities",
    "collapse_labels",
    "collapse_logits",
    "probabilities_as_logits",
    "full_specialist_targets",
    "sampling_correction",
]

# smallest probability kept before taking a log (float32 logits stay finite)
_TINY = float(np.finfo(np.float32).tiny)


def complement_mask(subset: np.ndarray, n_classes: int) -> np.ndarray:
    """Boolean mask ``(C,)`` of the classes *outside* ``subset`` (class codes)."""
    subset = np.asarray(subset, dtype=np.intp)
    if subset.ndim != 1 or len(subset) == 0:
        raise ValueError(f"subset must be a non-empty 1-D array of class codes, got {subset!r}")
    if subset.min() < 0 or subset.max() >= n_classes:
        raise ValueError(f"subset codes must lie in [0, {n_classes}), got {subset.tolist()}")
    if len(np.unique(subset)) != len(subset):
        raise ValueError(f"subset has repeated classes: {subset.tolist()}")
    outside = np.ones(n_classes, dtype=bool)
    outside[subset] = False
    return outside


def collapse_probabilities(p: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Collapse distributions over ``C`` classes onto ``subset`` plus a dustbin.

    Parameters
    ----------
    p : ndarray of shape (n, C)
        Rows are probability distributions.
    subset : ndarray of shape (k,)
        Class codes of the subset, ``k < C``.

    Returns
    -------
    ndarray of shape (n, k + 1), float64
        ``[p[:, subset], p[:, outside].sum(1)]``: the subset's probabilities unchanged
        and the total mass outside the subset as the last (dustbin) column. The dustbin
        is summed directly (not ``1 - p[:, subset].sum()``), so a tiny outside mass is
        not lost to cancellation.
    """
    p = np.asarray(p, dtype=np.float64)
    outside = complement_mask(subset, p.shape[1])
    dustbin = p[:, outside].sum(axis=1, keepdims=True)  # (n, 1)
    return np.concatenate([p[:, np.asarray(subset, dtype=np.intp)], dustbin], axis=1)


def collapse_labels(codes: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Map class codes to specialist codes: position in ``subset``, else the dustbin ``k``.

    ``-1`` (unlabeled) stays ``-1``.
    """
    codes = np.asarray(codes, dtype=np.int64)
    subset = np.asarray(subset, dtype=np.int64)
    lookup = np.full(int(max(codes.max(initial=0), subset.max())) + 1, len(subset), np.int64)
    lookup[subset] = np.arange(len(subset))
    out = np.where(codes >= 0, lookup[np.clip(codes, 0, None)], -1)
    return out.astype(np.int64)


def collapse_logits(v: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Collapse logits ``(..., C)`` onto ``subset`` plus a dustbin: ``(..., k + 1)``.

    ``[v[..., subset], logsumexp(v[..., outside])]``, so that
    ``softmax(collapse_logits(v, S)) == collapse_probabilities(softmax(v), S)`` at
    ``T = 1``, computed stably in log space. Works on ensembles ``(n, M, C)`` member by
    member.

    Notes
    -----
    The training engine tempers the targets it is given, ``softmax(v' / T)``. Handing
    it these collapsed *T = 1* logits makes a specialist's logits match them (logit
    matching is the high-temperature limit of distillation), so its ``T = 1`` dustbin
    probability is the natural outside mass ``sum_{j not in S} p_j``. Collapsing the
    *tempered* probabilities instead (``T * log(sum_j softmax(v / T)_j)``) would teach
    the dustbin ``T * logsumexp(v_out / T) >= logsumexp(v_out)``, an outside mass that
    grows with ``T`` and with the number of outer classes.
    """
    v = np.asarray(v, dtype=np.float64)
    outside = complement_mask(subset, v.shape[-1])
    dustbin = logsumexp(v[..., outside], axis=-1, keepdims=True)  # (..., 1)
    return np.concatenate([v[..., np.asarray(subset, dtype=np.intp)], dustbin], axis=-1)


def probabilities_as_logits(p: np.ndarray) -> np.ndarray:
    """``log(p)`` as float32 logits (``softmax(log p) == p`` at ``T = 1``).

    Zero probabilities are clipped to the smallest float32 normal first, so the logits
    stay finite. Like :func:`collapse_logits`, these are ``T = 1`` logits that the
    engine tempers itself.
    """
    p = np.asarray(p, dtype=np.float64)
    return np.log(np.clip(p, _TINY, None)).astype(np.float32)


def full_specialist_targets(p: np.ndarray, codes: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Targets of a full-softmax specialist (section 6.1): hard inside, soft outside.

    For a row labeled with a class of ``subset``, the mass ``p`` gives the subset moves
    onto the true class (a hard target among the special classes) while the
    probabilities of the other classes keep the soft values of ``p``. Rows labeled
    outside the subset, and unlabeled rows (``-1``), keep ``p`` unchanged.

    Parameters
    ----------
    p : ndarray of shape (n, C)
        Soft targets (teacher or generalist).
    codes : ndarray of shape (n,)
        Class codes, ``-1`` for unlabeled.
    subset : ndarray of shape (k,)

    Returns
    -------
    ndarray of shape (n, C), float64, rows summing to 1
    """
    t = np.array(p, dtype=np.float64)  # (n, C)
    codes = np.asarray(codes, dtype=np.int64)
    subset = np.asarray(subset, dtype=np.intp)
    inside = np.isin(codes, subset)  # (n,)
    rows = np.flatnonzero(inside)
    special_mass = t[np.ix_(rows, subset)].sum(axis=1)  # (r,)
    t[np.ix_(rows, subset)] = 0.0
    t[rows, codes[rows]] = special_mass
    return t


def sampling_correction(
    n_inside: int, n_inside_used: int, n_outside: int, n_outside_used: int
) -> float:
    """Log-odds correction for a specialist trained on a re-balanced sample.

    The specialist trains on ``n_inside_used`` of the ``n_inside`` rows of its classes
    (rate ``r_s``) and ``n_outside_used`` of the ``n_outside`` other rows (rate
    ``r_d``). By Bayes' rule the training posterior of the dustbin is the natural one
    with its prior scaled by ``r_d / r_s``:
    ``logit_train(d) - logit_train(s) = logit(d) - logit(s) + log(r_d / r_s)``.
    Adding ``log(r_s / r_d)`` to the dustbin logit after training therefore restores
    the natural posterior; with the paper's half-and-half sampling (``r_s = 1``,
    ``r_d < 1``) it *raises* the dustbin logit by the log of the oversampling
    proportion of the subset, ``log(1 / r_d)``.

    Returns
    -------
    float
        ``log(r_s / r_d)``, to be added to the dustbin logit (or, for a full-softmax
        specialist, to every logit outside the subset).
    """
    if min(n_inside, n_inside_used, n_outside, n_outside_used) <= 0:
        raise ValueError(
            "the sampling correction needs rows inside and outside the subset, got "
            f"n_inside={n_inside}, n_inside_used={n_inside_used}, n_outside={n_outside}, "
            f"n_outside_used={n_outside_used}"
        )
    rate_inside = n_inside_used / n_inside
    rate_outside = n_outside_used / n_outside
    return float(np.log(rate_inside / rate_outside))
