"""The distillation math of kdpipe, tested against the equations of Hinton et al. (2015).

Every reference value here is computed independently of ``kdpipe.losses``: in float64
numpy, straight from the paper's formulas (section 2, eq. 2-4). The module's own
implementation (log_softmax, xlogy, KL) is never re-run as the expected value.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdpipe

soft_targets = kdpipe.soft_targets
distillation_loss = kdpipe.distillation_loss
hard_label_loss = kdpipe.hard_label_loss
logit_matching_loss = kdpipe.logit_matching_loss

COMBINES = ["arithmetic", "geometric"]


# ---------------------------------------------------------------------------------------
# Independent float64 references (the paper's formulas, written out).
# ---------------------------------------------------------------------------------------
def np_softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``q_i = exp(x_i / T) / sum_j exp(x_j / T)`` in float64, along the last axis."""
    x = np.asarray(x, dtype=np.float64) / temperature
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_log_softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``log q_i`` in float64 (log-sum-exp), finite for logits of any magnitude."""
    x = np.asarray(x, dtype=np.float64) / temperature
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_soft_targets(v: np.ndarray, temperature: float, combine: str) -> np.ndarray:
    """Soft targets of a teacher ``(n, C)`` or ensemble ``(n, M, C)``, float64."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 2:
        v = v[:, None, :]
    if combine == "arithmetic":
        return np_softmax(v, temperature).mean(axis=1)  # mean of member distributions
    # normalized geometric mean of the member distributions, in the log domain so that
    # huge logits do not underflow: log prod^(1/M) = mean of the members' log q
    log_geo = np_log_softmax(v, temperature).mean(axis=1)  # (n, C)
    return np_softmax(log_geo)


def np_kl(p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """Per-row ``sum_i p_i (log p_i - log q_i)`` in float64 (0 log 0 = 0)."""
    safe_p = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * (np.log(safe_p) - log_q), 0.0).sum(axis=-1)


def np_cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    """Mean of ``-log softmax(z)[y]`` over rows with ``y >= 0``, float64."""
    labeled = y >= 0
    log_q = np_log_softmax(np.asarray(z, dtype=np.float64)[labeled])
    return float(-log_q[np.arange(labeled.sum()), y[labeled]].mean())


def as_f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def student_grad(
    z: np.ndarray,
    v: np.ndarray,
    y: np.ndarray | None = None,
    *,
    temperature: float,
    alpha: float,
    combine: str = "arithmetic",
    scale: float = 1.0,
) -> tuple[float, np.ndarray]:
    """Loss value and d(scale * loss)/dz from kdpipe, as float64 numpy."""
    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    vt = torch.tensor(v, dtype=torch.float32)
    yt = None if y is None else torch.tensor(y, dtype=torch.int64)
    loss = distillation_loss(zt, vt, yt, temperature=temperature, alpha=alpha, combine=combine)
    (loss * scale).backward()
    return loss.detach().item(), as_f64(zt.grad)


