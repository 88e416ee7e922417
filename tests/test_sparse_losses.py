"""The sparse distillation losses against float64 references written from the equations.

Teachers have realistic structure: the Bayes-like logits ``x mu_c - |mu_c|^2 / 2`` of
:func:`kdpipe.datasets.make_confusable_classification` (a few confusable classes per
row, a long tail), students a noisy copy of them.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from kdpipe.cache.sparse import Sampled, TopK, TopKSampledTail, reduce_logits
from kdpipe.datasets import make_confusable_classification
from kdpipe.errors import InputError, SparseFormatError
from kdpipe.losses import distillation_loss, sparse_distillation_loss, tail_logsumexp

GRID = TopK(1).temperatures  # the default grid temperatures


def _teacher(n: int, n_classes: int, members: int = 1, seed: int = 0) -> np.ndarray:
    """Logits (n, M, C) of Gaussian-class teachers fitted on different halves of the data."""
    X, y = make_confusable_classification(n + 40 * n_classes, n_classes, random_state=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(members):
        fit = rng.permutation(np.arange(n, len(X)))[: 20 * n_classes]
        mu = np.stack([X[fit][y[fit] == c].mean(axis=0) for c in range(n_classes)])
        out.append(X[:n] @ mu.T - 0.5 * (mu**2).sum(axis=1))
    return np.stack(out, axis=1)  # (n, M, C)


def _student(v: np.ndarray, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    z = 0.6 * v.mean(axis=1) + rng.normal(scale=3.0, size=v[:, 0].shape)
    return torch.tensor(z, dtype=torch.float32, requires_grad=True)


def _row_grads(loss_fn, z: torch.Tensor) -> np.ndarray:
    """Per-row gradients of a row-averaged loss: (n, C), float64."""
    z.grad = None
    loss_fn(z).backward()
    return z.grad.double().numpy() * len(z)


def _tail_mask(v: np.ndarray, k: int) -> np.ndarray:
    """True outside each row's k largest logits, (n, C) (reference: a full sort)."""
    mask = np.ones(v.shape, dtype=bool)
    np.put_along_axis(mask, np.argsort(-v, axis=1, kind="stable")[:, :k], False, axis=1)
    return mask


@pytest.fixture(scope="module")
def teacher() -> np.ndarray:
    return _teacher(120, 200)


def test_tail_logsumexp_exact_at_grid_temperatures_and_within_exact_bounds_elsewhere(teacher):
    v = teacher[:, 0]
    for k in (5, 20):
        targets = reduce_logits(v, TopK(k)).to_torch("cpu")
        tail = _tail_mask(v, k)
        for t in (0.5, 1.0, 1.5, 3.0, 4.0, 6.0, 12.0, 16.0, 24.0, 50.0, 1e4):
            exact = logsumexp(np.where(tail, v / t, -np.inf), axis=1)
            estimate, lower, upper = (
                a[:, 0].double().numpy() for a in tail_logsumexp(targets, t, bounds=True)
            )
            slack = 1e-5 * np.abs(exact).max()  # float32 storage of the summary
            assert (lower - slack <= exact).all() and (exact <= upper + slack).all()
            assert (lower - slack <= estimate).all() and (estimate <= upper + slack).all()
            if t in GRID:
                np.testing.assert_allclose(estimate, exact, atol=slack)
            elif GRID[-1] < t <= GRID[0]:  # between grid points: the Hermite interpolant
                assert np.abs(estimate - exact).max() < 0.05


def test_topk_loss_is_the_kl_between_k_plus_one_buckets(teacher):
    v, t, k = teacher[:, 0], 4.0, 10
    z = _student(teacher)
    targets = reduce_logits(v, TopK(k, tail="bucket")).to_torch("cpu")
    got = sparse_distillation_loss(z, targets, temperature=t, alpha=0.0).item()

    tail = _tail_mask(v, k)
    p, q = softmax(v / t, axis=1), softmax(z.detach().double().numpy() / t, axis=1)
    head = ~tail
    p_b = np.concatenate([p[head].reshape(len(v), k), (p * tail).sum(1, keepdims=True)], axis=1)
    q_b = np.concatenate([q[head].reshape(len(v), k), (q * tail).sum(1, keepdims=True)], axis=1)
    expected = t**2 * (p_b * np.log(p_b / q_b)).sum(axis=1).mean()
    assert got == pytest.approx(expected, rel=1e-4)


