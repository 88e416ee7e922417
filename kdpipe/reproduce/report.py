"""Writing a run's ``REPORT.md`` and its JSON file of every number."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kdpipe.reproduce.settings import EXPERIMENTS
from kdpipe.reproduce.stats import unresolved

__all__ = ["write_json", "write_markdown"]


def _clean(value: Any) -> Any:
    """JSON has no nan or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(run: dict[str, Any], path: Path) -> Path:
    """Every number of the run, nan written as null."""
    path.write_text(json.dumps(_clean(run), indent=2, sort_keys=False) + "\n")
    return path


def _is_summary(value: Any) -> bool:
    return isinstance(value, dict) and {"mean", "se", "per_seed"} <= set(value)


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and {"share", "low", "high"} <= set(value):
        if value["share"] is None or math.isnan(value["share"]):
            return (
                f"n/a: no gap (mean {value['top_mean']:.4f} vs baseline {value['base_mean']:.4f})"
            )
        return (
            f"{value['share']:.1%}, 95% interval [{value['low']:.1%}, {value['high']:.1%}] "
            f"(ratio of means: {value['value_mean']:.4f} from {value['base_mean']:.4f} towards "
            f"{value['top_mean']:.4f})" + _resolution(value)
        )
    if isinstance(value, dict) and {"mean", "low", "high", "se_seeds"} <= set(value):
        seeds = ", ".join(f"{v:+.4f}" for v in value["per_seed"])
        return (
            f"{value['mean']:+.4f}, 95% interval [{value['low']:+.4f}, {value['high']:+.4f}] "
            f"(SE seeds {value['se_seeds']:.4f}, test rows {value['se_test_rows']:.4f}; "
            f"seeds: {seeds})"
        )
    if _is_summary(value):
        se = "n/a" if math.isnan(value["se"]) else f"{value['se']:.4f}"
        seeds = ", ".join(f"{v:.4f}" for v in value["per_seed"])
        return f"{value['mean']:.4f} ± {se} (seeds: {seeds})"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list) and value and _is_summary(value[0]):
        return "; ".join(f"{v['mean']:.4f}" for v in value)
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def _resolution(share: dict[str, Any]) -> str:
    """What the run could see of a share: its noise and the gap its bar needs (runs before
    these were recorded have neither)."""
    if "gap_needed" not in share:
        return ""
    return (
        f"; noise (bootstrap SD): gain {100 * share['gain_se']:.2f}, gap "
        f"{100 * share['gap_se']:.2f} points; a share of {share['bar']:.0%} needs a gap of at "
        f"least {100 * share['gap_needed']:.2f} points to clear zero with this noise (this "
        f"run's: {100 * share['gap']:.2f})"
    )


def _unresolved(results: dict[str, Any]) -> list[str]:
    """A note for each share whose gap is under the one its bar needs with the run's noise."""
    return [
        f"{key}: the gap, {100 * v['gap']:.2f} points, is under the {100 * v['gap_needed']:.2f} "
        f"points that a share of {v['bar']:.0%} needs at least to clear zero with this run's "
        f"noise: a student keeping {v['bar']:.0%} would have been judged not reproduced in a run "
        "of this size"
        for key, v in results.items()
        if isinstance(v, dict) and unresolved(v)
    ]


def _section(number: int, exp: dict[str, Any], figures: list[Path], verdicts: bool) -> list[str]:
    lines = [f"## {number}. {exp['title']}", ""]
    lines += [
        "| the paper | this run |",
        "|---|---|",
        f"| {exp['paper']} | {exp['headline']} |",
        "",
    ]
    lines += [f'**Criterion for "reproduced"** (fixed before the run): {exp["criterion"]}', ""]
    lines += ["**Settings**", ""] + [f"- {k}: {_fmt(v)}" for k, v in exp["settings"].items()] + [""]
    lines += [
        "**Numbers** (test accuracy unless named otherwise; mean ± standard error over seeds)",
        "",
    ]
    for key, value in exp["results"].items():
        if (
            isinstance(value, list)
            and value
            and isinstance(value[0], dict)
            and not _is_summary(value[0])
        ):
            lines += [
                "",
                f"{key}:",
                "",
                "| " + " | ".join(value[0]) + " |",
                "|" + "---|" * len(value[0]),
            ]
            lines += ["| " + " | ".join(_fmt(v) for v in row.values()) + " |" for row in value]
            lines.append("")
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            lines += [f"- {key}:"] + [f"  - {v}" for v in value]
        else:
            lines.append(f"- {key}: {_fmt(value)}")
    lines.append("")
    notes = list(exp.get("notes", [])) + _unresolved(exp["results"])
    if notes:
        lines += ["**Notes**", ""] + [f"- {note}" for note in notes] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in figures] + ([""] if figures else [])
    lines += _verdict_line(exp, verdicts)
    variant = exp.get("variant")
    if variant:
        lines += [f"### {number}b. {variant['title']}", ""]
        lines += [
            "| the paper | this run |",
            "|---|---|",
            f"| {variant['paper']} | {variant['headline']} |",
            "",
        ]
        lines += [f'**Criterion for "reproduced"**: {variant["criterion"]}', ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in variant["results"].items()] + [""]
        lines += _verdict_line(variant, verdicts)
    return lines


