"""Intervals and the verdict rules of ``kdpipe reproduce``.

Two sources of noise sit in every number of a run: the students' seeds, and the test
set itself (10,000 rows give an accuracy a standard error of about 0.003). Both enter
every interval here:

- a **share of a gap** (gap closed, gain kept, gap recovered) is the ratio of the means,
  ``(mean(value) - mean(base)) / (mean(top) - mean(base))``, with a bootstrap interval that
  resamples the seeds and the test rows together (:func:`share_interval`), and, given the
  paper's share, the gap below which this noise would not let that share be told from
  zero (``gap_needed``): a finding can be missed because the run could not see it;
- a **paired difference** (one model beats another) is the mean over seeds of the
  per-seed difference, with a Student-t interval whose standard error adds the seeds'
  variance to the test rows' bootstrap variance (:func:`difference_interval`).

Every input is a boolean array of per-test-row correctness, ``(seeds, rows)`` for
models trained once per seed or ``(rows,)`` for a model trained once (a teacher), so
the test rows are resampled identically for every model of a comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "REPRODUCED",
    "PARTLY",
    "NOT",
    "NO_GAP",
    "UNDETERMINED",
    "LEVEL",
    "mean_se",
    "t_interval",
    "share_interval",
    "unresolved",
    "difference_interval",
    "share_verdict",
    "beats_verdict",
]

REPRODUCED = "reproduced"
PARTLY = "partly"
NOT = "not reproduced"
UNDETERMINED = "undetermined (one seed: no interval)"
NO_GAP = "not reproduced (no gap: the model to catch up with is no better than the baseline)"
LEVEL = 0.95  # two-sided coverage of every interval
N_BOOTSTRAP = 4000


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (``std(ddof=1) / sqrt(n)``; nan for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_se needs at least one value")
    if x.size < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def _t_quantile(df: int, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, df))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval over ``values`` (seeds): ``(mean, low, high)``."""
    mean, se = mean_se(values)
    if math.isnan(se):
        return mean, math.nan, math.nan
    half = _t_quantile(len(values) - 1, level) * se
    return mean, mean - half, mean + half


def _as_seeds(correct: Any) -> np.ndarray:
    """``(seeds, rows)`` float array; a ``(rows,)`` model is one "seed" that never varies."""
    a = np.asarray(correct, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"correctness must be (rows,) or (seeds, rows), got shape {a.shape}")
    return a


