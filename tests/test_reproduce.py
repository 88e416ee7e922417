"""``kdpipe reproduce``: the smoke profile end to end, and the verdict rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import kdpipe.cache
from kdpipe.cli import main
from kdpipe.reproduce.settings import EXPERIMENTS
from kdpipe.reproduce.stats import (
    NO_GAP,
    NOT,
    PARTLY,
    REPRODUCED,
    UNDETERMINED,
    beats_verdict,
    difference_interval,
    mean_se,
    share_interval,
    share_verdict,
    unresolved,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


ROOT = Path(__file__).resolve().parents[1]


def _guide_words() -> str:
    """The reproduction guide with its line breaks and runs of spaces made single spaces."""
    return " ".join((ROOT / "docs/user_guide/reproduce.rst").read_text().split())


def _accuracies(node):
    """Every number under a key that names an accuracy, however deeply nested."""
    if isinstance(node, dict):
        for key, value in node.items():
            if "accuracy" in key:
                yield from _numbers(value)
            else:
                yield from _accuracies(value)
    elif isinstance(node, list):
        for value in node:
            yield from _accuracies(value)


def _numbers(node):
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _numbers(value)


def test_smoke_profile_writes_report_json_and_plots_without_verdicts_and_one_cache_per_teacher(
    tmp_path, monkeypatch, capsys
):
    builds = []
    real_build = kdpipe.cache.build_cache

    def counting_build(*args, **kwargs):
        builds.append(args[2])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(kdpipe.cache, "build_cache", counting_build)
    out = tmp_path / "nested" / "out"
    assert main(["reproduce", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out

    record = json.loads((out / "results.json").read_text())
    report = (out / "REPORT.md").read_text()
    assert set(record["experiments"]) == {str(n) for n in EXPERIMENTS}
    # three teachers (the big one, the ensemble, the confusable one): each run once over its
    # transfer set, the two on images also once over their jittered views
    assert sorted(p.name for p in builds) == [
        "big-views.zarr",
        "big.zarr",
        "confusable.zarr",
        "ensemble-views.zarr",
        "ensemble.zarr",
    ]
    timings = record["timings"]
    assert timings["teacher_passes_s"] > 0 and timings["students_s"] > 0
    assert timings["student_fits"] > len(builds)
    assert timings["online_teacher_passes_estimate_s"] > 0
    for number, exp in record["experiments"].items():
        assert exp["verdict"] is None
        assert {"title", "paper", "criterion", "settings", "results", "headline"} <= set(exp)
        values = list(_accuracies(exp["results"]))
        assert values, f"experiment {number} reports no accuracy"
        assert all(0.0 <= v <= 1.0 for v in values)
        # the section states its criterion before its numbers
        section = report.split(f"## {number}. ")[1]
        assert section.index("Criterion") < section.index("**Numbers**")
    assert "no verdicts" in report
    for verdict in (REPRODUCED, PARTLY, NOT):
        assert f"Verdict: {verdict}" not in report
    assert record["experiments"]["2"]["results"]["temperatures"] == [1.0, 3.0, 10.0]
    assert len(record["experiments"]["4"]["results"]["ensemble_accuracy_by_size"]) == 2
    # experiment 2 says how soft the teacher's targets are: softer as T rises
    top = record["experiments"]["2"]["results"]["teacher_top_probability"]
    assert len(top) == 3 and top[0] > top[1] > top[2] > 0.1
    # experiment 3's variant: a transfer set of two classes, then their two offsets
    v3 = record["experiments"]["3"]["variant"]
    assert len(v3["results"]["shifts"]) == 2 and v3["verdict"] is None
    assert len(v3["results"]["test_errors_after"]["per_seed"]) == 2
    assert "| 3b |" in report
    # the students of experiments 1 and 4 that train on the teachers' views are reported
    assert (
        len(record["experiments"]["1"]["results"]["distilled_on_views_test_accuracy"]["per_seed"])
        == 2
    )
    assert "gap_closed_on_views" in record["experiments"]["1"]["results"]
    # experiment 1's control: the hard-label student trained longer, against the teacher
    r1 = record["experiments"]["1"]["results"]
    control = r1["control_minus_teacher"]
    assert len(r1["control_hard_test_accuracy"]["per_seed"]) == 2
    assert control["mean"] == pytest.approx(
        r1["control_hard_test_accuracy"]["mean"] - r1["teacher_test_accuracy"]
    )
    assert control["low"] <= control["mean"] <= control["high"]
    # trained for its own epochs, not the hard student's
    e1 = record["experiments"]["1"]
    assert f"{record['profile']['control_epochs']} epochs" in e1["settings"]["control"]
    assert record["profile"]["control_epochs"] != record["profile"]["student_epochs"]
    assert r1["control_hard_test_accuracy"]["per_seed"] != r1["hard_test_accuracy"]["per_seed"]
    assert record["git_commit"] is None or len(record["git_commit"]) >= 40
    # where it ran: two machines round floats differently, so the record names its own
    assert set(record["machine"]) == {"platform", "cpu", "numpy", "torch", "torch_threads"}
    assert record["machine"]["torch_threads"] == record["torch_threads"] >= 1
    assert all(
        isinstance(v, str) and v for k, v in record["machine"].items() if k != "torch_threads"
    )
    assert f"Machine: {record['machine']['cpu']}, {record['machine']['platform']}" in report
    # experiment 6 also runs specialists on the image data and names their classes
    r6 = record["experiments"]["6"]["results"]
    digits = {str(d) for d in range(10)}
    assert len(r6["image_clusters_seed0"]) == 2
    for cluster in r6["image_clusters_seed0"]:
        assert 1 < len(cluster.split(", ")) <= 4 and set(cluster.split(", ")) <= digits

    pytest.importorskip("matplotlib")
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [
        "accuracy_vs_data_fraction.png",
        "accuracy_vs_ensemble_size.png",
        "accuracy_vs_temperature.png",
        "left_out_class.png",
        "table4_specialists.png",
    ]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"]({png.name})" in report
        assert str(png.resolve()) in printed
    assert str((out / "REPORT.md").resolve()) in printed


def test_a_run_stopped_part_way_leaves_the_report_of_the_experiments_it_finished(
    tmp_path, monkeypatch
):
    from kdpipe.reproduce import experiments, run

    def interrupted(lab):
        raise KeyboardInterrupt

    monkeypatch.setitem(experiments.RUNNERS, 4, interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(profile="smoke", experiments=[1, 4], out=tmp_path, verbose=False)
    record = json.loads((tmp_path / "results.json").read_text())
    assert list(record["experiments"]) == ["1"] and record["pending"] == [4]
    report = (tmp_path / "REPORT.md").read_text()
    assert "## 1. " in report and "## 4. " not in report
    assert "| 4 | " in report and "not finished" in report


def test_the_record_names_the_commit_that_started_the_run_not_a_later_one(tmp_path, monkeypatch):
    import itertools

    from kdpipe.reproduce import run, runner

    # HEAD moves after the first look: a commit made while the run goes on
    commits = itertools.chain(["a" * 40], itertools.repeat("b" * 40))
    monkeypatch.setattr(runner, "git_commit", lambda: next(commits))
    run(profile="smoke", experiments=[1, 2], out=tmp_path, verbose=False)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["git_commit"] == "a" * 40
    assert "a" * 40 in (tmp_path / "REPORT.md").read_text()


def test_two_runs_of_one_commit_and_profile_on_one_machine_give_the_same_numbers(tmp_path):
    from kdpipe.reproduce import run

    records = [
        run(profile="smoke", experiments=[1, 5], out=tmp_path / name, verbose=False)
        for name in ("first", "second")
    ]
    first, second = ({n: e["results"] for n, e in r["experiments"].items()} for r in records)
    assert list(_accuracies(first)) and first == second


def test_a_profile_of_ones_own_adds_unlabeled_rows_to_the_ensembles_transfer_set(
    tmp_path, monkeypatch
):
    import dataclasses

    from kdpipe.reproduce import run
    from kdpipe.reproduce.settings import get_profile

    labels_built = []
    real_build = kdpipe.cache.build_cache

    def recording_build(*args, **kwargs):
        labels_built.append(np.asarray(kwargs["y"]))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(kdpipe.cache, "build_cache", recording_build)
    profile = dataclasses.replace(get_profile("smoke"), n_train=700, ensemble_unlabeled_rows=250)
    record = run(profile=profile, experiments=[4], out=tmp_path, verbose=False)
    y, views_y = labels_built  # the transfer set, then its jittered views: the same rows
    assert np.array_equal(y, views_y)
    assert len(y) == 950 and np.count_nonzero(y == -1) == 250 and np.all(y[:700] >= 0)
    assert record["profile"]["ensemble_unlabeled_rows"] == 250
    assert "with the fields below" in record["command"]
    with pytest.raises(ValueError, match="unlabeled rows"):
        run(
            profile=dataclasses.replace(profile, ensemble_unlabeled_rows=10_000),
            experiments=[4],
            out=tmp_path / "too-many",
            verbose=False,
        )


def test_unknown_experiment_is_a_usage_error_and_writes_nothing(tmp_path, capsys):
    assert main(["reproduce", "--experiments", "9", "--out", str(tmp_path)]) == 2
    assert "9" in capsys.readouterr().err
    assert main(["reproduce", "--experiments", "one", "--out", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_mean_se_is_the_sample_standard_error():
    values = [0.90, 0.92, 0.97]
    mean, se = mean_se(values)
    centered = np.array(values) - np.mean(values)
    assert mean == pytest.approx(sum(values) / 3)
    assert se == pytest.approx(math.sqrt((centered**2).sum() / 2) / math.sqrt(3))
    assert math.isnan(mean_se([0.5])[1])


def _interval(share, low):
    return {"share": share, "low": low, "high": math.inf}


@pytest.mark.parametrize(
    ("share", "low", "expected"),
    [
        (0.91, 0.50, REPRODUCED),  # the ratio reaches the bar, the interval is above zero
        (0.80, 0.01, REPRODUCED),  # exactly the bar
        (0.79, 0.40, PARTLY),  # the effect is there, short of the bar
        (0.95, -0.01, NOT),  # the interval reaches zero
        (0.95, math.nan, UNDETERMINED),
        (math.nan, math.nan, NO_GAP),  # nothing to close: the teacher was no better
    ],
)
def test_share_verdict_against_hand_made_numbers(share, low, expected):
    assert share_verdict(_interval(share, low), 0.8) == expected


@pytest.mark.parametrize(
    ("lows", "expected"),
    [
        ([0.01, 0.02], REPRODUCED),
        ([0.01, -0.01], PARTLY),
        ([-0.01, -0.03], NOT),
        ([math.nan, 0.03], UNDETERMINED),
    ],
)
def test_beats_verdict_against_hand_made_numbers(lows, expected):
    assert beats_verdict([{"low": low} for low in lows]) == expected


def test_difference_interval_adds_the_test_rows_bootstrap_to_student_t_over_seeds():
    from scipy import stats

    rng = np.random.default_rng(12345)  # not the interval's own bootstrap seed (0)
    n = 20_000
    base = rng.random(n) < 0.8
    a = np.array([base | (rng.random(n) < q) for q in (0.05, 0.15, 0.30)])
    b = np.array([base, base, base])
    out = difference_interval(a, b, n_boot=2000)
    d = a.mean(1) - b.mean(1)
    # the test rows' part: the standard error of a mean over rows of the seed-averaged
    # per-row difference, which the bootstrap estimates
    per_row = (a.astype(float) - b).mean(0)
    assert out["se_test_rows"] == pytest.approx(per_row.std() / math.sqrt(n), rel=0.1)
    assert out["se_seeds"] == pytest.approx(stats.sem(d))
    half = stats.t.ppf(0.975, 2) * math.hypot(stats.sem(d), out["se_test_rows"])
    assert out["mean"] == pytest.approx(d.mean())
    assert out["low"] == pytest.approx(d.mean() - half)
    assert out["high"] == pytest.approx(d.mean() + half)


def test_share_interval_is_the_ratio_of_means_and_covers_the_test_rows_noise():
    rng = np.random.default_rng(1)
    n = 10_000
    top = rng.random(n) < 0.90
    base = np.array([rng.random(n) < 0.88 for _ in range(3)])
    value = np.array([rng.random(n) < 0.89 for _ in range(3)])
    out = share_interval(value, base, top, n_boot=1000)
    expected = (value.mean() - base.mean()) / (top.mean() - base.mean())
    assert out["share"] == pytest.approx(expected)
    # a gap of 2 points measured on 10,000 rows is unsure: the interval is wide
    assert out["low"] < expected - 0.2 and out["high"] > expected + 0.2
    # per-seed shares are kept for reading, not for the verdict
    assert len(out["per_seed"]) == 3


def test_share_interval_noise_is_the_standard_error_of_the_per_row_differences():
    rng = np.random.default_rng(3)
    n = 20_000
    base = rng.random(n) < 0.80
    value = rng.random(n) < 0.83
    top = rng.random(n) < 0.86
    out = share_interval(value, base, top, n_boot=2000)
    # one model per arm: only the test rows vary, and the mean of a per-row difference
    # has the standard error std / sqrt(n)
    gain = value.astype(float) - base
    gap = top.astype(float) - base
    assert out["gain_se"] == pytest.approx(gain.std() / math.sqrt(n), rel=0.1)
    assert out["gap_se"] == pytest.approx(gap.std() / math.sqrt(n), rel=0.1)
    assert out["resolution"] == pytest.approx(out["share"] - out["low"])


def _arms(rng, n, base, gap, share, seeds=3):
    """Independent per-row correctness: a baseline, a top ``gap`` above it, a value ``share`` of the way."""
    return (
        np.array([rng.random(n) < base + share * gap for _ in range(seeds)]),
        np.array([rng.random(n) < base for _ in range(seeds)]),
        rng.random(n) < base + gap,
    )


def test_gap_needed_is_the_noise_of_a_share_at_the_bar_over_the_bar():
    from scipy.stats import norm

    rng = np.random.default_rng(8)
    n, bar = 20_000, 0.8
    value, base, top = (a[0] if a.ndim == 2 else a for a in _arms(rng, n, 0.80, 0.03, bar, seeds=1))
    out = share_interval(value, base, top, bar=bar, n_boot=2000)
    # one model per arm: the mean over rows of the per-row gain - bar * gap, whose
    # standard error is std / sqrt(n)
    per_row = (value.astype(float) - base) - bar * (top.astype(float) - base)
    assert out["bar_se"] == pytest.approx(per_row.std() / math.sqrt(n), rel=0.1)
    gap_se = (top.astype(float) - base).std() / math.sqrt(n)  # the gap's own, per row
    assert out["gap_se"] == pytest.approx(gap_se, rel=0.1)
    z = norm.ppf(0.975)
    assert out["gap_needed"] == pytest.approx(
        z * max(gap_se, per_row.std() / math.sqrt(n) / bar), rel=0.1
    )


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_share_at_the_bar_clears_zero_above_gap_needed_and_not_below(factor):
    n, bar = 10_000, 0.8
    # the noise of such a design, from a first run; it barely depends on the gap
    pilot = share_interval(
        *_arms(np.random.default_rng(9), n, 0.80, 0.02, bar), bar=bar, n_boot=2000
    )
    # independent rows, three seeds: about 0.6 points of noise per difference, so a share
    # of 80% needs a gap of one to three points
    assert 0.01 < pilot["gap_needed"] < 0.03
    gap = factor * pilot["gap_needed"]
    out = share_interval(*_arms(np.random.default_rng(10), n, 0.80, gap, bar), bar=bar, n_boot=2000)
    assert out["gap_needed"] == pytest.approx(pilot["gap_needed"], rel=0.25)
    assert (out["low"] > 0) == (factor > 1)
    assert unresolved(out) == (factor < 1)


def test_a_headline_says_when_the_gap_is_under_the_one_the_bar_needs():
    from kdpipe.reproduce.experiments import _pct

    share = {"share": 0.57, "low": -1.06, "high": 1.15, "gap": 0.0063, "bar": 0.8}
    assert "under the 1.29 that 80% needs" in _pct({**share, "gap_needed": 0.0129})
    assert "under" not in _pct({**share, "gap_needed": 0.0050})
    assert _pct({**share, "share": math.nan, "gap_needed": 0.0129}) == "n/a (no gap)"


def test_share_interval_refuses_a_bar_outside_zero_to_one():
    top = np.ones(10, dtype=bool)
    with pytest.raises(ValueError, match="bar must be a share"):
        share_interval(top, top, top, bar=80)


def test_share_interval_without_a_gap_is_nan_and_says_so():
    rng = np.random.default_rng(2)
    top = rng.random(1000) < 0.5
    base = np.array([rng.random(1000) < 0.9 for _ in range(2)])
    out = share_interval(base, base, top, n_boot=100)
    assert math.isnan(out["share"])
    assert share_verdict(out, 0.8) == NO_GAP


def test_readme_headline_counts_the_verdicts_of_the_committed_cpu_run():

    record = json.loads((ROOT / "examples/results/reproduce/cpu/results.json").read_text())
    verdicts = [record["experiments"][str(n)]["verdict"] for n in EXPERIMENTS]
    counts = {v: verdicts.count(v) for v in (REPRODUCED, PARTLY, NOT)}
    line = next(
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("**Reproduction, cpu profile")
    )
    assert (
        f"**{counts[REPRODUCED]} of the paper's 6 findings reproduced, "
        f"{counts[PARTLY]} partly, {counts[NOT]} not**" in line
    )
    assert f"{record['wall_seconds'] / 60:.0f} min" in line


def test_the_guide_quotes_experiment_1s_evidence_from_the_committed_results():
    guide = _guide_words()
    readme = " ".join((ROOT / "README.md").read_text().split())
    cpu = json.loads((ROOT / "examples/results/reproduce/cpu/results.json").read_text())
    r1 = cpu["experiments"]["1"]["results"]
    for value in (
        r1["teacher_test_accuracy"],
        r1["control_hard_test_accuracy"]["mean"],
        r1["hard_test_accuracy"]["mean"],
    ):
        assert f"{value:.4f}" in guide
    on_views = r1["gap_closed_on_views"]
    assert f"{on_views['low']:.0%} to {on_views['high']:.0%}" in guide
    assert f"is {100 * on_views['gap']:.2f} points" in guide
    views = json.loads(
        (
            ROOT / "examples/results/fashion_mnist_views_all_rows/fashion_mnist_views.json"
        ).read_text()
    )
    mlp = views["students"]["MLP 2x800"]
    conv = views["students"]["ConvNet 8-16, hidden 32"]
    teacher = views["teacher"]["test"]
    for value in (teacher, mlp["hard_labels"]["mean"], mlp["distilled"]["1"]["mean"]):
        assert f"{value:.4f}" in guide
    assert f"{mlp['distilled']['1']['gap_closed']:.0%} of the gap" in guide
    low, high = mlp["distilled"]["1"]["gap_closed_95"]
    for pct in (teacher, mlp["hard_labels"]["mean"], mlp["distilled"]["4"]["mean"]):
        assert f"{100 * pct:.1f}%" in readme
    assert f"{100 * conv['hard_labels']['mean']:.1f}% on hard labels" in readme
    assert (
        f"{100 * conv['distilled']['1']['mean']:.1f}% and "
        f"{100 * conv['distilled']['4']['mean']:.1f}% distilled" in readme
    )
    assert f"{low:.0%}..{high:.0%}" in readme


def test_the_guide_quotes_the_40_epoch_probe_of_experiment_1_from_its_results():
    guide = _guide_words()
    folder = "examples/results/reproduce/probes/cpu-experiment-1-students-40-epochs"
    assert folder in guide
    record = json.loads((ROOT / folder / "results.json").read_text())
    assert record["profile"]["student_epochs"] == 40 and list(record["experiments"]) == ["1"]
    r1 = record["experiments"]["1"]["results"]
    for value in (
        r1["hard_test_accuracy"]["mean"],
        r1["distilled_test_accuracy"]["mean"],
        r1["distilled_on_views_test_accuracy"]["mean"],
        r1["teacher_test_accuracy"],
    ):
        assert f"{value:.4f}" in guide
    share = r1["gap_closed_on_views"]
    assert f"{100 * share['gap']:.2f} points" in guide
    assert f"under the {100 * share['gap_needed']:.2f} that a share of 80% needs" in guide
    assert unresolved(share) and unresolved(r1["gap_closed"])


def test_git_commit_leaves_out_paths_outside_the_checkout(tmp_path):
    from kdpipe.reproduce.runner import git_commit

    assert git_commit(tmp_path) == git_commit()  # not None for a path git cannot look at


def test_the_guide_quotes_the_mlp_teacher_recipes_from_their_results():
    guide = _guide_words()
    folder = "examples/results/fashion_mnist_mlp_teachers"
    assert folder in guide
    record = json.loads((ROOT / folder / "mlp_teachers.json").read_text())
    s = record["settings"]
    assert (s["train_rows"], s["validation_rows"], s["epochs"]) == (55_000, 5_000, 60)
    assert "for 60 epochs on the same 55,000 training rows" in guide
    assert "scores only the 5,000 validation rows" in guide
    assert record["git_commit"] and not record["git_commit"].endswith("+dirty")
    accuracy = {name: np.asarray(r["validation_accuracy"]) for name, r in record["recipes"].items()}
    late = {name: float(a[40:].mean()) for name, a in accuracy.items()}  # epochs 41 to 60
    spread = {name: float(100 * a[40:].std(ddof=1)) for name, a in accuracy.items()}
    reference = late[record["reference"]]
    assert "Averaged over epochs 41 to 60" in guide
    assert f"the 2x800 without regularization scores {reference:.4f}" in guide
    alone, flips = late["2x1200, dropout 0.2"], late["2x1200, dropout 0.2, shifts and flips"]
    shifts = late["2x1200, dropout 0.2, shifts"]
    assert max(late, key=late.__getitem__) == "2x1200, dropout 0.2, shifts"
    width = 100 * (max(alone, flips, shifts) - min(alone, flips, shifts))
    assert f"with dropout 0.2 lie within {width:.2f} points of each other" in guide
    assert f"{alone:.4f} alone, {flips:.4f} with shifts and flips, and {shifts:.4f}" in guide
    assert f"the best, {100 * (shifts - reference):.2f} points more than the 2x800" in guide
    low, high = min(spread.values()), max(spread.values())
    assert f"standard deviation of {low:.2f} to {high:.2f} points" in guide
    paper = accuracy["2x1200, dropout 0.5 and 0.2 on inputs, shifts"]
    assert late["2x1200, dropout 0.5 and 0.2 on inputs, shifts"] < reference
    assert paper[40:50].mean() < paper[50:].mean()  # still rising
    assert (
        f"the 2x1200 scores {paper[40:].mean():.4f}, below the 2x800, and is still rising "
        f"(epochs 41 to 50 average {paper[40:50].mean():.4f}, epochs 51 to 60 "
        f"{paper[50:].mean():.4f})"
    ) in guide
    fewer_errors = 1 - (1 - shifts) / (1 - reference)
    assert f"the best of these nets makes {100 * fewer_errors:.0f}% fewer" in guide


JUDGED_SHARES = [  # (experiment, key, the guide's row label): every share a verdict rests on
    ("1", "gap_closed_on_views", "1, the teacher's views (judged)"),
    ("1", "gap_closed", "1, the plain rows"),
    ("3", "class_loss_won_back", "3, the left-out class"),
    ("4", "gain_kept", "4, the members' views (judged)"),
    ("4", "plain_rows_gain_kept", "4, the plain rows"),
    ("5", "gap_recovered", "5, the teacher's views (judged)"),
    ("5", "plain_rows_gap_recovered", "5, the plain rows"),
]


def test_the_guide_and_readme_quote_what_the_committed_run_could_see():

    guide = (ROOT / "docs/user_guide/reproduce.rst").read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    cpu = json.loads((ROOT / "examples/results/reproduce/cpu/results.json").read_text())
    old = json.loads((ROOT / "examples/results/reproduce/cpu-e23bea1/results.json").read_text())
    new_e, old_e = cpu["experiments"], old["experiments"]
    for n, key, label in JUDGED_SHARES:
        share = new_e[n]["results"][key]
        row = (
            f"   * - {label}\n     - {100 * share['gap']:.2f}\n     - "
            f"{100 * share['gap_needed']:.2f}\n     - {share['share']:.0%} "
            f"[{share['low']:.0%}, {share['high']:.0%}]"
        )
        assert row in guide
        # "every gap is above it" (the guide), "every judged gap was larger" (the README)
        assert share["bar"] == 0.8 and not unresolved(share)
    assert "Every judged gap was larger than the least gap" in readme
    # the earlier run on another machine: how much wider its intervals were on 1 and 4
    ratios = [
        (old_e[n]["results"][k]["high"] - old_e[n]["results"][k]["low"])
        / (new_e[n]["results"][k]["high"] - new_e[n]["results"][k]["low"])
        for n, k, _ in JUDGED_SHARES
        if n in ("1", "4")
    ]
    assert 2 <= min(ratios) and max(ratios) < 6
    assert "two to six times as wide on experiments 1 and 4" in guide
    spread = [
        100 * (max(r["hard_test_accuracy"]["per_seed"]) - min(r["hard_test_accuracy"]["per_seed"]))
        for r in (old_e["1"]["results"], new_e["1"]["results"])
    ]
    assert f"spread over {spread[0]:.2f} points" in guide
    assert f"lie within {spread[1]:.2f}" in guide
    teachers = [e["1"]["results"]["teacher_test_accuracy"] for e in (old_e, new_e)]
    assert f"teacher was {100 * (teachers[1] - teachers[0]):.2f} points weaker" in guide
    won_back = [e["3"]["results"]["class_loss_won_back"]["share"] for e in (old_e, new_e)]
    assert f"won back {won_back[0]:.0%} there and {won_back[1]:.0%} here" in guide
    kept = old_e["4"]["results"]["gain_kept"]["share"]
    assert f"left-out class ({won_back[0]:.0%} there) and the ensemble ({kept:.0%} there)" in readme
    assert old["git_commit"].startswith("e23bea1") and cpu["git_commit"][:7] in readme


def test_every_figure_of_the_readme_headline_is_the_committed_runs():

    line = next(
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("**Reproduction, cpu profile")
    )
    record = json.loads((ROOT / "examples/results/reproduce/cpu/results.json").read_text())
    headlines = {n: e["headline"] for n, e in record["experiments"].items()}
    quoted = {  # experiment -> the figures the README quotes from its headline
        "1": [
            "0.8971",
            "0.8871",
            "22% [-27%, 53%]",
            "47% [5%, 80%]",
            "0.8954",
            "-0.17 [-1.26, +0.93]",
        ],
        "2": ["+0.56 [-0.56, +1.69]"],
        "3": ["80.7% -> 91.1%", "113% [87%, 174%]"],
        "4": ["0.8825", "0.8908", "70% [32%, 106%]", "57% [-10%, 91%]"],
        "5": ["0.7699", "0.8624", "0.8881", "78% [70%, 85%]", "63% [55%, 72%]"],
        "6": ["0.5041 -> 0.5299", "+2.57 [+1.41, +3.74]", "+0.52 [+0.28, +0.76]"],
    }
    for n, figures in quoted.items():
        for figure in figures:
            assert figure in headlines[n] and figure in line, (n, figure)


def test_an_earlier_run_in_out_is_refused_before_any_work_and_replaced_only_with_overwrite(
    tmp_path, capsys, monkeypatch
):
    """A second run into the same folder would write its own experiments only and leave the
    first run's plots beside its report: refused (exit 2, one line, nothing touched) unless
    --overwrite, which removes the earlier run's files and nothing else."""
    from kdpipe.reproduce import experiments, run

    out = tmp_path / "out"
    assert main(["reproduce", "--experiments", "1", "--out", str(out), "--quiet"]) == 0
    first = (out / "results.json").read_bytes()
    assert (out / "accuracy_vs_temperature.png").exists() is False  # experiment 2's plot
    (out / "accuracy_vs_temperature.png").write_bytes(b"an earlier run's plot")
    (out / "notes.txt").write_text("the user's own file")
    capsys.readouterr()

    def no_work(lab):
        raise AssertionError("an experiment ran before the folder was checked")

    with monkeypatch.context() as m:
        m.setitem(experiments.RUNNERS, 2, no_work)
        assert main(["reproduce", "--experiments", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "--overwrite" in err and "results.json" in err
        with pytest.raises(kdpipe.errors.InputError, match="overwrite=True"):
            run(profile="smoke", experiments=[2], out=out, verbose=False)
    assert (out / "results.json").read_bytes() == first
    assert (
        main(["reproduce", "--experiments", "4", "--out", str(out), "--overwrite", "--quiet"]) == 0
    )
    record = json.loads((out / "results.json").read_text())
    assert list(record["experiments"]) == ["4"]
    assert not (out / "accuracy_vs_temperature.png").exists()  # not this run's
    assert (out / "notes.txt").read_text() == "the user's own file"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_a_device_this_machine_lacks_is_a_usage_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    for device in ("cuda", "tpu"):
        assert main(["reproduce", "--device", device, "--out", str(out)]) == 2
        err = capsys.readouterr()
        assert len(err.err.splitlines()) == 1 and err.out == ""  # nothing loaded or printed
    assert not out.exists()


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_written(tmp_path):
    """A run that fails before its first experiment finishes (here: data it cannot find)
    leaves the earlier run's files as they were, even with overwrite."""
    import dataclasses

    from kdpipe.reproduce import run
    from kdpipe.reproduce.settings import get_profile

    out = tmp_path / "out"
    run(profile="smoke", experiments=[1], out=out, verbose=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    profile = dataclasses.replace(get_profile("smoke"), dataset="fashion-mnist")
    with pytest.raises(FileNotFoundError):
        run(
            profile=profile,
            experiments=[1],
            out=out,
            data_dir=tmp_path / "no-such-folder",
            overwrite=True,
            verbose=False,
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
