"""The sparse distillation loss against float64 references written from its docstrings.

Covers what the references of ``test_sparse_losses.py`` leave open: unlabeled rows in
the hard term, the ``1/E`` averaging of an arithmetic ensemble's tail terms where the
tail holds real mass, the exact values (not just the validity) of the bounds of
:func:`kdpipe.losses.tail_logsumexp`, and the value of the sampled loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicHermiteSpline
from scipy.special import log_softmax, logsumexp, softmax

from kdpipe.cache.sparse import Sampled, TopK, reduce_logits
from kdpipe.losses import distillation_loss, sparse_distillation_loss, tail_logsumexp


def _logits(shape: tuple[int, ...], seed: int, scale: float = 3.0) -> np.ndarray:
    """Random logits representable in float32 (what the cache stores), as float64."""
    v = np.random.default_rng(seed).normal(scale=scale, size=shape)
    return v.astype(np.float32).astype(np.float64)


def _grad(loss_fn, z0: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss value and its gradient with respect to float32 logits ``z0``, in float64."""
    z = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
    loss = loss_fn(z)
    loss.backward()
    return loss.item(), z.grad.double().numpy()


def _head_mask(v: np.ndarray, k: int) -> np.ndarray:
    """True on each row's k largest logits, (..., C) (reference: a full sort)."""
    mask = np.zeros(v.shape, dtype=bool)
    np.put_along_axis(mask, np.argsort(-v, axis=-1, kind="stable")[..., :k], True, axis=-1)
    return mask


def _ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy at T = 1 (0 where y = -1)."""
    nll = -np.take_along_axis(log_softmax(z, axis=1), np.maximum(y, 0)[:, None], axis=1)[:, 0]
    return np.where(y >= 0, nll, 0.0)


# -- 1. unlabeled rows --------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["bucket", "uniform"])
def test_unlabeled_rows_add_soft_term_only_as_in_the_dense_loss_and_the_reference(tail):
    n, c, t, alpha = 24, 30, 3.0, 0.5
    v = _logits((n, c), seed=11)
    z0 = _logits((n, c), seed=12, scale=2.0) + 0.5 * v
    y = np.random.default_rng(13).integers(0, c, size=n)
    y[::3] = -1  # a third of the rows unlabeled
    labeled = y >= 0
    targets = reduce_logits(v, TopK(c - 1, tail=tail)).to_torch("cpu")  # one-class tail: exact
    yt = torch.tensor(y)

    sparse, g_sparse = _grad(
        lambda s: sparse_distillation_loss(s, targets, yt, temperature=t, alpha=alpha), z0
    )
    dense, g_dense = _grad(
        lambda s: distillation_loss(
            s, torch.tensor(v, dtype=torch.float32), yt, temperature=t, alpha=alpha
        ),
        z0,
    )

    # float64 reference: soft KL T^2 (1 - alpha) over all rows, alpha CE over labeled rows
    p, q, q1 = softmax(v / t, axis=1), softmax(z0 / t, axis=1), softmax(z0, axis=1)
    kl = (p * (np.log(p) - np.log(q))).sum(axis=1)
    expected = (1 - alpha) * t**2 * kl.mean() + alpha * _ce(z0, y).sum() / labeled.sum()
    onehot = np.zeros_like(z0)
    onehot[np.flatnonzero(labeled), y[labeled]] = 1.0
    expected_grad = (1 - alpha) * t * (q - p) / n + alpha * np.where(
        labeled[:, None], q1 - onehot, 0.0
    ) / labeled.sum()

    assert sparse == pytest.approx(expected, rel=1e-5)
    assert dense == pytest.approx(expected, rel=1e-5)
    # per row, as a row-averaged loss's gradient times n
    np.testing.assert_allclose(g_sparse * n, expected_grad * n, atol=2e-6)
    np.testing.assert_allclose(g_sparse * n, g_dense * n, atol=2e-6)
    # the unlabeled rows: the soft gradient alone
    np.testing.assert_allclose(
        g_sparse[~labeled] * n, ((1 - alpha) * t * (q - p))[~labeled], atol=2e-6
    )


# -- 2. arithmetic ensembles: each member's tail, 1/E each ---------------------------------


def _ensemble_case():
    """Teachers (n, 3, C) that differ (their top 5 and tail masses differ per member),
    and a student whose tail, for the first rows, underflows float32 at T = 4 for every
    member (the masked log-sum-exp path of the bucket)."""
    n, m, c, t, k = 16, 3, 40, 4.0, 5
    base = _logits((n, 1, c), seed=21, scale=2.0)
    v = base + _logits((n, m, c), seed=22, scale=1.5)
    v[:, 1] *= 1.6  # members of different sharpness: different tail masses
    v = v.astype(np.float32).astype(np.float64)  # what the cache stores
    z0 = _logits((n, c), seed=23, scale=2.0) + 0.5 * v.mean(axis=1)
    head = _head_mask(v, k)  # (n, M, C)
    common = head.all(axis=1)  # classes in every member's top k
    small = np.flatnonzero(common.any(axis=1))[:3]
    assert len(small) == 3
    for r in small:  # a class every member keeps, 250 T above the rest: the tails underflow
        z0[r, np.flatnonzero(common[r])[0]] += 250.0 * t
    z0 = z0.astype(np.float32).astype(np.float64)
    return v, z0, t, k, head, small


def _member_targets(v, z0, t, k, head, tail):
    """float64 (n, M, C): each member's sparse target as the docstring defines it.

    Head: the member's own softmax at T on its top k. Tail mass ``p_tail`` (exact at a
    grid temperature) spread over that member's own C - k tail classes: like the
    student's ``q`` restricted to them (bucket, in log space), or equally (uniform)."""
    p = softmax(v / t, axis=-1)  # (n, M, C)
    p_tail = np.where(head, 0.0, p).sum(axis=-1, keepdims=True)
    if tail == "bucket":
        zz = np.broadcast_to(z0[:, None, :] / t, v.shape)
        shares = softmax(np.where(head, -np.inf, zz), axis=-1)  # q_j / q_tail on the tail
    else:
        shares = np.where(head, 0.0, 1.0 / (v.shape[-1] - k))
    return np.where(head, p, p_tail * shares)