def test_dense_minus_sparse_loss_is_the_tail_share_of_the_kl(teacher):
    v, t, k = teacher[:, 0], 8.0, 10
    z = _student(teacher)
    targets = reduce_logits(v, TopK(k, tail="bucket")).to_torch("cpu")
    sparse = sparse_distillation_loss(z, targets, temperature=t, alpha=0.0).item()
    dense = distillation_loss(
        z, torch.tensor(v, dtype=torch.float32), temperature=t, alpha=0.0
    ).item()

    tail = _tail_mask(v, k)
    p, q = softmax(v / t, axis=1), softmax(z.detach().double().numpy() / t, axis=1)
    p_tail, q_tail = (p * tail).sum(1), (q * tail).sum(1)
    pc, qc = np.where(tail, p, 1.0) / p_tail[:, None], np.where(tail, q, 1.0) / q_tail[:, None]
    cond_kl = np.where(tail, pc * np.log(pc / qc), 0.0).sum(1)
    assert dense - sparse == pytest.approx(t**2 * (p_tail * cond_kl).mean(), rel=1e-3)
    assert dense > sparse


def test_topk_gradient_is_the_bucket_gradient_also_where_the_students_tail_is_tiny(teacher):
    v, t, k = teacher[:, 0].astype(np.float64), 8.0, 10
    rng = np.random.default_rng(5)
    z0 = rng.normal(scale=2.0, size=v.shape)
    tail = _tail_mask(v, k)
    z0[: len(v) // 2] += np.where(tail, 0.0, 30.0 * t)[
        : len(v) // 2
    ]  # half the rows: tail mass ~e**-30 at t
    q = softmax(z0 / t, axis=1)
    q_tail = (q * tail).sum(axis=1)
    assert (q_tail < 1e-9).any() and (q_tail > 1e-4).any()  # both ways of computing the tail run
    z = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
    targets = reduce_logits(v, TopK(k, tail="bucket")).to_torch("cpu")
    got = _row_grads(lambda s: sparse_distillation_loss(s, targets, temperature=t, alpha=0.0), z)

    p = softmax(v / t, axis=1)
    p_tail = (p * tail).sum(axis=1, keepdims=True)
    expected = t * np.where(tail, q - p_tail * q / q_tail[:, None], q - p)  # the bucket gradient
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * t)  # float32 rounding, times T


def test_bucket_gradient_keeps_float32_precision_at_large_logits(teacher):
    """A per-row shift of 1e4 changes no softmax; the bucket's tail gradient must stay at
    float32 rounding (through the rounded log of the tail sum it was 2e-5 off here)."""
    v, t, k = teacher[:, 0].astype(np.float64), 4.0, 3  # much of the teacher's mass in the tail
    z0 = np.random.default_rng(7).normal(scale=2.0, size=v.shape) + 1e4 * t
    z = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
    targets = reduce_logits(v, TopK(k, tail="bucket")).to_torch("cpu")
    got = _row_grads(lambda s: sparse_distillation_loss(s, targets, temperature=t, alpha=0.0), z)

    z32 = z.detach().double().numpy()  # the float32 logits the loss saw, in float64
    q = softmax(z32 / t, axis=1)
    tail = _tail_mask(v, k)
    q_tail = (q * tail).sum(axis=1, keepdims=True)
    p = softmax(v / t, axis=1)
    p_tail = (p * tail).sum(axis=1, keepdims=True)
    expected = t * np.where(tail, q - p_tail * q / q_tail, q - p)
    np.testing.assert_allclose(got, expected, atol=1e-6 * t)
    np.testing.assert_allclose(got.sum(axis=1), 0.0, atol=1e-6 * t)  # a softmax gradient


TAIL_FORMATS = {
    "bucket": lambda k: TopK(k, tail="bucket"),
    "uniform": lambda k: TopK(k, tail="uniform"),
    "sampled-tail": lambda k: TopKSampledTail(k, draws=16, temperature=4.0),
}


