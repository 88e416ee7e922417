"""The README's main job, at toy size: teachers -> cache -> students -> table."""

from __future__ import annotations

import pytest

from kdpipe.cli import build_parser, main
from kdpipe.quickstart import format_table, run_quickstart


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_quickstart_runs_end_to_end_through_the_cache(tmp_path, backend):
    rows = run_quickstart(
        seed=1, n_members=2, teacher_epochs=2, student_epochs=3, cache_dir=tmp_path,
        backend=backend, verbose=False,
    )
    names = [r.model for r in rows]
    assert names == [
        "teacher 1", "teacher 2", "ensemble of 2", "student, hard labels",
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


def test_command_line_knows_every_subcommand():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"quickstart", "build-cache", "info", "verify"} <= set(commands)
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--backend", "parquet"])
    assert exc.value.code == 2