def _verdict_line(exp: dict[str, Any], verdicts: bool) -> list[str]:
    if verdicts:
        return [f"**Verdict: {exp['verdict']}**", ""]
    return ["**Verdict:** none (smoke profile: sizes too small to judge anything)", ""]


def _machine_line(run: dict[str, Any]) -> list[str]:
    """The line naming the machine (runs before it was recorded have none)."""
    machine = run.get("machine")
    if not machine:
        return []
    return [
        "",
        (
            f"Machine: {machine['cpu']}, {machine['platform']}, numpy {machine['numpy']}. The same "
            "commit and profile give the same numbers on the same machine; another machine (its "
            "CPU, or its builds of the numerical libraries) may round floats differently; then every "
            "trained model, teachers included, lands elsewhere within its own seed-to-seed spread, "
            "which the intervals do not cover for the teachers."
        ),
    ]


def write_markdown(run: dict[str, Any], figures: dict[int, list[Path]] | None, path: Path) -> Path:
    """The human-readable report: summary, timings, then one section per experiment."""
    p = run["profile"]
    t = run["timings"]
    experiments = run["experiments"]
    lines = [
        f"# kdpipe reproduce: Hinton, Vinyals & Dean (2015), profile `{p['name']}`",
        "",
        f"Command: `{run['command']}`  ",
        (
            f"Data: {run['data']['name']} ({run['data']['sizes']}), device {run['device']} "
            f"({run.get('torch_threads', '?')} torch threads), "
            f"kdpipe {run['kdpipe_version']} at git commit {run.get('git_commit') or 'unknown'}, "
            f"{run['finished_utc']}, wall time {run['wall_seconds']:.1f}s."
        ),
        *_machine_line(run),
        "",
        (
            "Method: every choice (temperature, hard-label weight, bias shift) is made on validation "
            "rows held out of every training set; the test rows are scored once per final model. "
            "Epochs are fixed by the profile, not tuned. Each teacher is trained once and run once over "
            "the transfer set into a logit cache (`kdpipe.build_cache`); every student reads that cache. "
            "Seeds vary the students (initialization, order, subsets), not the teachers. Every "
            "interval is a 95% one and covers both the seeds and the test set's own sampling "
            "noise: shares of a gap are ratios of means with a bootstrap over seeds and test rows, "
            "differences have Student-t intervals (`kdpipe.reproduce.stats`). The criteria were "
            "written before this run; they replace those of the earlier committed run (2 SE over "
            "seeds of per-seed shares), whose faults its audit listed. Each share also records its "
            "noise and the least gap that a share at its bar needs to clear zero with that noise "
            "(`gap_needed`, `kdpipe.reproduce.stats.share_interval`); a run whose gap is under it "
            "is noted, since a student at the bar would have failed there. Fashion-MNIST stands "
            "in for MNIST and for the speech data of sections 4 and 6."
        ),
        "",
    ]
    if not p["verdicts"]:
        lines += [
            (
                "**Smoke profile: tiny sizes, no verdicts.** It checks that every experiment runs "
                "and that the report and plots are written; its numbers mean nothing."
            ),
            "",
        ]
    lines += ["| # | experiment | this run | verdict |", "|---|---|---|---|"]
    for n, exp in experiments.items():
        lines.append(f"| {n} | {exp['title']} | {exp['headline']} | {exp['verdict'] or '-'} |")
        if exp.get("variant"):
            v = exp["variant"]
            lines.append(
                f"| {n}b | {v['title']} (not one of the six) | {v['headline']} | {v['verdict'] or '-'} |"
            )
    for n, name in run["not_implemented"].items():
        lines.append(f"| {n} | {name} | not implemented yet | - |")
    for n in run.get("pending", []):
        lines.append(
            f"| {n} | {EXPERIMENTS[n]} | not finished: the run is still going or was stopped | - |"
        )
    lines += [
        "",
        "## Time: teachers once, students many times",
        "",
        f"- teacher training: {t['teacher_training_s']:.1f}s",
        f"- teacher passes over the transfer set (building the caches): {t['teacher_passes_s']:.1f}s",
        f"- {t['student_fits']} student fits: {t['students_s']:.1f}s",
        (
            f"- re-running the teachers inside every distilled student instead (one teacher pass per "
            f"row and epoch, {t['distilled_row_epochs']} row-epochs, priced at the cache build's cost per "
            f"row): about {t['online_teacher_passes_estimate_s']:.1f}s more, against "
            f"{t['teacher_passes_s']:.1f}s for the caches"
        ),
        "",
    ]
    if figures is None:
        lines += [
            "Plots: not drawn, matplotlib is not installed (`pip install kdpipe[plots]`).",
            "",
        ]
    for n, exp in experiments.items():
        lines += _section(int(n), exp, (figures or {}).get(int(n), []), p["verdicts"])
    lines += ["## Profile", "", "```json", json.dumps(p, indent=1), "```", ""]
    path.write_text("\n".join(lines))
    return path
