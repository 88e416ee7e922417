"""The resampling of ``kdpipe.reproduce.stats`` against references computed here.

Every expected number below comes from numpy/scipy written in the test (a standard error
of per-row differences, ``scipy.stats.sem`` of per-seed gains, a delta-method standard
error, ``scipy.stats.t.interval``), never from the module's own outputs recombined.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kdpipe.reproduce.stats import (
    NO_GAP,
    NOT,
    PARTLY,
    REPRODUCED,
    UNDETERMINED,
    beats_verdict,
    share_interval,
    share_verdict,
    t_interval,
    unresolved,
)

# -- pairing -------------------------------------------------------------------------


def _paired_arms(n=10_000, extra=0.01, rng_seed=21):
    """Baselines whose seeds differ a lot (70%, 80%, 90%), and a distilled arm that is
    each baseline seed's correct-vector OR the same few extra rows (wrong in every
    baseline seed): the gain is the same for every seed, and lives on those rows only."""
    rng = np.random.default_rng(rng_seed)
    extra_rows = rng.random(n) < extra
    r = rng.random(n)  # nested seeds: a row right at 70% is right at 80% and 90%
    base = np.array([(r < p) & ~extra_rows for p in (0.70, 0.80, 0.90)])
    value = base | extra_rows
    top = rng.random(n) < 0.95
    return value, base, top, extra_rows


def test_share_interval_resamples_the_same_rows_and_seeds_for_every_arm():
    value, base, top, extra_rows = _paired_arms()
    n = extra_rows.size
    out = share_interval(value, base, top, n_boot=1000)
    # paired design: the per-row difference (seed-averaged) is the extra-rows indicator,
    # identical for every seed, so only the rows add noise: std / sqrt(n)
    per_row = (value.astype(float) - base).mean(axis=0)
    assert np.array_equal(per_row, extra_rows.astype(float))  # the design, as built
    paired = per_row.std() / math.sqrt(n)
    assert out["gain_se"] == pytest.approx(paired, rel=0.1)
    # unpaired references, computed here: rows drawn independently per arm, and seeds
    # drawn independently per arm (the baseline seeds' accuracies differ by 10 points)
    unpaired_rows = math.sqrt(value.mean(axis=0).var() / n + base.mean(axis=0).var() / n)
    unpaired_seeds = math.hypot(stats.sem(value.mean(axis=1)), stats.sem(base.mean(axis=1)))
    assert unpaired_rows > 4 * paired and unpaired_seeds > 30 * paired  # the design separates them
    assert out["gain_se"] < 1.5 * paired


# -- the sqrt(S / (S - 1)) seed correction ---------------------------------------------


def test_three_seeds_bootstrap_sd_of_the_gain_is_the_standard_error_of_per_seed_gains():
    rng = np.random.default_rng(31)
    n = 3_000
    b = rng.random(n) < 0.70
    u = rng.random(n)
    base = np.array([b, b, b])  # the baseline does not vary over seeds
    value = np.array([b | (u < q) for q in (0.05, 0.30, 0.70)])  # gains ~1.5, 9, 21 points
    top = rng.random(n) < 0.99
    out = share_interval(value, base, top, n_boot=2000)
    gains = value.mean(axis=1) - base.mean(axis=1)
    row_se = (value.astype(float) - base).mean(axis=0).std() / math.sqrt(n)
    seed_se = stats.sem(gains)
    assert row_se < 0.15 * seed_se  # the rows' noise is (nearly) negligible here
    expected = math.hypot(seed_se, row_se)
    # a plain bootstrap of 3 seeds would give sqrt(2/3) of it (18% less)
    assert out["gain_se"] == pytest.approx(expected, rel=0.07)
    assert abs(out["gain_se"] - expected * math.sqrt(2 / 3)) > 0.1 * expected


# -- the interval's level --------------------------------------------------------------


@pytest.mark.parametrize("level", [0.95, 0.90])
def test_one_seed_interval_matches_the_delta_method_normal_interval_at_its_level(level):
    rng = np.random.default_rng(41)
    n = 5_000
    base = rng.random(n) < 0.70
    top = rng.random(n) < 0.90
    value = rng.random(n) < 0.80
    out = share_interval(value, base, top, level=level, n_boot=2000)
    g = value.astype(float) - base
    d = top.astype(float) - base
    share = g.mean() / d.mean()
    assert out["share"] == pytest.approx(share)
    # delta method: share* - share ~ (d_gain - share d_gap) / gap
    se = (g - share * d).std() / math.sqrt(n) / d.mean()
    half = stats.norm.ppf(0.5 + level / 2) * se
    # the width within 8% (a 90% interval is 16% narrower than a 95% one, a 95% one 19%
    # wider than a 90% one); each end within 15%, which a one-sided interval misses
    assert (out["high"] - out["low"]) / 2 == pytest.approx(half, rel=0.08)
    assert out["low"] == pytest.approx(share - half, abs=0.15 * half)
    assert out["high"] == pytest.approx(share + half, abs=0.15 * half)


# -- verdicts as the experiments ask for them ------------------------------------------


def _nested(q, drop=0.0, n=10_000, rng_seed=51):
    """A baseline, a top that adds rows u < 0.5 of its errors, a value adding u < q."""
    rng = np.random.default_rng(rng_seed)
    b = rng.random(n) < 0.70
    u = rng.random(n)
    top = b | (u < 0.5)
    value = (b | (u < q)) & ~(rng.random(n) < drop)
    base = np.array([b, b, b])
    return np.array([value, value, value]), base, top


@pytest.mark.parametrize(
    ("q", "drop", "bar", "expected"),
    [
        (0.49, 0.0, 0.8, REPRODUCED),  # ~98% of the gap, interval far above zero
        (0.20, 0.0, 0.8, PARTLY),  # ~40%, interval above zero
        (0.35, 0.0, 0.8, PARTLY),  # ~70%: short of a bar of 80% ...
        (0.35, 0.0, 0.6, REPRODUCED),  # ... but past a bar of 60%: the interval's own bar
        (0.0, 0.02, 0.8, NOT),  # the value loses rows: the interval is below zero
    ],
)
def test_share_verdict_without_a_bar_uses_the_bar_of_the_interval(q, drop, bar, expected):
    value, base, top = _nested(q, drop)
    out = share_interval(value, base, top, bar=bar, n_boot=1000)
    share = (value.mean() - base.mean()) / (top.mean() - base.mean())
    assert out["share"] == pytest.approx(share)
    assert share_verdict(out) == expected


# -- an unsure gap -----------------------------------------------------------------------


def test_a_gap_some_resamples_lack_gives_minus_inf_low_and_not_reproduced():
    rng = np.random.default_rng(61)
    n = 2_000
    base = rng.random(n) < 0.80
    top = base.copy()
    # the top differs from the baseline on many rows, and is better on 20 more than worse:
    # many resamples have a negative gap, few an exactly zero one
    lost = rng.choice(np.flatnonzero(base), 130, replace=False)
    gained = rng.choice(np.flatnonzero(~base), 150, replace=False)
    top[lost] = False
    top[gained] = True
    value = base.copy()
    value[gained[:15]] = True  # 15 of the 20 rows of the gap: a share of 3/4
    d = top.astype(float) - base
    assert d.mean() > 0  # a gap, but under 1.5 of its standard errors
    assert d.mean() < 1.5 * d.std() / math.sqrt(n)
    out = share_interval(value, base, top, bar=0.8, n_boot=1000)
    assert out["share"] == pytest.approx(3 / 4)
    # "a resample without a gap counts as a share of -inf" (not gain / negative gap)
    assert out["low"] == -math.inf
    assert out["resolution"] == math.inf
    assert share_verdict(out) == NOT == "not reproduced"


# -- unresolved --------------------------------------------------------------------------


def test_unresolved_is_false_without_a_gap_whatever_gap_needed_says():
    assert unresolved({"share": math.nan, "gap": 0.001, "gap_needed": 0.013}) is False
    assert unresolved({"share": None, "gap": -0.004, "gap_needed": 0.013}) is False  # JSON null
    assert unresolved({"share": 0.5, "gap": 0.006, "gap_needed": 0.013}) is True
    rng = np.random.default_rng(71)
    top = rng.random(500) < 0.5
    base = rng.random((3, 500)) < 0.9
    out = share_interval(base, base, top, bar=0.8, n_boot=200)
    assert math.isnan(out["share"]) and out["gap"] < out["gap_needed"]
    assert unresolved(out) is False


# -- edge cases --------------------------------------------------------------------------


def test_a_low_end_of_exactly_zero_reaches_zero_and_is_not_reproduced():
    assert share_verdict({"share": 0.9, "low": 0.0, "high": 1.2}, 0.8) == NOT
    assert share_verdict({"share": 0.9, "low": 1e-12, "high": 1.2}, 0.8) == REPRODUCED


def test_a_value_equal_to_the_baseline_has_share_zero_low_zero_and_is_not_reproduced():
    value, base, top = _nested(0.0)
    out = share_interval(value, base, top, bar=0.8, n_boot=200)
    assert out["share"] == 0.0 and out["low"] == 0.0
    assert share_verdict(out) == NOT


def test_a_gap_exactly_at_gap_needed_is_resolved():
    # "a gap under the gap_needed": equal is not under
    assert unresolved({"share": 0.5, "gap": 0.013, "gap_needed": 0.013}) is False
    assert unresolved({"share": 0.5, "gap": 0.013 - 1e-12, "gap_needed": 0.013}) is True


@pytest.mark.parametrize(
    ("lows", "expected"),
    [([0.0], NOT), ([0.0, 0.01], PARTLY), ([1e-12, 0.01], REPRODUCED)],
)
def test_beats_verdict_a_low_end_of_exactly_zero_does_not_lie_above_zero(lows, expected):
    assert beats_verdict([{"low": low} for low in lows]) == expected


def test_beats_verdict_refuses_no_difference():
    with pytest.raises(ValueError, match="at least one"):
        beats_verdict([])


@pytest.mark.parametrize("same_rows", [True, False])
def test_a_gap_of_exactly_zero_is_no_gap_not_a_division_error(same_rows):
    rng = np.random.default_rng(81)
    n = 1_000
    base = np.array([rng.random(n) < 0.8 for _ in range(3)])
    top = base.copy() if same_rows else np.roll(base, 1, axis=0)  # same mean, other rows
    assert top.mean() == base.mean()
    value = base | (rng.random(n) < 0.05)
    out = share_interval(value, base, top, bar=0.8, n_boot=200)
    # "share: nan when top is no better than base on average"
    assert out["gap"] == 0.0
    assert math.isnan(out["share"])
    assert share_verdict(out) == NO_GAP
    assert unresolved(out) is False
    if same_rows:  # no seed and no resample has a gap
        assert all(math.isnan(s) for s in out["per_seed"])
        assert out["low"] == out["high"] == -math.inf


@pytest.mark.parametrize("bar", [0.0, -0.1, 1.01, math.nan])
def test_share_interval_refuses_a_bar_outside_zero_excluded_to_one(bar):
    top = np.ones(10, dtype=bool)
    with pytest.raises(ValueError, match="bar must be a share"):
        share_interval(top, ~top, top, bar=bar, n_boot=10)


def test_share_interval_accepts_a_bar_of_one():
    top = np.ones(10, dtype=bool)
    assert share_interval(top, ~top, top, bar=1.0, n_boot=10)["bar"] == 1.0


# -- t_interval --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[0.81, 0.84], [0.90, 0.92, 0.97], [0.1, -0.3, 0.25, 0.05, 0.4]])
@pytest.mark.parametrize("level", [0.95, 0.90])
def test_t_interval_is_scipys_student_t_interval(values, level):
    x = np.asarray(values)
    low, high = stats.t.interval(level, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    mean, lo, hi = t_interval(values, level=level)
    assert mean == pytest.approx(x.mean())
    assert lo == pytest.approx(low)
    assert hi == pytest.approx(high)


def test_t_interval_of_one_value_has_no_interval():
    mean, lo, hi = t_interval([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert beats_verdict([{"low": lo}]) == UNDETERMINED
