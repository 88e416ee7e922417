"""The README's main job, at toy size: teachers -> cache -> students -> table."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import kdpipe.teacher_training
from kdpipe.cli import build_parser, main
from kdpipe.quickstart import format_table, run_quickstart
from kdpipe.teacher_training import train_mlp_ensemble

TINY = ["--members", "2", "--teacher-epochs", "1", "--student-epochs", "1"]


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_quickstart_runs_end_to_end_through_the_cache(tmp_path, backend):
    rows = run_quickstart(
        seed=1,
        n_members=2,
        teacher_epochs=2,
        student_epochs=3,
        cache_dir=tmp_path,
        backend=backend,
        verbose=False,
    )
    names = [r.model for r in rows]
    assert names == [
        "teacher 1",
        "teacher 2",
        "ensemble of 2",
        "student, hard labels",
        "student, distilled T=4",
    ]
    assert all(0.0 <= r.accuracy <= 1.0 and r.errors >= 0 for r in rows)
    # even two epochs of a 2x256 teacher learn digits far above chance (10%)
    assert all(r.accuracy > 0.5 for r in rows[:3])
    stored = list(tmp_path.iterdir())
    assert len(stored) == 1 and stored[0].name.startswith("digits-logits")
    table = format_table(rows)
    assert table.splitlines()[0].split()[:3] == ["model", "hidden", "test"]
    assert len(table.splitlines()) == len(rows) + 1


def _printed_paths(text: str) -> list[Path]:
    """Every absolute path in ``text`` (a word starting with '/'), trailing punctuation cut."""
    return [Path(m.rstrip(".,:;)")) for m in re.findall(r"(?:^|\s)(/\S+)", text)]


def test_quickstart_prints_the_cache_path_it_keeps(tmp_path, capsys):
    assert main(["quickstart", *TINY, "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    printed = _printed_paths(out.out + out.err)
    assert printed, "the kept cache's path is printed"
    assert all(p.exists() for p in printed), [str(p) for p in printed]
    assert any(p.parent == tmp_path.resolve() for p in printed)


def test_quickstart_prints_no_path_of_a_temporary_cache(capsys):
    assert main(["quickstart", *TINY]) == 0
    out = capsys.readouterr()
    missing = [str(p) for p in _printed_paths(out.out + out.err) if not p.exists()]
    assert missing == []
    assert "temporary" in out.out


def _train_student_with_extra_seconds(monkeypatch, extra: list[float]) -> None:
    """Member ``m``'s training takes ``extra[m]`` seconds longer than it would."""
    real = kdpipe.teacher_training.train_student
    calls = iter(extra)

    def slowed(*args, **kwargs):
        time.sleep(next(calls))
        return real(*args, **kwargs)

    monkeypatch.setattr(kdpipe.teacher_training, "train_student", slowed)


def test_ensemble_training_times_each_member_with_its_own_timer(monkeypatch):
    import numpy as np

    _train_student_with_extra_seconds(monkeypatch, [0.0, 0.4, 0.1])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.arange(60) % 3
    members, seconds = train_mlp_ensemble(
        X,
        y,
        n_classes=3,
        n_members=3,
        hidden_layer_sizes=(8,),
        epochs=1,
        device="cpu",
        return_seconds=True,
    )
    assert len(members) == len(seconds) == 3
    # the sleeps show up in their own member's time only (real training here is ~ms)
    assert seconds[1] - seconds[0] == pytest.approx(0.4, abs=0.15)
    assert seconds[2] - seconds[0] == pytest.approx(0.1, abs=0.15)


def test_quickstart_reports_each_teacher_time_and_their_total(monkeypatch):
    _train_student_with_extra_seconds(monkeypatch, [0.0, 0.5])
    start = time.perf_counter()
    rows = run_quickstart(seed=0, n_members=2, teacher_epochs=1, student_epochs=1, verbose=False)
    elapsed = time.perf_counter() - start
    first, second, ensemble = rows[0].seconds, rows[1].seconds, rows[2].seconds
    assert second - first == pytest.approx(0.5, abs=0.25)
    # the ensemble's time is the members' times plus the shared jittered copies
    assert first + second <= ensemble < elapsed
    assert ensemble - (first + second) < 0.5 * ensemble


def test_command_line_knows_every_subcommand():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"quickstart", "build-cache", "info", "verify"} <= set(commands)
    assert main(["quickstart", "--backend", "parquet"]) == 2