def f32(x: np.ndarray) -> np.ndarray:
    """Round to float32 (the module computes in float32) and return as float64."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def zero_mean(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=-1, keepdims=True)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20150309)


# ---------------------------------------------------------------------------------------
# 1. Eq. 2: dC/dz_i = (1/T)(q_i - p_i), averaged over n rows.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize("members", [None, 3])
@pytest.mark.parametrize("combine", COMBINES)
def test_soft_gradient_is_eq2(rng, temperature, members, combine):
    n, c = 7, 6
    z = f32(rng.normal(scale=3.0, size=(n, c)))
    shape = (n, c) if members is None else (n, members, c)
    v = f32(rng.normal(scale=3.0, size=shape))

    _, grad = student_grad(
        z, v, temperature=temperature, alpha=0.0, combine=combine, scale=1.0 / temperature**2
    )

    q = np_softmax(z, temperature)
    p = np_soft_targets(v, temperature, combine)
    expected = (q - p) / temperature / n
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    # the gradient of a softmax loss sums to zero over classes in every row
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-7)


@pytest.mark.parametrize("members", [None, 3])
@pytest.mark.parametrize("combine", COMBINES)
def test_a_teacher_trained_alongside_gets_the_gradient_of_the_formula(rng, members, combine):
    """Teacher logits that require grad (online distillation) get d loss / d v of
    (1 - alpha) T^2 mean KL(p || q_T) + alpha CE, differentiated in float64 by torch."""
    n, c, temperature, alpha = 5, 7, 3.0, 0.3
    z = f32(rng.normal(scale=2.0, size=(n, c)))
    shape = (n, c) if members is None else (n, members, c)
    v = f32(rng.normal(scale=2.0, size=shape))
    y = torch.tensor(rng.integers(0, c, size=n))
    teacher = torch.tensor(v, requires_grad=True)
    distillation_loss(
        torch.tensor(z), teacher, y, temperature=temperature, alpha=alpha, combine=combine
    ).backward()

    v64 = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    m = v64 if members is not None else v64[:, None]
    if combine == "arithmetic":
        p = torch.softmax(m / temperature, dim=-1).mean(dim=1)
    else:
        p = torch.softmax(m.mean(dim=1) / temperature, dim=-1)
    log_q = torch.log_softmax(torch.tensor(z, dtype=torch.float64) / temperature, dim=-1)
    kl = (p * (torch.log(p) - log_q)).sum(dim=-1).mean()
    ((1 - alpha) * temperature**2 * kl).backward()  # the hard term does not depend on v
    np.testing.assert_allclose(teacher.grad.numpy(), v64.grad.numpy(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# 2. Eq. 3-4: at high T the T^2-scaled gradient tends to (1/C)(z - v)/n.
# ---------------------------------------------------------------------------------------
def test_high_temperature_limit(rng):
    n, c = 8, 10
    z = f32(zero_mean(rng.normal(size=(n, c))))
    v = f32(zero_mean(rng.normal(size=(n, c))))
    limit = (z - v) / c / n

    errors = []
    for temperature in [5.0, 20.0, 100.0]:
        _, grad = student_grad(z, v, temperature=temperature, alpha=0.0)
        errors.append(rel_err(grad, limit))

    assert errors[-1] < 0.01, errors
    assert errors[0] > errors[1] > errors[2], errors
    # the approach is O(1/T): not already at the limit at T=5
    assert errors[0] > 0.02, errors


# ---------------------------------------------------------------------------------------
# 3. The T^2 factor keeps the soft gradient's magnitude stable across T.
# ---------------------------------------------------------------------------------------
def test_t_squared_factor_keeps_gradient_magnitude(rng):
    n, c = 16, 10
    z = f32(rng.normal(size=(n, c)))
    v = f32(rng.normal(size=(n, c)))
    temperatures = [1.0, 2.0, 5.0, 10.0, 20.0]

    scaled, unscaled = [], []
    for temperature in temperatures:
        _, grad = student_grad(z, v, temperature=temperature, alpha=0.0)
        scaled.append(np.linalg.norm(grad))
        unscaled.append(np.linalg.norm(grad) / temperature**2)

    assert max(scaled) / min(scaled) < 2.0, scaled
    # without the factor the gradient shrinks roughly as 1/T^2 (400x from T=1 to T=20)
    assert unscaled[0] / unscaled[-1] > 100.0, unscaled
    assert all(a > b for a, b in itertools.pairwise(unscaled)), unscaled


# ---------------------------------------------------------------------------------------
# 4. Ensemble combination.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 3.0, 10.0])
def test_geometric_combination(rng, temperature):
    n, m, c = 5, 4, 7
    v = f32(rng.normal(scale=4.0, size=(n, m, c)))
    got = as_f64(soft_targets(torch.tensor(v, dtype=torch.float32), temperature, "geometric"))

    # softmax of the mean logits
    np.testing.assert_allclose(got, np_softmax(v.mean(axis=1), temperature), rtol=1e-5, atol=1e-7)
    # normalized geometric mean of the members' distributions, computed directly
    members = np_softmax(v, temperature)
    geo = np.prod(members, axis=1) ** (1.0 / m)
    np.testing.assert_allclose(got, geo / geo.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    # and it is genuinely different from the arithmetic mean for diverse members
    assert np.abs(got - members.mean(axis=1)).max() > 1e-2


@pytest.mark.parametrize("temperature", [1.0, 3.0, 10.0])
def test_arithmetic_combination(rng, temperature):
    n, m, c = 5, 4, 7
    v = f32(rng.normal(scale=4.0, size=(n, m, c)))
    got = as_f64(soft_targets(torch.tensor(v, dtype=torch.float32), temperature, "arithmetic"))
    np.testing.assert_allclose(got, np_softmax(v, temperature).mean(axis=1), rtol=1e-5, atol=1e-7)
    # default combine is arithmetic
    default = as_f64(soft_targets(torch.tensor(v, dtype=torch.float32), temperature))
    np.testing.assert_array_equal(default, got)


# ---------------------------------------------------------------------------------------
# 5. An ensemble of identical members is the single member.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("members", [1, 2, 5])
def test_identical_members_equal_single_teacher(rng, combine, members):
    n, c, temperature = 6, 5, 3.0
    z = torch.tensor(rng.normal(scale=2.0, size=(n, c)), dtype=torch.float32)
    single = torch.tensor(rng.normal(scale=2.0, size=(n, c)), dtype=torch.float32)
    ensemble = single[:, None, :].expand(n, members, c).contiguous()
    y = torch.tensor(rng.integers(-1, c, size=n))

    p_single = soft_targets(single, temperature, combine)
    p_ens = soft_targets(ensemble, temperature, combine)
    torch.testing.assert_close(p_ens, p_single, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        as_f64(p_single), np_softmax(f32(single.numpy()), temperature), rtol=1e-5, atol=1e-7
    )

    kwargs = dict(temperature=temperature, alpha=0.3, combine=combine)
    torch.testing.assert_close(
        distillation_loss(z, ensemble, y, **kwargs),
        distillation_loss(z, single, y, **kwargs),
        rtol=1e-6,
        atol=1e-6,
    )


# ---------------------------------------------------------------------------------------
# 6. Unlabeled rows (y = -1) get no hard-label gradient.
# ---------------------------------------------------------------------------------------
def _mixed_problem(rng, n=8, c=5):
    z = f32(rng.normal(scale=2.0, size=(n, c)))
    v = f32(rng.normal(scale=2.0, size=(n, c)))
    y = rng.integers(0, c, size=n)
    y[[1, 4, 5]] = -1
    return z, v, y


def test_unlabeled_rows_get_zero_gradient_at_alpha_one(rng):
    z, v, y = _mixed_problem(rng)
    _, grad = student_grad(z, v, y, temperature=4.0, alpha=1.0)
    unlabeled = y < 0
    assert np.all(grad[unlabeled] == 0.0)
    assert np.all(np.abs(grad[~unlabeled]).max(axis=1) > 1e-3)  # labeled rows do learn


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_unlabeled_rows_get_only_soft_gradient(rng, alpha, temperature):
    z, v, y = _mixed_problem(rng)
    n = len(y)
    _, grad = student_grad(z, v, y, temperature=temperature, alpha=alpha)
    # soft term per eq. 2, times T^2 and (1 - alpha), averaged over all n rows
    soft = (1 - alpha) * temperature * (np_softmax(z, temperature) - np_softmax(v, temperature)) / n
    unlabeled = y < 0
    np.testing.assert_allclose(grad[unlabeled], soft[unlabeled], rtol=1e-4, atol=1e-7)
    # a labeled row additionally gets alpha * (q_1 - onehot) / n_labeled
    onehot = np.eye(z.shape[1])[y[~unlabeled]]
    hard = alpha * (np_softmax(z[~unlabeled]) - onehot) / (~unlabeled).sum()
    np.testing.assert_allclose(grad[~unlabeled], soft[~unlabeled] + hard, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_y_none_equals_all_unlabeled(rng, alpha):
    z, v, _ = _mixed_problem(rng)
    loss_none, grad_none = student_grad(z, v, None, temperature=3.0, alpha=alpha)
    loss_neg, grad_neg = student_grad(z, v, np.full(len(z), -1), temperature=3.0, alpha=alpha)
    assert loss_none == loss_neg
    np.testing.assert_array_equal(grad_none, grad_neg)
    # and that is the soft term alone, weighted by (1 - alpha)
    expected = (1 - alpha) * 3.0**2 * np_kl(np_softmax(v, 3.0), np_log_softmax(z, 3.0)).mean()
    assert loss_none == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_hard_label_loss_all_unlabeled_is_zero_with_gradient(rng):
    z = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32, requires_grad=True)
    loss = hard_label_loss(z, torch.full((4,), -1))
    assert loss.requires_grad  # a zero that still carries a gradient
    assert loss.detach().item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_checked_labels_give_the_same_mean_over_labeled_rows(rng):
    z, v, y = _mixed_problem(rng)
    zt, yt = torch.tensor(z, dtype=torch.float32), torch.tensor(y)
    checked = hard_label_loss(zt, yt, labels_checked=True)
    assert float(checked) == pytest.approx(np_cross_entropy(z, y), rel=1e-5)
    full = distillation_loss(
        zt, torch.tensor(v), yt, temperature=3.0, alpha=0.4, labels_checked=True
    )
    assert float(full) == pytest.approx(
        float(distillation_loss(zt, torch.tensor(v), yt, temperature=3.0, alpha=0.4)), rel=1e-6
    )


# ---------------------------------------------------------------------------------------
# 7. The hard term and the convex combination.
# ---------------------------------------------------------------------------------------
def test_alpha_one_is_mean_cross_entropy_over_labeled_rows(rng):
    z, v, y = _mixed_problem(rng)
    expected = np_cross_entropy(z, y)
    loss, _ = student_grad(z, v, y, temperature=5.0, alpha=1.0)
    assert loss == pytest.approx(expected, rel=1e-5)
    hard = hard_label_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    assert float(hard) == pytest.approx(expected, rel=1e-5)
    # the hard term is at T = 1: the temperature does not enter it
    loss_t1, _ = student_grad(z, v, y, temperature=1.0, alpha=1.0)
    assert loss_t1 == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5, 8.0])
def test_loss_is_convex_combination(rng, alpha, temperature):
    z, v, y = _mixed_problem(rng)
    soft = temperature**2 * np_kl(np_softmax(v, temperature), np_log_softmax(z, temperature)).mean()
    hard = np_cross_entropy(z, y)
    loss, _ = student_grad(z, v, y, temperature=temperature, alpha=alpha)
    assert loss == pytest.approx((1 - alpha) * soft + alpha * hard, rel=1e-5, abs=1e-6)


def test_soft_term_is_zero_when_student_matches_teacher(rng):
    v = f32(rng.normal(scale=3.0, size=(5, 4)))
    loss, grad = student_grad(v + 7.0, v, temperature=2.0, alpha=0.0)
    assert loss == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------------
# 8. Properties (hypothesis).
# ---------------------------------------------------------------------------------------
@st.composite
def problems(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 8))
    members = draw(st.sampled_from([None, 1, 2, 3]))
    scale = draw(st.floats(0.1, 10.0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, c)).astype(np.float32)
    v_shape = (n, c) if members is None else (n, members, c)
    v = rng.normal(scale=scale, size=v_shape).astype(np.float32)
    y = rng.integers(-1, c, size=n)
    temperature = draw(st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]))
    alpha = draw(st.sampled_from([0.0, 0.3, 1.0]))
    combine = draw(st.sampled_from(COMBINES))
    # ``seed`` also drives the shifts and permutations drawn inside each test
    return dict(z=z, v=v, y=y, temperature=temperature, alpha=alpha, combine=combine, seed=seed)


def _loss(z, v, y, temperature, alpha, combine) -> float:
    return float(
        distillation_loss(
            torch.from_numpy(np.ascontiguousarray(z)),
            torch.from_numpy(np.ascontiguousarray(v)),
            torch.from_numpy(np.ascontiguousarray(y)),
            temperature=temperature,
            alpha=alpha,
            combine=combine,
        )
    )


def _close(a: float, b: float, temperature: float) -> bool:
    # float32 rounding of a shifted logit is ~1e-6 |z| / T inside, times T^2 outside
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=2e-4 * max(temperature, 1.0))


def _aux_rng(pb) -> np.random.Generator:
    """Randomness for shifts and permutations, reproducible from the drawn seed."""
    return np.random.default_rng(pb["seed"] + 1)


PROPS = settings(max_examples=50, deadline=None)


@PROPS
@given(problems())
def test_prop_per_row_shift_of_student_changes_nothing(pb):
    base = _loss(pb["z"], pb["v"], pb["y"], pb["temperature"], pb["alpha"], pb["combine"])
    shift = _aux_rng(pb).uniform(-10, 10, size=(len(pb["z"]), 1)).astype(np.float32)
    shifted = _loss(
        pb["z"] + shift, pb["v"], pb["y"], pb["temperature"], pb["alpha"], pb["combine"]
    )
    assert _close(shifted, base, pb["temperature"]), (shifted, base)


@PROPS
@given(problems())
def test_prop_per_row_per_member_shift_of_teacher_changes_nothing(pb):
    v = pb["v"]
    base = _loss(pb["z"], v, pb["y"], pb["temperature"], pb["alpha"], pb["combine"])
    shift = _aux_rng(pb).uniform(-10, 10, size=v.shape[:-1] + (1,)).astype(np.float32)
    shifted = _loss(pb["z"], v + shift, pb["y"], pb["temperature"], pb["alpha"], pb["combine"])
    assert _close(shifted, base, pb["temperature"]), (shifted, base)
    p0 = soft_targets(torch.from_numpy(v), pb["temperature"], pb["combine"])
    p1 = soft_targets(torch.from_numpy(v + shift), pb["temperature"], pb["combine"])
    torch.testing.assert_close(p1, p0, rtol=1e-4, atol=1e-5)


@PROPS
@given(problems(), st.sampled_from([1.0, 1e2, 1e4]))
def test_prop_soft_targets_are_distributions(pb, magnitude):
    v = torch.from_numpy(pb["v"] * np.float32(magnitude))
    p = soft_targets(v, pb["temperature"], pb["combine"])
    assert p.dtype == torch.float32
    assert p.shape == (v.shape[0], v.shape[-1])
    assert bool((p >= 0).all())
    torch.testing.assert_close(p.sum(dim=-1), torch.ones(v.shape[0]), rtol=0, atol=1e-5)


@PROPS
@given(problems())
def test_prop_soft_loss_is_nonnegative(pb):
    loss = _loss(pb["z"], pb["v"], pb["y"], pb["temperature"], 0.0, pb["combine"])
    # KL >= 0; allow float32 rounding of a KL that is exactly zero in exact arithmetic
    assert loss >= -1e-5 * pb["temperature"] ** 2, loss


@PROPS
@given(problems())
def test_prop_row_permutation_leaves_loss_unchanged(pb):
    perm = _aux_rng(pb).permutation(len(pb["z"]))
    base = _loss(pb["z"], pb["v"], pb["y"], pb["temperature"], pb["alpha"], pb["combine"])
    permuted = _loss(
        pb["z"][perm], pb["v"][perm], pb["y"][perm], pb["temperature"], pb["alpha"], pb["combine"]
    )
    assert _close(permuted, base, pb["temperature"]), (permuted, base)


@PROPS
@given(problems())
def test_prop_consistent_class_permutation_leaves_loss_unchanged(pb):
    c = pb["z"].shape[1]
    perm = _aux_rng(pb).permutation(c)  # new class j is old class perm[j]
    inverse = np.argsort(perm)
    y = pb["y"]
    y_perm = np.where(y >= 0, inverse[np.maximum(y, 0)], -1)
    base = _loss(pb["z"], pb["v"], y, pb["temperature"], pb["alpha"], pb["combine"])
    permuted = _loss(
        pb["z"][:, perm], pb["v"][..., perm], y_perm, pb["temperature"], pb["alpha"], pb["combine"]
    )
    assert _close(permuted, base, pb["temperature"]), (permuted, base)


@PROPS
@given(problems())
def test_prop_loss_matches_paper_formula(pb):
    """Any shape, any mode: (1 - alpha) T^2 KL(p || q_T) + alpha CE(y, q_1), float64."""
    z, v, y, temperature, alpha = pb["z"], pb["v"], pb["y"], pb["temperature"], pb["alpha"]
    soft = (
        temperature**2
        * np_kl(
            np_soft_targets(v, temperature, pb["combine"]), np_log_softmax(z, temperature)
        ).mean()
    )
    hard = np_cross_entropy(z, y) if (y >= 0).any() else 0.0
    expected = (1 - alpha) * soft + alpha * hard
    got = _loss(z, v, y, temperature, alpha, pb["combine"])
    assert math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-4 * max(temperature, 1.0) ** 2)


# ---------------------------------------------------------------------------------------
# 9. Numerical stability and reduced-precision inputs.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.0, 20.0])
@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("m", [1, 3])  # one teacher: softmax rows with exact zeros
def test_huge_logits_are_finite(rng, temperature, combine, m):
    n, c = 6, 5
    z = f32(rng.normal(scale=1e4, size=(n, c)))
    v = f32(rng.normal(scale=1e4, size=(n, m, c)))
    y = rng.integers(-1, c, size=n)
    loss, grad = student_grad(z, v, y, temperature=temperature, alpha=0.5, combine=combine)
    assert math.isfinite(loss)
    assert np.all(np.isfinite(grad))
    expected = 0.5 * temperature**2 * np_kl(
        np_soft_targets(v, temperature, combine), np_log_softmax(z, temperature)
    ).mean() + 0.5 * np_cross_entropy(z, y)
    assert loss == pytest.approx(expected, rel=1e-4)

    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    lm = logit_matching_loss(zt, torch.tensor(v, dtype=torch.float32))
    lm.backward()
    assert torch.isfinite(lm) and bool(torch.isfinite(zt.grad).all())


@pytest.mark.parametrize("combine", COMBINES)
def test_a_masked_teacher_class_contributes_zero_not_nan(combine):
    """A teacher logit of -inf (a class masked out): p = 0 there, and 0 log 0 = 0."""
    v = torch.tensor([[[2.0, 0.0, float("-inf")]], [[1.0, -1.0, float("-inf")]]])
    z = torch.zeros(2, 3, requires_grad=True)
    loss = distillation_loss(z, v, temperature=1.0, alpha=0.0, combine=combine)
    loss.backward()
    p = np.exp([[2.0, 0.0], [1.0, -1.0]])
    p /= p.sum(axis=1, keepdims=True)
    expected = (p * np.log(p / (1 / 3))).sum(axis=1).mean()  # the masked class adds 0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    q_minus_p = np.concatenate([1 / 3 - p, np.full((2, 1), 1 / 3)], axis=1) / 2  # eq. 2, T = 1
    np.testing.assert_allclose(z.grad.numpy(), q_minus_p, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_half_precision_inputs_compute_in_float32(rng, dtype, temperature):
    n, m, c = 6, 2, 8
    # logits large enough that exp() would overflow float16 and that half-precision
    # arithmetic (eps ~1e-3 / 8e-3) would be visibly inaccurate
    z = torch.tensor(rng.normal(scale=8.0, size=(n, c))).to(dtype)
    v = torch.tensor(rng.normal(scale=8.0, size=(n, m, c))).to(dtype)
    y = torch.tensor(rng.integers(-1, c, size=n))
    z64, v64 = z.double().numpy(), v.double().numpy()  # the rounded values, exactly

    z_leaf = z.clone().requires_grad_(True)
    loss = distillation_loss(z_leaf, v, y, temperature=temperature, alpha=0.3)
    assert loss.dtype == torch.float32
    loss.backward()
    assert bool(torch.isfinite(z_leaf.grad.float()).all())

    reference = distillation_loss(z.float(), v.float(), y, temperature=temperature, alpha=0.3)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    expected = 0.7 * temperature**2 * np_kl(
        np_soft_targets(v64, temperature, "arithmetic"), np_log_softmax(z64, temperature)
    ).mean() + 0.3 * np_cross_entropy(z64, y.numpy())
    assert loss.detach().item() == pytest.approx(expected, rel=1e-5)

    p = soft_targets(v, temperature, "geometric")
    assert p.dtype == torch.float32
    np.testing.assert_allclose(
        as_f64(p), np_soft_targets(v64, temperature, "geometric"), rtol=1e-5, atol=1e-7
    )
    for fn, args in [(hard_label_loss, (z, y)), (logit_matching_loss, (z, v))]:
        out = fn(*args)
        assert out.dtype == torch.float32
    assert float(hard_label_loss(z, y)) == pytest.approx(np_cross_entropy(z64, y.numpy()), rel=1e-5)


# ---------------------------------------------------------------------------------------
# 10. Logit matching (Caruana) and its relation to distillation at high T (eq. 4).
# ---------------------------------------------------------------------------------------
def test_logit_matching_value(rng):
    n, c = 7, 6
    z = f32(rng.normal(scale=2.0, size=(n, c)))
    v = f32(rng.normal(scale=2.0, size=(n, c)))
    expected = np.mean(0.5 * np.sum((zero_mean(z) - zero_mean(v)) ** 2, axis=1))
    got = float(
        logit_matching_loss(
            torch.tensor(z, dtype=torch.float32), torch.tensor(v, dtype=torch.float32)
        )
    )
    assert got == pytest.approx(expected, rel=1e-5)
    # per-row shifts of either side change nothing
    shifted = float(
        logit_matching_loss(
            torch.tensor(z + rng.uniform(-50, 50, size=(n, 1)), dtype=torch.float32),
            torch.tensor(v + rng.uniform(-50, 50, size=(n, 1)), dtype=torch.float32),
        )
    )
    assert shifted == pytest.approx(expected, rel=1e-4)
    # without zero-meaning the naive squared error would differ (the shift matters)
    assert np.mean(0.5 * np.sum((z + 3.0 - v) ** 2, axis=1)) > expected + 1.0


def test_logit_matching_ensemble_uses_mean_logits(rng):
    n, m, c = 5, 3, 4
    z = f32(rng.normal(size=(n, c)))
    v = f32(rng.normal(size=(n, m, c)))
    expected = np.mean(0.5 * np.sum((zero_mean(z) - zero_mean(v.mean(axis=1))) ** 2, axis=1))
    got = float(
        logit_matching_loss(
            torch.tensor(z, dtype=torch.float32), torch.tensor(v, dtype=torch.float32)
        )
    )
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("members", [None, 3])
def test_logit_matching_is_high_temperature_distillation(rng, members):
    n, c = 8, 10
    z = f32(rng.normal(size=(n, c)) + 5.0)  # not zero-meaned: both losses ignore the shift
    shape = (n, c) if members is None else (n, members, c)
    v = f32(rng.normal(size=shape) - 2.0)

    zt = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    logit_matching_loss(zt, torch.tensor(v, dtype=torch.float32)).backward()
    grad_lm = as_f64(zt.grad)
    v_mean = v if members is None else v.mean(axis=1)
    np.testing.assert_allclose(
        grad_lm, (zero_mean(z) - zero_mean(v_mean)) / n, rtol=1e-4, atol=1e-6
    )

    # the geometric mean is the softmax of the mean logits, the same teacher logit matching sees
    _, grad_kd = student_grad(z, v, temperature=500.0, alpha=0.0, combine="geometric")
    assert rel_err(grad_kd, grad_lm / c) < 0.005
    # at low temperature the two differ substantially
    _, grad_kd_low = student_grad(z, v, temperature=1.0, alpha=0.0, combine="geometric")
    assert rel_err(grad_kd_low, grad_lm / c) > 0.1


# ---------------------------------------------------------------------------------------
# 11. Errors name the problem.
# ---------------------------------------------------------------------------------------
def _z(n=4, c=3):
    return torch.zeros(n, c)


@pytest.mark.parametrize(
    "student, teacher, match",
    [
        (_z(4, 3), torch.zeros(5, 3), "rows and classes must agree"),
        (_z(4, 3), torch.zeros(4, 4), "rows and classes must agree"),
        (_z(4, 3), torch.zeros(4, 2, 4), "rows and classes must agree"),
        (_z(4, 3), torch.zeros(3, 2, 3), "rows and classes must agree"),
        (_z(4, 3), torch.zeros(4, 2, 2, 3), r"teacher_logits must have shape .*\(4, 2, 2, 3\)"),
        (_z(4, 3), torch.zeros(4), r"teacher_logits must have shape"),
        (torch.zeros(4, 1, 3), torch.zeros(4, 3), r"student_logits must have shape"),
    ],
)
def test_shape_errors(student, teacher, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(student, teacher, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match=match):
        logit_matching_loss(student, teacher)


def test_soft_targets_rejects_4d_teacher():
    with pytest.raises(ValueError, match=r"teacher_logits must have shape"):
        soft_targets(torch.zeros(2, 2, 2, 3), 1.0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_errors(temperature):
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(_z(), _z(), temperature=temperature, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(_z(), temperature)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, float("nan"), float("inf")])
def test_alpha_errors(alpha):
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(_z(), _z(), temperature=2.0, alpha=alpha)


@pytest.mark.parametrize("bad", [3, -2, 100])
def test_label_range_errors(bad):
    y = torch.tensor([0, 1, bad, -1])
    with pytest.raises(ValueError, match=rf"labels must be class codes in \[-1, 3\).*{bad}"):
        distillation_loss(_z(), _z(), y, temperature=2.0, alpha=0.5)
    # labels are checked even when the hard term has zero weight
    with pytest.raises(ValueError, match=r"labels must be class codes"):
        distillation_loss(_z(), _z(), y, temperature=2.0, alpha=0.0)
    with pytest.raises(ValueError, match=r"labels must be class codes"):
        hard_label_loss(_z(), y)


@pytest.mark.parametrize(
    "y", [torch.tensor([0.0, 1.0, 2.0, 0.0]), torch.tensor([True, False, True, False])]
)
def test_non_integer_label_errors(y):
    with pytest.raises(ValueError, match="integer"):
        distillation_loss(_z(), _z(), y, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="integer"):
        hard_label_loss(_z(), y)


def test_label_shape_error():
    with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
        distillation_loss(_z(), _z(), torch.tensor([0, 1]), temperature=2.0, alpha=0.5)


def test_unknown_combine_error():
    with pytest.raises(ValueError, match="combine must be .*'harmonic'"):
        distillation_loss(
            _z(), torch.zeros(4, 2, 3), temperature=2.0, alpha=0.5, combine="harmonic"
        )
    with pytest.raises(ValueError, match="combine"):
        soft_targets(_z(), 2.0, combine="median")


def test_non_float_logits_error():
    with pytest.raises(ValueError, match="student_logits must be floating point"):
        distillation_loss(torch.zeros(4, 3, dtype=torch.int64), _z(), temperature=1.0, alpha=0.0)
    with pytest.raises(ValueError, match="teacher_logits must be floating point"):
        soft_targets(torch.zeros(4, 3, dtype=torch.int64), 1.0)