def _row_weights(n_rows: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_rows, n_boot)`` bootstrap counts of the test rows, each column summing to 1."""
    counts = rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=n_boot)
    return (counts.T / n_rows).astype(np.float64)


def _resampled_means(acc: np.ndarray, seed_index: np.ndarray | None) -> np.ndarray:
    """Bootstrap means over seeds of per-seed accuracies ``acc`` (seeds, n_boot).

    Seeds are resampled with the same indices for every arm of a comparison (so a
    model's seed s stays paired with the other arms' seed s), and the resampled
    deviations are scaled by ``sqrt(S / (S - 1))``: a plain bootstrap of S values has
    the variance ``(S - 1) / S`` times too small, which matters at three seeds.
    """
    S = acc.shape[0]
    if S == 1 or seed_index is None:
        return acc.mean(axis=0)
    idx = seed_index % S
    center = acc.mean(axis=0)
    picked = np.take_along_axis(acc, idx, axis=0)  # (S, n_boot)
    return center + math.sqrt(S / (S - 1)) * (picked - center).mean(axis=0)


def share_interval(
    value: Any,
    base: Any,
    top: Any,
    *,
    bar: float | None = None,
    level: float = LEVEL,
    n_boot: int = N_BOOTSTRAP,
    random_state: int = 0,
) -> dict[str, Any]:
    """How much of the gap from ``base`` to ``top`` ``value`` closes, with its interval.

    Parameters
    ----------
    value, base, top : array of bool, shape (rows,) or (seeds, rows)
        Per-test-row correctness of the model judged, the baseline and the model to
        catch up with.
    bar : float in (0, 1], optional
        The share the verdict asks for; given, the result has ``bar``, ``bar_se`` and
        ``gap_needed`` (see Notes).
    level : float, default=0.95
    n_boot : int, default=4000
    random_state : int, default=0

    Returns
    -------
    dict
        ``share`` (the ratio of the means; nan when ``top`` is no better than ``base``
        on average), ``low`` and ``high`` (percentile bootstrap interval over seeds and
        test rows; a resample without a gap counts as a share of ``-inf``, so an
        unsure gap widens the interval downwards), ``gap`` (mean top - mean base),
        ``per_seed`` (each seed's own share, for reading only: it explodes when a
        seed's gap is tiny), and the three means. ``gain_se`` and ``gap_se`` are the
        bootstrap standard deviations of ``mean(value) - mean(base)`` and of the gap (in
        accuracy): the noise of the run, nearly whatever the means. ``resolution`` is
        ``share - low``: roughly, a share smaller than that would have had an interval
        reaching zero (inf when the gap itself is unsure).

    Notes
    -----
    ``gap_needed`` is a floor on the gap that a model keeping exactly ``bar`` of it needs
    for its interval to clear zero, with this run's noise. By the delta method a
    resampled share of ``bar`` is about ``bar + (d_gain - bar d_gap) / gap``, so its lower
    end clears zero when ``bar * gap > z * bar_se``, ``bar_se`` being the bootstrap
    standard deviation of ``mean(value) - mean(base) - bar (mean(top) - mean(base))`` and
    ``z`` the normal quantile of ``level``; resamples without a gap count as ``-inf``, so
    the gap must also clear ``z * gap_se``. Hence ``gap_needed = z max(gap_se, bar_se /
    bar)``. The percentile interval of a ratio has a longer lower tail than the delta
    method's: with independent rows (three seeds, 10,000 rows, 80% of the gap kept) the
    lower end cleared zero in none of six draws at ``gap_needed``, two of six at 1.25 times
    it and six of six at twice it. In a run whose gap is under it, a model at the paper's
    share would have been "not reproduced": the verdict then says more about the run's
    size than about distillation.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> base = rng.random((3, 2000)) < 0.80
    >>> top = rng.random(2000) < 0.90
    >>> value = rng.random((3, 2000)) < 0.88
    >>> out = share_interval(value, base, top, n_boot=500)
    >>> bool(out["low"] < out["share"] < out["high"])
    True
    """
    if bar is not None and not 0.0 < bar <= 1.0:
        raise ValueError(f"bar must be a share in (0, 1], got {bar!r}")
    arms = [_as_seeds(value), _as_seeds(base), _as_seeds(top)]
    n_rows = arms[0].shape[1]
    if any(a.shape[1] != n_rows for a in arms):
        raise ValueError("every arm must be scored on the same test rows")
    means = [float(a.mean()) for a in arms]
    gap = means[2] - means[1]
    share = (means[0] - means[1]) / gap if gap > 0 else math.nan
    rng = np.random.default_rng(random_state)
    weights = _row_weights(n_rows, n_boot, rng)
    S = max(a.shape[0] for a in arms)
    seed_index = rng.integers(0, S, size=(S, n_boot)) if S > 1 else None
    boot = [_resampled_means(a @ weights, seed_index) for a in arms]
    boot_gap = boot[2] - boot[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(boot_gap > 0, (boot[0] - boot[1]) / boot_gap, -np.inf)
    tail = (1.0 - level) / 2.0
    low, high = (float(q) for q in np.quantile(ratios, [tail, 1.0 - tail], method="inverted_cdf"))
    boot_gain = boot[0] - boot[1]
    gain_se = float(np.std(boot_gain, ddof=1))
    gap_se = float(np.std(boot_gap, ddof=1))
    per_seed = []
    if arms[0].shape[0] == arms[1].shape[0]:
        for s in range(arms[0].shape[0]):
            t = arms[2][min(s, arms[2].shape[0] - 1)].mean()
            g = t - arms[1][s].mean()
            per_seed.append(
                float((arms[0][s].mean() - arms[1][s].mean()) / g) if g > 0 else math.nan
            )
    out: dict[str, Any] = {
        "share": share,
        "low": low,
        "high": high,
        "level": level,
        "gap": gap,
        "value_mean": means[0],
        "base_mean": means[1],
        "top_mean": means[2],
        "per_seed": per_seed,
        "gain_se": gain_se,
        "gap_se": gap_se,
        "resolution": share - low,  # nan without a gap, inf when a resample had none
    }
    if bar is not None:
        bar_se = float(np.std(boot_gain - bar * boot_gap, ddof=1))
        z = _normal_quantile(level)
        out.update(bar=float(bar), bar_se=bar_se, gap_needed=z * max(gap_se, bar_se / bar))
    return out


def _normal_quantile(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))


def unresolved(share: dict[str, Any]) -> bool:
    """Whether a share's run had a gap, but one under the ``gap_needed`` of its bar (a
    :func:`share_interval` result, or its JSON, where nan is null).

    Examples
    --------
    >>> unresolved({"share": 0.5, "gap": 0.006, "gap_needed": 0.013})
    True
    >>> unresolved({"share": float("nan"), "gap": -0.004, "gap_needed": 0.013})  # no gap
    False
    """
    if "gap_needed" not in share or share["share"] is None or math.isnan(share["share"]):
        return False
    return bool(share["gap"] < share["gap_needed"])


def difference_interval(
    a: Any,
    b: Any,
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOTSTRAP,
    random_state: int = 0,
) -> dict[str, Any]:
    """Mean accuracy of ``a`` minus that of ``b``, with a Student-t interval.

    ``se_seeds`` is the standard error of the per-seed differences (seed ``s`` of ``a``
    against seed ``s`` of ``b``, or against ``b`` itself when it was trained once);
    ``se_test_rows`` is the bootstrap standard deviation of the mean difference when the
    test rows are resampled (the same rows for both). The interval is
    ``mean +- t(S - 1) * sqrt(se_seeds**2 + se_test_rows**2)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.random((3, 4000)) < 0.90
    >>> b = rng.random((3, 4000)) < 0.80
    >>> out = difference_interval(a, b, n_boot=500)
    >>> bool(out["low"] > 0)
    True
    """
    A, B = _as_seeds(a), _as_seeds(b)
    if A.shape[1] != B.shape[1]:
        raise ValueError("both models must be scored on the same test rows")
    if B.shape[0] not in (1, A.shape[0]):
        raise ValueError(f"{A.shape[0]} seeds against {B.shape[0]}: pair them or give one model")
    per_seed = A.mean(axis=1) - B.mean(axis=1)  # broadcasts a model trained once
    mean, se_seeds = mean_se(list(per_seed))
    rng = np.random.default_rng(random_state)
    weights = _row_weights(A.shape[1], n_boot, rng)
    boot = (A @ weights).mean(axis=0) - (B @ weights).mean(axis=0)
    se_rows = float(boot.std(ddof=1))
    if math.isnan(se_seeds):
        low = high = math.nan
    else:
        half = _t_quantile(len(per_seed) - 1, level) * math.sqrt(se_seeds**2 + se_rows**2)
        low, high = mean - half, mean + half
    return {
        "mean": mean,
        "low": low,
        "high": high,
        "level": level,
        "se_seeds": se_seeds,
        "se_test_rows": se_rows,
        "per_seed": [float(v) for v in per_seed],
    }


def share_verdict(interval: dict[str, Any], bar: float | None = None) -> str:
    """Verdict on a share of a gap (a :func:`share_interval` result) against the paper's bar
    (by default the ``bar`` the interval was computed with).

    Reproduced when the ratio of the means reaches ``bar`` and the interval excludes
    zero (the effect is there, and as large as the paper's by the best estimate);
    partly when the interval excludes zero but the share falls short of ``bar``; not
    reproduced when the interval reaches zero. Without a gap to close (``share`` nan),
    not reproduced, saying so.
    """
    bar = interval["bar"] if bar is None else bar
    share, low = interval["share"], interval["low"]
    if math.isnan(share):
        return NO_GAP
    if math.isnan(low):
        return UNDETERMINED
    if low <= 0.0:
        return NOT
    return REPRODUCED if share >= bar else PARTLY


def beats_verdict(differences: Sequence[dict[str, Any]]) -> str:
    """Verdict on "beats every reference": :func:`difference_interval` results.

    Reproduced when every interval lies above zero, partly when some do, not
    reproduced when none does.
    """
    if not differences:
        raise ValueError("beats_verdict needs at least one difference")
    if any(math.isnan(d["low"]) for d in differences):
        return UNDETERMINED
    wins = sum(d["low"] > 0.0 for d in differences)
    if wins == len(differences):
        return REPRODUCED
    return PARTLY if wins else NOT