@pytest.mark.parametrize("tail", ["bucket", "uniform"])
def test_arithmetic_ensemble_gradient_averages_each_members_own_tail(tail):
    v, z0, t, k, head, small = _ensemble_case()
    n = len(v)
    targets = reduce_logits(v, TopK(k, tail=tail)).to_torch("cpu")
    assert targets.n_entries == 4
    value, g = _grad(lambda s: sparse_distillation_loss(s, targets, temperature=t, alpha=0.0), z0)

    members = _member_targets(v, z0, t, k, head, tail)  # (n, M, C)
    target = members.mean(axis=1)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, rtol=1e-12)
    log_q = log_softmax(z0 / t, axis=1)
    q = np.exp(log_q)
    expected_grad = t * (q - target)  # eq. 2 with the mean of the members' targets
    # the members' tail masses differ, so no single member's tail would do
    p_tails = np.where(head, 0.0, softmax(v / t, axis=-1)).sum(axis=-1)
    assert (p_tails.max(axis=1) - p_tails.min(axis=1)).min() > 0.02
    np.testing.assert_allclose(g * n, expected_grad, atol=1e-5)
    np.testing.assert_allclose(g[small] * n, expected_grad[small], atol=1e-5)

    # the value: the mean over members of each member's soft term
    if tail == "uniform":  # the dense KL of each member's target
        kl = (members * (np.log(members) - log_q[:, None, :])).sum(axis=-1)
    else:  # the KL between each member's k + 1 buckets
        p = softmax(v / t, axis=-1)
        log_q_tail = logsumexp(np.where(head, -np.inf, log_q[:, None, :]), axis=-1)
        kl = np.where(head, p * (np.log(p) - log_q[:, None, :]), 0.0).sum(axis=-1)
        kl += p_tails * (np.log(p_tails) - log_q_tail)
    assert value == pytest.approx(t**2 * kl.mean(axis=1).mean(), rel=1e-5)


# -- 3. tail_logsumexp: the estimate and bounds from the stored summary --------------------