@pytest.mark.parametrize("spread", list(TAIL_FORMATS))
@pytest.mark.parametrize("t", [1.0, 3.0, 4.0, 12.0])
def test_topk_gradient_error_within_the_stated_bound_and_shrinking_with_k(teacher, t, spread):
    v = teacher[:, 0]
    z = _student(teacher)
    dense = _row_grads(
        lambda s: distillation_loss(
            s, torch.tensor(v, dtype=torch.float32), temperature=t, alpha=0.0
        ),
        z,
    )
    np.testing.assert_allclose(
        dense, t * (softmax(z.detach().double().numpy() / t, 1) - softmax(v / t, 1)), atol=1e-5
    )
    mean_errors = []
    for k in (3, 10, 30):
        targets = reduce_logits(v, TAIL_FORMATS[spread](k)).to_torch("cpu")
        sparse = _row_grads(
            lambda s, targets=targets: sparse_distillation_loss(
                s, targets, temperature=t, alpha=0.0
            ),
            z,
        )
        error = np.abs(sparse - dense).sum(axis=1)  # L1 per row
        tail = _tail_mask(v, k)
        lse_tail = logsumexp(np.where(tail, v / t, -np.inf), axis=1)
        lse_all = logsumexp(v / t, axis=1)
        p_tail = np.exp(lse_tail - lse_all)
        delta = np.abs(tail_logsumexp(targets, t)[:, 0].double().numpy() - lse_tail)
        bound = 2 * t * (p_tail + p_tail * np.expm1(delta))
        assert (error <= bound + 1e-5).all()
        if k == 3:  # where the tail holds real mass, some row comes near the bound
            assert (error / bound).max() > 0.3
        mean_errors.append(error.mean())
    rounding = 1e-6  # L1 over 200 classes of two float32 gradients computed differently
    for error_k, error_more in itertools.pairwise(mean_errors):
        if error_k > rounding:
            assert error_k > error_more
        else:  # no tail mass left to lose: nothing shrinks but rounding
            assert error_more <= rounding


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_topk_of_all_but_one_class_gives_the_dense_ensemble_gradient(combine):
    v = _teacher(30, 40, members=3)
    z = _student(v)
    targets = reduce_logits(v, TopK(39)).to_torch("cpu")
    assert targets.n_entries == 4
    for t in (2.0, 5.0):  # on and off the grid: a one-class tail is exact at every T
        dense = _row_grads(
            lambda s, t=t: distillation_loss(
                s, torch.tensor(v, dtype=torch.float32), temperature=t, alpha=0.0, combine=combine
            ),
            z,
        )
        sparse = _row_grads(
            lambda s, t=t: sparse_distillation_loss(
                s, targets, temperature=t, alpha=0.0, combine=combine
            ),
            z,
        )
        np.testing.assert_allclose(sparse, dense, atol=2e-5)


def test_topk_hard_term_is_the_dense_one(teacher):
    v, z = teacher[:, 0], _student(teacher)
    y = torch.tensor(np.argmax(v, axis=1))
    targets = reduce_logits(v, TopK(199)).to_torch("cpu")
    dense = distillation_loss(
        z, torch.tensor(v, dtype=torch.float32), y, temperature=3.0, alpha=0.3
    )
    sparse = sparse_distillation_loss(z, targets, y, temperature=3.0, alpha=0.3)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-4)


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_sampled_gradient_is_unbiased_by_the_standard_error_of_many_draws(combine):
    t, n, c, draws, repeats = 2.0, 3, 12, 8, 4000
    v = _teacher(n, c, members=2, seed=3)
    z0 = _student(v, seed=4).detach()

    def dense_grad(temperature: float) -> np.ndarray:
        zr = z0.clone().requires_grad_(True)
        vt = torch.tensor(v, dtype=torch.float32)
        return _row_grads(
            lambda s: distillation_loss(s, vt, temperature=temperature, alpha=0.0, combine=combine),
            zr,
        )

    # `repeats` independent draws of every row: the rows repeated, each with its own uniforms
    targets = reduce_logits(np.tile(v, (repeats, 1, 1)), Sampled(draws, t, seed=7)).to_torch("cpu")
    z = z0.repeat(repeats, 1).requires_grad_(True)
    grads = _row_grads(
        lambda s: sparse_distillation_loss(s, targets, temperature=t, alpha=0.0, combine=combine), z
    )
    grads = grads.reshape(repeats, n, c)
    mean, se = grads.mean(axis=0), grads.std(axis=0, ddof=1) / np.sqrt(repeats)
    z_at_t = np.abs(mean - dense_grad(t)) / np.maximum(se, 1e-9)
    assert z_at_t.max() < 4.5  # 36 components: a false alarm has probability ~2e-4
    # the same test has the power to see the gradient at another temperature
    assert (np.abs(mean - dense_grad(3.0)) / np.maximum(se, 1e-9)).max() > 4.5


def test_sampled_targets_refuse_another_temperature():
    v = _teacher(5, 10)
    targets = reduce_logits(v, Sampled(16, 4.0)).to_torch("cpu")
    z = _student(v)
    with pytest.raises(ValueError, match="drawn at temperature 4"):
        sparse_distillation_loss(z, targets, temperature=2.0, alpha=0.1)
    with pytest.raises(SparseFormatError, match="unbiased only there"):
        Sampled(16, 4.0).check_request(temperature=2.0, combine="arithmetic", loss="distillation")
    with pytest.raises(SparseFormatError, match="logit matching"):
        TopK(3).check_request(temperature=2.0, combine="arithmetic", loss="logit_matching")


