"""The ``kdpipe`` command: exit codes, one-line errors, --version, --help, Ctrl-C and resume."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import kdpipe
from kdpipe.cache import LogitCache
from kdpipe.cache.manifest import RECORDS_DIR
from kdpipe.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
N, D, C = 96, 4, 3


class SlowTeacher(torch.nn.Module):
    """A linear teacher that also multiplies two ``n x n`` matrices per call: slow enough to interrupt."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(D, C)
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        busy = torch.ones([self.n, self.n])
        return self.linear(x) + (busy @ busy).sum() * 0.0


def _torchscript(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit is deprecated in torch >= 2.10
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Transfer set (.npy and .h5), labels, and teachers in every format the CLI meets."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.arange(N) % C)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = X
    teacher = torch.nn.Sequential(
        torch.nn.Linear(D, 8), torch.nn.ReLU(), torch.nn.Linear(8, C)
    ).eval()
    torch.save(teacher, tmp_path / "pickled.pt")
    torch.save(teacher.state_dict(), tmp_path / "weights.pt")
    _torchscript(teacher, tmp_path / "script.pt")
    return {
        "x": tmp_path / "x.npy",
        "y": tmp_path / "y.npy",
        "h5": tmp_path / "x.h5",
        "pickled": tmp_path / "pickled.pt",
        "weights": tmp_path / "weights.pt",
        "script": tmp_path / "script.pt",
        "out": tmp_path / "cache",
        "dir": tmp_path,
    }


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's kdpipe, not an installed one


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"kdpipe {kdpipe.__version__}\n"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_help_shows_every_default(command, capsys):
    parser = _subcommands()[command]
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    shown = 0
    for action in parser._actions:
        if action.default in (None, False, argparse.SUPPRESS) or action.required:
            continue
        assert f"(default: {action.default})" in text, action.dest
        shown += 1
    if command in ("build-cache", "quickstart"):
        assert shown >= 5


def _user_error_cases(f: dict[str, Path]) -> dict[str, tuple[list[str], int, str]]:
    """argv, exit status, and a piece of the message, for each mistake a user makes."""
    build = ["build-cache", "--data", str(f["x"]), "-o", str(f["out"]), "--quiet"]
    return {
        "missing teacher": (build + [str(f["dir"] / "nope.pt")], 1, "nope.pt"),
        "missing data": (
            [
                "build-cache",
                str(f["script"]),
                "--data",
                str(f["dir"] / "nope.npy"),
                "-o",
                str(f["out"]),
            ],
            1,
            "nope.npy",
        ),
        "missing labels": (
            build + [str(f["script"]), "--labels", str(f["dir"] / "nope.npy")],
            1,
            "nope.npy",
        ),
        "pickled module": (build + [str(f["pickled"])], 1, "--trust-pickled-teachers"),
        "state_dict, trusted": (
            build + [str(f["weights"]), "--trust-pickled-teachers"],
            1,
            "is a state_dict",
        ),
        "hdf5 without --dataset": (
            ["build-cache", str(f["script"]), "--data", str(f["h5"]), "-o", str(f["out"])],
            2,
            "--dataset",
        ),
        "hdf5, wrong --dataset": (
            [
                "build-cache",
                str(f["script"]),
                "--data",
                str(f["h5"]),
                "--dataset",
                "z",
                "-o",
                str(f["out"]),
            ],
            1,
            "its arrays: x",
        ),
        "data of unknown type": (
            ["build-cache", str(f["script"]), "--data", str(f["pickled"]), "-o", str(f["out"])],
            2,
            ".npy, .zarr or .h5",
        ),
        "info on a missing cache": (["info", str(f["dir"] / "nothing")], 1, "nothing"),
        "verify on a plain file": (["verify", str(f["x"])], 1, "x.npy"),
        "unknown option": (["info", str(f["out"]), "--colour"], 2, "--colour"),
    }


CASES = sorted(
    _user_error_cases(
        {k: Path(k) for k in ("x", "y", "h5", "pickled", "weights", "script", "out", "dir")}
    )
)


@pytest.mark.parametrize("case", CASES)
def test_user_errors_end_with_one_line_and_an_exit_status(case, files, capsys):
    argv, status, needle = _user_error_cases(files)[case]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if case == "unknown option":  # argparse's own report: usage, then the error line
        assert err.splitlines()[-1].startswith("kdpipe") and ": error: " in err and needle in err
        return
    assert len(err.splitlines()) == 1 and err.startswith("kdpipe: error: ") and needle in err, err
    assert not files["out"].exists()


def test_user_error_from_a_shell_has_no_traceback(files):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdpipe",
            "build-cache",
            str(files["pickled"]),
            "--data",
            str(files["x"]),
            "-o",
            str(files["out"]),
        ],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("kdpipe: error: ")
    assert "torch.save() pickle" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["--debug", "KDPIPE_DEBUG=1"])
