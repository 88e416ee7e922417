"""The pure parts of the specialists: target bookkeeping and the section 5.4 combination.

Reference values are computed independently: by hand, with scipy's general-purpose
optimizer on the KL objective written out in numpy, or from closed forms.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from kdpipe.specialists.inference import combine_distributions
from kdpipe.specialists.targets import (
    collapse_labels,
    collapse_logits,
    collapse_probabilities,
    full_specialist_targets,
    probabilities_as_logits,
    sampling_correction,
)


def random_distributions(rng: np.random.Generator, n: int, c: int, scale: float = 2.0):
    return softmax(rng.normal(scale=scale, size=(n, c)), axis=1)


# ---------------------------------------------------------------- targets
def test_collapse_keeps_subset_and_puts_the_rest_in_the_dustbin():
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    out = collapse_probabilities(p, np.array([2, 0]))
    np.testing.assert_allclose(out, [[0.3, 0.1, 0.6], [0.1, 0.7, 0.2]])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_collapse_keeps_a_tiny_outside_mass():
    p = np.array([[1.0 - 3e-20, 1e-20, 1e-20, 1e-20]])
    out = collapse_probabilities(p, np.array([0]))
    assert out[0, -1] == pytest.approx(3e-20, rel=1e-12)  # not 1 - (1 - 3e-20) == 0


def test_collapsed_logits_are_the_log_of_the_collapsed_probabilities():
    rng = np.random.default_rng(0)
    v = rng.normal(scale=5.0, size=(6, 3, 9)) + 1000.0  # ensemble, large logits
    subset = np.array([4, 1, 7])
    out = collapse_logits(v, subset)
    assert out.shape == (6, 3, 4)
    expected = collapse_probabilities(softmax(v.reshape(-1, 9), axis=1), subset)
    np.testing.assert_allclose(softmax(out.reshape(-1, 4), axis=1), expected, rtol=1e-10)
    outside = [0, 2, 3, 5, 6, 8]
    np.testing.assert_allclose(out[..., -1], logsumexp(v[..., outside], axis=-1))


def test_probabilities_as_logits_round_trip_at_temperature_one_only():
    p = np.array([[0.5, 0.3, 0.2, 0.0]])
    v = probabilities_as_logits(p)
    assert np.isfinite(v).all()
    np.testing.assert_allclose(softmax(v.astype(np.float64), axis=1), p, atol=1e-30)
    tempered = softmax(v.astype(np.float64) / 2.0, axis=1)  # what the engine does at T=2
    expected = np.sqrt(p) / np.sqrt(p).sum()
    np.testing.assert_allclose(tempered, expected, atol=1e-12)


def test_collapse_labels_maps_to_subset_position_or_dustbin():
    codes = np.array([0, 3, 5, -1, 2, 9])
    out = collapse_labels(codes, np.array([5, 2]))
    np.testing.assert_array_equal(out, [2, 2, 0, -1, 1, 2])


def test_full_specialist_targets_move_the_subset_mass_to_the_true_class():
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    t = full_specialist_targets(p, np.array([1, 3, -1]), np.array([0, 1]))
    np.testing.assert_allclose(t[0], [0.0, 0.3, 0.3, 0.4])  # inside: hard among S
    np.testing.assert_allclose(t[1], p[1])  # labeled outside: unchanged
    np.testing.assert_allclose(t[2], p[2])  # unlabeled: unchanged
    np.testing.assert_allclose(t.sum(axis=1), 1.0)


def test_sampling_correction_is_log_of_the_rate_ratio():
    # all 100 subset rows, 50 of 400 others: dustbin rows at rate 1/8
    assert sampling_correction(100, 100, 400, 50) == pytest.approx(np.log(8.0))
    # subsampled subset (rate 1/2) and all others: the dustbin logit must go *down*
    assert sampling_correction(100, 50, 400, 400) == pytest.approx(np.log(0.5))
    with pytest.raises(ValueError, match="inside and outside"):
        sampling_correction(100, 100, 0, 0)


# ---------------------------------------------------------------- inference
def test_specialists_that_agree_with_the_generalist_leave_it_unchanged():
    rng = np.random.default_rng(1)
    p_g = random_distributions(rng, 20, 10)
    subsets = [np.array([0, 1, 2]), np.array([2, 3, 4, 5]), np.array([7, 9])]
    p_m = [collapse_probabilities(p_g, s) for s in subsets]
    active = rng.random((20, 3)) < 0.7
    res = combine_distributions(p_g, p_m, subsets, active, tol=1e-12)
    np.testing.assert_allclose(res.proba, p_g, atol=1e-12)
    assert res.converged.all()


def test_full_softmax_members_give_the_arithmetic_mean():
    # minimizing sum_m KL(p^m || q) over q: the arithmetic mean of all distributions
    rng = np.random.default_rng(2)
    p_g = random_distributions(rng, 15, 6)
    p_m = [random_distributions(rng, 15, 6) for _ in range(3)]
    active = np.ones((15, 3), dtype=bool)
    active[:5, 2] = False  # the first five rows have two specialists
    subsets = [np.array([0, 1])] * 3
    res = combine_distributions(p_g, p_m, subsets, active, full=[True] * 3, tol=1e-12)
    expected = p_g + p_m[0] + p_m[1] + np.where(active[:, 2:3], p_m[2], 0.0)
    expected /= 1.0 + active.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(res.proba, expected, atol=1e-12)
    geometric = softmax(np.mean([np.log(p) for p in [p_g, *p_m]], axis=0), axis=1)
    assert np.abs(res.proba[5:] - geometric[5:]).max() > 1e-3  # not the other direction


def np_objective(z, p_g, p_m, subsets):
    """KL(p_g || q) + sum_m KL(p_m || collapsed q), q = softmax(z), written out."""
    q = softmax(z)
    total = np.sum(p_g * np.log(p_g / q))
    for pm, s in zip(p_m, subsets):
        mask = np.ones(len(q), dtype=bool)
        mask[s] = False
        collapsed = np.append(q[s], q[mask].sum())
        total += np.sum(pm * np.log(pm / collapsed))
    return total


def test_dustbin_combination_matches_a_generic_optimizer():
    rng = np.random.default_rng(3)
    n, c = 6, 9
    p_g = random_distributions(rng, n, c)
    subsets = [np.array([0, 1, 2]), np.array([2, 3]), np.array([1, 5, 6, 8])]
    p_m = [random_distributions(rng, n, len(s) + 1) for s in subsets]
    active = np.ones((n, 3), dtype=bool)
    active[0] = [True, False, False]
    active[1] = [False, True, True]
    res = combine_distributions(p_g, p_m, subsets, active, tol=1e-11, max_iter=5000)
    assert res.converged.all()
    assert (res.n_iter[2:] > 1).all()  # overlapping dustbins need several steps
    for i in range(n):
        on = np.flatnonzero(active[i])
        args = (p_g[i], [p_m[m][i] for m in on], [subsets[m] for m in on])
        ref = minimize(
            np_objective, np.log(p_g[i]), args=args, method="BFGS", options={"gtol": 1e-10}
        )
        np.testing.assert_allclose(res.proba[i], softmax(ref.x), atol=1e-6)
        assert np_objective(np.log(res.proba[i]), *args) <= ref.fun + 1e-10


def test_rows_without_active_specialists_keep_the_generalist():
    rng = np.random.default_rng(4)
    p_g = random_distributions(rng, 4, 5)
    p_m = [np.full((4, 3), 1 / 3)]
    active = np.array([[True], [False], [True], [False]])
    res = combine_distributions(p_g, p_m, [np.array([0, 1])], active)
    np.testing.assert_array_equal(res.proba[[1, 3]], p_g[[1, 3]])
    np.testing.assert_array_equal(res.n_iter[[1, 3]], 0)
    assert not np.allclose(res.proba[[0, 2]], p_g[[0, 2]])


def test_each_example_is_optimized_independently_of_the_batch():
    rng = np.random.default_rng(5)
    p_g = random_distributions(rng, 30, 8)
    subsets = [np.array([0, 1, 2, 3]), np.array([2, 3, 4]), np.array([4, 5, 6])]
    p_m = [random_distributions(rng, 30, len(s) + 1) for s in subsets]
    active = rng.random((30, 3)) < 0.8
    full = combine_distributions(p_g, p_m, subsets, active, tol=1e-5)
    for i in [0, 7, 29]:
        one = combine_distributions(
            p_g[i : i + 1], [pm[i : i + 1] for pm in p_m], subsets, active[i : i + 1], tol=1e-5
        )
        np.testing.assert_allclose(one.proba[0], full.proba[i], rtol=0, atol=1e-13)
        assert one.n_iter[0] == full.n_iter[i]


def test_max_iter_stops_and_reports_non_convergence():
    rng = np.random.default_rng(6)
    p_g = random_distributions(rng, 5, 8)
    subsets = [np.array([0, 1, 2, 3]), np.array([2, 3, 4]), np.array([3, 4, 5, 6])]
    p_m = [random_distributions(rng, 5, len(s) + 1) for s in subsets]
    active = np.ones((5, 3), dtype=bool)
    res = combine_distributions(p_g, p_m, subsets, active, max_iter=2, tol=1e-12)
    np.testing.assert_array_equal(res.n_iter, 2)
    assert not res.converged.any()
    assert (res.grad_norm > 1e-12).all()
    np.testing.assert_allclose(res.proba.sum(axis=1), 1.0)