def test_topk_needs_fewer_kept_classes_than_classes():
    with pytest.raises(InputError, match="k < 10"):
        reduce_logits(np.zeros((2, 10)), TopK(10))
    with pytest.raises(ValueError, match="positive integer"):
        TopK(0)
    with pytest.raises(ValueError, match="temperature"):
        Sampled(4, -1.0)


# -- issue 21: the tail spread over the tail classes, and 8-bit values ------------------


def _dense_target_with_spread(
    v: np.ndarray, t: float, k: int, tail_shares: np.ndarray
) -> np.ndarray:
    """float64 (n, C): the teacher's softmax at t on its top k, and its tail mass split
    over the other classes in proportion to ``tail_shares`` (n, C) (zero on the head)."""
    p = softmax(v / t, axis=1)
    tail = _tail_mask(v, k)
    p_tail = (p * tail).sum(axis=1, keepdims=True)
    shares = np.where(tail, tail_shares, 0.0)
    return np.where(tail, p_tail * shares / shares.sum(axis=1, keepdims=True), p)


@pytest.mark.parametrize("t", [2.0, 5.0])  # on and off the grid
def test_uniform_tail_is_the_dense_kl_with_the_tail_mass_shared_equally(teacher, t):
    v, z, k = teacher[:, 0].astype(np.float64), _student(teacher), 10
    targets = reduce_logits(v, TopK(k, tail="uniform")).to_torch("cpu")
    got = sparse_distillation_loss(z, targets, temperature=t, alpha=0.0).item()
    grads = _row_grads(lambda s: sparse_distillation_loss(s, targets, temperature=t, alpha=0.0), z)

    p = _dense_target_with_spread(v, t, k, np.ones_like(v))
    if t not in GRID:  # the tail mass the summary gives off the grid (its own test is above)
        lse = tail_logsumexp(targets, t)[:, 0].double().numpy()
        head = np.where(_tail_mask(v, k), -np.inf, v / t)
        p_tail = np.exp(lse - np.logaddexp(logsumexp(head, axis=1), lse))[:, None]
        p = np.where(
            _tail_mask(v, k), p_tail / (v.shape[1] - k), softmax(head, axis=1) * (1 - p_tail)
        )
    q = softmax(z.detach().double().numpy() / t, axis=1)
    expected = t**2 * (p * np.log(p / q)).sum(axis=1).mean()
    assert got == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(grads, t * (q - p), atol=2e-5)  # eq. 2 with that target


def test_sampled_tail_at_its_temperature_spreads_the_tail_mass_by_the_draws(teacher):
    v, z, k, s, t = teacher[:, 0].astype(np.float64), _student(teacher), 10, 16, 4.0
    targets = reduce_logits(v, TopKSampledTail(k, s, t)).to_torch("cpu")
    counts = np.zeros_like(v)
    for r in range(len(v)):  # the draws, as dense counts per class
        np.add.at(
            counts[r],
            targets.tail_indices[r, 0].numpy(),
            targets.tail_counts[r, 0].double().numpy(),
        )
    assert (counts.sum(axis=1) == s).all() and not (
        counts * ~_tail_mask(v, k)
    ).any()  # tail classes only
    p = _dense_target_with_spread(v, t, k, counts)
    q = softmax(z.detach().double().numpy() / t, axis=1)
    grads = _row_grads(lambda x: sparse_distillation_loss(x, targets, temperature=t, alpha=0.0), z)
    np.testing.assert_allclose(grads, t * (q - p), atol=2e-5)
    got = sparse_distillation_loss(z, targets, temperature=t, alpha=0.0).item()
    assert got == pytest.approx(
        t**2 * (p * np.log(np.where(p > 0, p, 1.0) / q)).sum(axis=1).mean(), rel=1e-4
    )


def test_sampled_tail_reweights_its_draws_to_another_temperature(teacher):
    v, z, k, s, t_draw, t = teacher[:, 0].astype(np.float64), _student(teacher), 10, 16, 4.0, 2.0
    targets = reduce_logits(v, TopKSampledTail(k, s, t_draw)).to_torch("cpu")
    counts = np.zeros_like(v)
    for r in range(len(v)):
        np.add.at(
            counts[r],
            targets.tail_indices[r, 0].numpy(),
            targets.tail_counts[r, 0].double().numpy(),
        )
    # self-normalized importance weights: draws from exp(v / t_draw), target exp(v / t)
    p = _dense_target_with_spread(
        v,
        t,
        k,
        counts * np.exp(v / t - v / t_draw - (v / t - v / t_draw).max(axis=1, keepdims=True)),
    )
    q = softmax(z.detach().double().numpy() / t, axis=1)
    grads = _row_grads(lambda x: sparse_distillation_loss(x, targets, temperature=t, alpha=0.0), z)
    np.testing.assert_allclose(grads, t * (q - p), atol=2e-5)


