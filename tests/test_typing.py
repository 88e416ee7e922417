"""``tests/typing/user_script.py`` (which ``.ci/run`` checks with ``mypy --strict``) runs."""

from __future__ import annotations

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "typing" / "user_script.py"


def test_the_strictly_typed_user_script_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    accuracy = runpy.run_path(str(SCRIPT))["main"]()
    assert 0.0 <= accuracy <= 1.0
    assert "built from other data" in capsys.readouterr().out  # the refused rebuild