def _summary_reference(targets, temperature: float):
    """float64 (estimate, lower, upper) (b, E) from the stored summary, per the docstring."""
    f0 = np.log(targets.n_classes - targets.k)
    grid_t = np.array(targets.temperatures, dtype=np.float64)
    order = np.argsort(1.0 / grid_t)
    betas = np.concatenate([[0.0], 1.0 / grid_t[order]])  # ascending
    mean = targets.tail_mean.double().numpy()
    f = np.concatenate(
        [np.full(mean.shape + (1,), f0), targets.tail_lse.double().numpy()[..., order]], axis=-1
    )
    d = np.concatenate([mean[..., None], targets.tail_slope.double().numpy()[..., order]], axis=-1)
    top = targets.tail_max.double().numpy()
    beta = 1.0 / temperature
    if np.isclose(betas, beta, rtol=0, atol=1e-15).any():
        exact = f[..., np.argmin(np.abs(betas - beta))]
        return exact, exact, exact
    tangents = f + d * (beta - betas)  # every grid tangent lies below a convex f
    lower = tangents.max(axis=-1)
    if beta > betas[-1]:  # past the grid: the last tangent; f' <= tail_max above
        upper = np.minimum(f[..., -1] + top * (beta - betas[-1]), f0 + beta * top)
        return lower, lower, upper
    i = np.searchsorted(betas, beta) - 1
    a, b = betas[i], betas[i + 1]
    upper = f[..., i] + (f[..., i + 1] - f[..., i]) * (beta - a) / (b - a)  # the chord
    spline = CubicHermiteSpline(betas, np.moveaxis(f, -1, 0), np.moveaxis(d, -1, 0))
    estimate = np.clip(spline(beta), lower, upper)
    return estimate, lower, upper


@pytest.mark.parametrize("k", [3, 12])
def test_tail_logsumexp_estimate_and_bounds_equal_the_summary_reference(k):
    v = _logits((40, 2, 60), seed=31)
    targets = reduce_logits(v, TopK(k)).to_torch("cpu")
    tail = ~_head_mask(v, k)
    strict = 0
    for t in (0.25, 0.5, 0.7, 1.0, 1.5, 3.0, 4.0, 6.0, 12.0, 24.0, 1e4):
        got = [a.double().numpy() for a in tail_logsumexp(targets, t, bounds=True)]
        ref = _summary_reference(targets, t)
        for name, g, r in zip(("estimate", "lower", "upper"), got, ref, strict=True):
            np.testing.assert_allclose(g, r, rtol=2e-6, atol=2e-6, err_msg=f"{name} at T={t}")
        # and they bound the truth
        exact = logsumexp(np.where(tail, v / t, -np.inf), axis=-1)
        slack = 1e-5 * np.abs(exact).max()
        lower, upper = got[1][:, :2], got[2][:, :2]  # the members' entries (not the mean's)
        assert (lower <= exact + slack).all() and (exact <= upper + slack).all()
        strict += int((ref[2] - ref[1] > 1e-3).any())
    assert strict >= 7  # off the grid, the bounds are apart: a swapped min/max shows


# -- 4. the sampled loss's value -----------------------------------------------------------


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
@pytest.mark.parametrize("members", [1, 3])
def test_sampled_loss_value_is_the_mean_members_kl_of_the_draws_plus_hard_term(members, combine):
    n, c, t, draws, alpha = 20, 25, 2.0, 12, 0.3
    v = _logits((n, members, c), seed=41)
    z0 = _logits((n, c), seed=42, scale=2.0)
    y = np.random.default_rng(43).integers(0, c, size=n)
    y[::4] = -1
    targets = reduce_logits(v, Sampled(draws, t, seed=5)).to_torch("cpu")
    value, g = _grad(
        lambda s: sparse_distillation_loss(
            s, targets, torch.tensor(y), temperature=t, alpha=alpha, combine=combine
        ),
        z0,
    )

    if members == 1:
        entries = [0]
    else:  # the members' own draws, or the entry drawn from their mean logits
        entries = list(range(members)) if combine == "arithmetic" else [members]
    idx, counts = targets.indices.numpy(), targets.counts.double().numpy()
    p_hat = np.zeros((n, len(entries), c))
    for j, e in enumerate(entries):
        for r in range(n):
            np.add.at(p_hat[r, j], idx[r, e], counts[r, e] / draws)
    np.testing.assert_allclose(p_hat.sum(axis=-1), 1.0, rtol=1e-12)
    log_q = log_softmax(z0 / t, axis=1)
    safe = np.where(p_hat > 0, p_hat, 1.0)
    kl = (p_hat * (np.log(safe) - log_q[:, None, :])).sum(axis=-1).mean(axis=1)  # (n,)
    labeled = y >= 0
    expected = (1 - alpha) * t**2 * kl.mean() + alpha * _ce(z0, y).sum() / labeled.sum()
    assert value == pytest.approx(expected, rel=1e-5)

    onehot = np.zeros_like(z0)
    onehot[np.flatnonzero(labeled), y[labeled]] = 1.0
    expected_grad = (1 - alpha) * t * (np.exp(log_q) - p_hat.mean(axis=1)) / n + alpha * np.where(
        labeled[:, None], softmax(z0, axis=1) - onehot, 0.0
    ) / labeled.sum()
    np.testing.assert_allclose(g * n, expected_grad * n, atol=2e-6)