def test_sampled_tail_draws_are_unbiased_for_the_tail_at_their_temperature():
    t, k, s, repeats = 2.0, 3, 8, 3000
    v = _teacher(2, 12, seed=3)[:, 0].astype(np.float64)
    tail = _tail_mask(v, k)
    expected = np.where(
        tail, softmax(np.where(tail, v / t, -np.inf), axis=1), 0.0
    )  # the tail's own softmax
    drawn = reduce_logits(
        np.tile(v, (repeats, 1)), TopKSampledTail(k, s, t)
    )  # every row draws afresh
    counts = np.zeros((repeats * len(v), v.shape[1]))
    rows = np.repeat(np.arange(len(counts)), s).reshape(-1, s)
    np.add.at(
        counts, (rows, drawn.tail_indices[:, 0]), drawn.tail_counts[:, 0]
    )  # unused slots add 0
    mean = counts.reshape(repeats, len(v), -1).sum(axis=0) / (s * repeats)
    se = np.sqrt(expected * (1 - expected) / (s * repeats))
    z = (mean - expected)[tail] / se[tail]
    assert np.abs(z).max() < 4.5  # 18 statistics: a 4.5-sigma miss is ~1e-4 likely by chance


def test_uint8_values_are_within_half_a_step_of_the_cache_logits(teacher):
    v = teacher[:, 0]
    exact = reduce_logits(v, TopK(30, values="float"))
    coded = reduce_logits(v, TopK(30, values="uint8"))
    np.testing.assert_array_equal(coded.indices, exact.indices)
    np.testing.assert_array_equal(coded.tail_lse, exact.tail_lse)
    step = (exact.values[..., 0] - exact.tail_max) / 255  # (n, E)
    error = np.abs(coded.values - exact.values)
    assert (error <= step[..., None] / 2 * (1 + 1e-5) + 1e-5).all()
    assert error.max() > step.min() / 10  # the codes are coarser than float32

    # the stated bound on the soft targets: |p_hat - p|_1 <= exp(2 h / T) - 1, h = step / 2
    def target(x, t):  # the k + 1 buckets at a grid temperature
        g = GRID.index(t)
        return softmax(
            np.concatenate([x.values[:, 0] / t, x.tail_lse[:, 0, g : g + 1]], axis=1), axis=1
        )

    for t in (1.0, 4.0):
        l1 = np.abs(target(coded, t) - target(exact, t)).sum(axis=1)
        assert (l1 <= np.expm1(step[:, 0] / t) + 1e-6).all()


def test_bucket_tail_whose_exp_underflows_in_float32_still_gives_the_bucket_gradient():
    t, k = 2.0, 3
    rng = np.random.default_rng(7)
    v = rng.normal(scale=3.0, size=(4, 30))
    z0 = rng.normal(size=v.shape)
    tail = _tail_mask(v, k)
    z0[:2] += np.where(tail, 0.0, 250.0 * t)[
        :2
    ]  # two rows: the student's tail e**-250 below its head
    z = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
    targets = reduce_logits(v, TopK(k, tail="bucket")).to_torch("cpu")
    got = _row_grads(lambda s: sparse_distillation_loss(s, targets, temperature=t, alpha=0.0), z)
    zz = z0 / t
    q = softmax(zz, axis=1)
    q_in_tail = softmax(np.where(tail, zz, -np.inf), axis=1)  # q_j / q_tail, in log space
    p = softmax(v / t, axis=1)
    p_tail = (p * tail).sum(axis=1, keepdims=True)
    expected = t * np.where(tail, q - p_tail * q_in_tail, q - p)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * t)


def test_targets_that_require_grad_and_second_derivatives_are_errors(teacher):
    v, z = teacher[:, 0], _student(teacher)
    targets = reduce_logits(v, TopK(10, tail="uniform")).to_torch("cpu")
    learned = replace(targets, values=targets.values.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="must not require grad"):
        sparse_distillation_loss(z, learned, temperature=4.0, alpha=0.1)
    loss = sparse_distillation_loss(z, targets, temperature=4.0, alpha=0.1)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, z, create_graph=True)
    (grad,) = torch.autograd.grad(
        sparse_distillation_loss(z, targets, temperature=4.0, alpha=0.1), z
    )
    assert torch.isfinite(grad).all()  # one derivative, as training takes it