def test_debug_shows_the_original_exception(files, monkeypatch, how):
    argv = ["info", str(files["dir"] / "nothing")]
    if how == "--debug":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("KDPIPE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


def test_trusted_pickled_module_builds_the_same_cache_as_its_torchscript(files):
    argv = ["build-cache", "--data", str(files["x"]), "--labels", str(files["y"]), "--quiet"]
    assert (
        main([*argv, str(files["pickled"]), "--trust-pickled-teachers", "-o", str(files["out"])])
        == 0
    )
    assert main([*argv, str(files["script"]), "-o", str(files["dir"] / "ts")]) == 0
    pickled, script = LogitCache.open(files["out"]), LogitCache.open(files["dir"] / "ts")
    teacher = torch.load(files["pickled"], weights_only=False)
    with torch.no_grad():
        expected = teacher(torch.from_numpy(np.load(files["x"]))).numpy()
    np.testing.assert_allclose(np.asarray(pickled)[:, 0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pickled), np.asarray(script))


def _records(out: Path) -> dict[str, int]:
    """Completion records of the cache at ``out``: name -> modification time (ns)."""
    folder = out / RECORDS_DIR
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} if folder.is_dir() else {}


@pytest.mark.slow  # a build interrupted from a shell and resumed (~16 s); CI runs it (.ci/run: pytest -m slow)
def test_ctrl_c_during_build_cache_exits_130_and_rerunning_resumes(tmp_path):
    X = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = SlowTeacher(n=1000).eval()
    teacher = _torchscript(module, tmp_path / "slow.pt")
    out = tmp_path / "cache"
    argv = [
        sys.executable,
        "-m",
        "kdpipe",
        "build-cache",
        str(teacher),
        "--data",
        str(tmp_path / "x.npy"),
        "-o",
        str(out),
        "--chunk-rows",
        "8",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--quiet",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
        # a shell gives its foreground job the default SIGINT action; pytest may run in the background
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 (one signal call, no locks)
    )
    deadline = time.monotonic() + 120
    while len(_records(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("kdpipe: interrupted") and "rerun the same command to resume" in err
    done_before = _records(out)
    assert 2 <= len(done_before) < N // 8

    rerun = subprocess.run(
        argv, capture_output=True, text=True, env=_subprocess_env(), timeout=120, check=False
    )
    assert rerun.returncode == 0, rerun.stderr
    cache = LogitCache.open(out)
    assert cache.verify().ok
    # the chunks finished before Ctrl-C were kept, not computed again
    done_after = _records(out)
    assert {name: done_after.get(name) for name in done_before} == done_before
    with torch.inference_mode():
        expected = module.linear(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.asarray(cache)[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_torch_file_format_tells_torchscript_from_pickles(files):
    from kdpipe.cache.teachers import torch_file_format

    assert torch_file_format(files["script"]) == "torchscript"
    assert torch_file_format(files["pickled"]) == "pickle"
    assert torch_file_format(files["weights"]) == "pickle"
    assert torch_file_format(files["x"]) == "unknown"


def test_build_cache_refuses_a_pickled_teacher_file_before_any_work(files):
    from kdpipe.cache import build_cache
    from kdpipe.errors import InputError

    with pytest.raises(InputError, match="not TorchScript.*trust_pickled_teachers=True"):
        build_cache(str(files["pickled"]), np.load(files["x"]), files["out"], progress=False)
    assert not files["out"].exists()


def test_interrupting_another_command_says_so_without_a_resume_hint(files, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LogitCache, "open", interrupted)
    assert main(["info", str(files["out"])]) == 130
    assert capsys.readouterr().err == "kdpipe: interrupted\n"
