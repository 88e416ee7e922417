"""A new user's mistakes (issue 18): each ends in one clear error, before any work, and
loses nothing written; pickled teacher files need the opt-in by name."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from kdpipe.cache import LogitCache, build_cache
from kdpipe.cli import main
from kdpipe.errors import CacheMismatchError, InputError

N, D, C = 40, 6, 3


class _Marker:
    """Unpickling this object creates the file ``path`` (what a crafted teacher file would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "narrow.npy", X[:, :-1])  # one column fewer than the teacher takes
    np.save(tmp_path / "int.npy", rng.integers(0, 16, (N, D)))  # int64
    np.save(tmp_path / "y.npy", np.arange(N) % C)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(
        torch.nn.Linear(D, 8), torch.nn.ReLU(), torch.nn.Linear(8, C)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit is deprecated in torch >= 2.10
        torch.jit.script(teacher).save(str(tmp_path / "script.pt"))
    torch.save(teacher.state_dict(), tmp_path / "weights.pt")
    marker = tmp_path / "UNPICKLED"
    for suffix in (".joblib", ".pkl", ".pickle"):
        joblib.dump(_Marker(str(marker)), tmp_path / f"crafted{suffix}")
    return {
        "x": tmp_path / "x.npy",
        "narrow": tmp_path / "narrow.npy",
        "int": tmp_path / "int.npy",
        "y": tmp_path / "y.npy",
        "script": tmp_path / "script.pt",
        "weights": tmp_path / "weights.pt",
        "marker": marker,
        "out": tmp_path / "cache",
        "dir": tmp_path,
    }


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("kdpipe: error: "), err
    return err


def _build(f: dict[str, Path], *extra: str, teacher: str = "script", data: str = "x") -> list[str]:
    return [
        "build-cache",
        str(f[teacher]),
        "--data",
        str(f[data]),
        "-o",
        str(f["out"]),
        "--quiet",
        *extra,
    ]


# -- pickled teacher files --------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".pickle"])
def test_cli_refuses_a_pickled_sklearn_file_without_the_opt_in_and_unpickles_nothing(
    files, suffix, capsys
):
    argv = [
        "build-cache",
        str(files["dir"] / f"crafted{suffix}"),
        "--data",
        str(files["x"]),
        "-o",
        str(files["out"]),
        "--quiet",
    ]
    assert main(argv) == 1
    assert "--trust-pickled-teachers" in _one_line(capsys)
    assert not files["marker"].exists() and not files["out"].exists()


@pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".pickle"])
def test_build_cache_refuses_a_pickled_sklearn_file_unless_trusted(files, suffix):
    path = files["dir"] / f"crafted{suffix}"
    with pytest.raises(InputError, match="trust_pickled_teachers=True"):
        build_cache(str(path), np.load(files["x"]), files["out"], progress=False)
    assert not files["marker"].exists() and not files["out"].exists()
    # trusted, the file is unpickled: the marker appears (and the object is no teacher)
    with pytest.raises(InputError):
        build_cache(
            str(path),
            np.load(files["x"]),
            files["out"],
            progress=False,
            trust_pickled_teachers=True,
        )
    assert files["marker"].exists()


def test_trusted_joblib_teacher_builds_from_the_cli_and_the_api_alike(files):
    from sklearn.linear_model import LogisticRegression

    X, y = np.load(files["x"]), np.load(files["y"])
    joblib.dump(LogisticRegression(max_iter=200).fit(X, y), files["dir"] / "lr.joblib")
    teacher = str(files["dir"] / "lr.joblib")
    assert (
        main(
            [
                "build-cache",
                teacher,
                "--data",
                str(files["x"]),
                "-o",
                str(files["out"]),
                "--quiet",
                "--trust-pickled-teachers",
            ]
        )
        == 0
    )
    api = build_cache(teacher, X, files["dir"] / "api", progress=False, trust_pickled_teachers=True)
    np.testing.assert_array_equal(np.asarray(LogitCache.open(files["out"])), np.asarray(api))
    np.testing.assert_allclose(
        np.asarray(api)[:, 0], joblib.load(teacher).decision_function(X), rtol=1e-6
    )


def test_a_state_dict_is_told_it_is_a_state_dict_the_first_time(files, capsys):
    assert main(_build(files, teacher="weights")) == 1
    err = _one_line(capsys)
    assert "state_dict" in err and "--trust-pickled-teachers" not in err
    with pytest.raises(InputError, match="state_dict"):
        build_cache(str(files["weights"]), np.load(files["x"]), files["out"], progress=False)
    assert not files["out"].exists()


# -- options checked before any work ----------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--chunk-rows", "0"], "--chunk-rows"),
        (["--batch-size", "-3"], "--batch-size"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        (["--device", "tpu9"], "--device"),
        (["--dataset", "logits"], "--dataset"),  # a .npy file is one array
        (["--lock-timeout", "-1"], "--lock-timeout"),
        (["--lock-timeout", "soon"], "--lock-timeout"),
    ],
)
def test_bad_build_options_exit_2_with_one_line_before_any_work(files, extra, needle, capsys):
    assert main(_build(files, *extra)) == 2
    assert needle in _one_line(capsys)
    assert not files["out"].exists()


@pytest.mark.parametrize("data, needle", [("narrow", "5 values"), ("int", "int64")])
def test_teacher_that_cannot_take_the_rows_is_one_error_before_anything_is_written(
    files, data, needle, capsys
):
    assert main(_build(files, data=data)) == 1
    err = _one_line(capsys)
    assert "script.pt" in err and needle in err, err
    assert not files["out"].exists()
    with pytest.raises(InputError, match=needle):
        build_cache(str(files["script"]), np.load(files[data]), files["out"], progress=False)
    assert not files["out"].exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--temperature", "0"], "--temperature"),
        (["--alpha", "5"], "--alpha"),
        (["--members", "0"], "--members"),
    ],
)
def test_quickstart_checks_its_options_before_any_teacher_trains(
    extra, needle, capsys, monkeypatch
):
    import kdpipe.teacher_training as training

    def trained(*args, **kwargs):
        raise AssertionError("a teacher was trained before the options were checked")

    monkeypatch.setattr(training, "train_mlp_ensemble", trained)
    assert main(["quickstart", "--quiet", *extra]) == 2
    assert needle in _one_line(capsys)


# -- messages that name the right thing -------------------------------------------------


def test_cli_mismatch_message_names_the_flag_not_the_python_argument(files, capsys):
    assert main(_build(files)) == 0
    assert main(_build(files, "--dtype", "float16")) == 1
    err = _one_line(capsys)
    assert "--overwrite" in err and "overwrite=True" not in err


def test_rerun_without_labels_over_a_labeled_cache_says_none_given(files, capsys):
    assert main(_build(files, "--labels", str(files["y"]))) == 0
    assert main(_build(files)) == 1
    err = _one_line(capsys)
    assert "none given" in err and "differ" not in err, err
    with pytest.raises(CacheMismatchError, match="none given"):
        build_cache(str(files["script"]), np.load(files["x"]), files["out"], progress=False)


def test_info_says_whether_labels_are_stored(files, capsys):
    assert main(_build(files, "--labels", str(files["y"]))) == 0
    capsys.readouterr()
    assert main(["info", str(files["out"])]) == 0
    assert json.loads(capsys.readouterr().out)["labels_stored"] is True
    unlabeled = files["dir"] / "unlabeled"
    assert (
        main(
            [
                "build-cache",
                str(files["script"]),
                "--data",
                str(files["x"]),
                "-o",
                str(unlabeled),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(unlabeled)]) == 0
    assert json.loads(capsys.readouterr().out)["labels_stored"] is False


# -- X of a dtype that is no number -----------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda X: X.astype(object),
        lambda X: X.astype(str),
        lambda X: X.astype("datetime64[s]"),
        lambda X: X.astype(np.complex64),
    ],
    ids=["object", "str", "datetime64", "complex64"],
)
def test_x_of_a_non_numeric_dtype_is_an_input_error_before_anything_is_written(tmp_path, make):
    X = make(np.random.default_rng(0).normal(size=(N, D)))
    with pytest.raises(InputError, match=re.escape(str(X.dtype))):
        build_cache(torch.nn.Linear(D, C), X, tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float16", "float64", "bool"])
def test_numeric_x_still_builds(tmp_path, dtype):
    X = np.random.default_rng(0).integers(0, 2, (N, D)).astype(dtype)

    def teacher(batch):
        return np.asarray(batch, dtype=np.float32)[:, :C]

    cache = build_cache(teacher, X, tmp_path / "c", progress=False)
    np.testing.assert_array_equal(np.asarray(cache)[:, 0], X[:, :C].astype(np.float32))


# -- credentials and object-storage errors ----------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        'client_kwargs={"aws_secret_access_key": "abc"}',
        'config_kwargs={"a": [{"session_token": "t"}]}',
    ],
)
def test_storage_option_guard_looks_into_nested_values(option, capsys):
    assert main(["info", "s3://bucket/run.zarr", "--storage-option", option]) == 2
    err = _one_line(capsys)
    assert "credential" in err and "abc" not in err


def test_botocore_errors_are_one_line(capsys, monkeypatch):
    pytest.importorskip("botocore")
    from botocore.exceptions import NoCredentialsError

    from kdpipe.cache import reader

    def no_credentials(*args, **kwargs):
        raise NoCredentialsError()

    monkeypatch.setattr(reader.LogitCache, "open", no_credentials)
    assert main(["info", "s3://bucket/run.zarr"]) == 1
    assert "Unable to locate credentials" in _one_line(capsys)
    assert os.environ.get("KDPIPE_DEBUG", "") in ("", "0")


# -- an overwrite checks its inputs before it deletes -------------------------------------


def _bad_labels(files: dict[str, Path], kind: str) -> Path:
    y = np.load(files["y"])
    bad = {"two columns": np.stack([y, y], axis=1), "one short": y[:-1], "unknown": y + 7}[kind]
    path = files["dir"] / f"bad-{kind.replace(' ', '-')}.npy"
    np.save(path, bad)
    return path


@pytest.mark.parametrize(
    "kind, needle",
    [("two columns", "one-dimensional"), ("one short", f"{N - 1} labels"), ("unknown", "7")],
)
def test_labels_it_cannot_hold_fail_before_an_overwrite_deletes_or_a_new_cache_is_made(
    files, kind, needle, capsys
):
    bad = str(_bad_labels(files, kind))
    assert main(_build(files, "--labels", bad)) == 1  # a new cache: nothing is made
    assert needle in _one_line(capsys)
    assert not files["out"].exists()
    assert main(_build(files, "--labels", str(files["y"]))) == 0
    before = np.asarray(LogitCache.open(files["out"]))
    assert main(_build(files, "--overwrite", "--labels", bad)) == 1
    assert needle in _one_line(capsys)
    with pytest.raises(InputError, match=needle):
        build_cache(
            str(files["script"]),
            np.load(files["x"]),
            files["out"],
            y=np.load(bad),
            overwrite=True,
            progress=False,
        )
    kept = LogitCache.open(files["out"])  # the finished cache, as it was
    assert kept.verify().ok
    np.testing.assert_array_equal(np.asarray(kept), before)


def test_a_bad_worker_count_or_scheduler_fails_before_an_overwrite_deletes(files):
    import dask

    assert main(_build(files)) == 0
    before = np.asarray(LogitCache.open(files["out"]))
    args = (str(files["script"]), np.load(files["x"]), files["out"])
    with pytest.raises(InputError, match="num_workers must be a positive integer"):
        build_cache(*args, overwrite=True, num_workers=-1, progress=False)
    unreachable = dict(overwrite=True, client="tcp://127.0.0.1:9", progress=False)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(OSError):
        build_cache(*args, **unreachable)  # nothing listens there: refused before any write
    kept = LogitCache.open(files["out"])
    assert kept.verify().ok
    np.testing.assert_array_equal(np.asarray(kept), before)


def test_a_held_path_names_the_lock_timeout_option_which_waits(files, capsys):
    from kdpipe.cache.lock import BuildLock

    with BuildLock(files["out"]):  # another build holds the path
        assert main(_build(files)) == 1
        err = _one_line(capsys)
        assert "--lock-timeout SECONDS" in err and "lock_timeout=" not in err, err
        assert main(_build(files, "--lock-timeout", "0.3")) == 1
        assert "waited 0.3 s" in _one_line(capsys)
    assert main(_build(files, "--lock-timeout", "none")) == 0  # free again: builds


def test_a_loaded_script_module_builds_without_torch_warnings(files):
    """A module scripted in training mode loads in training mode, which the build copies;
    torch warned there once per parameter about .grad of non-leaf tensors, which kdpipe
    never uses."""
    torch.manual_seed(0)
    path = files["dir"] / "training.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit in torch >= 2.10
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Linear(8, C))).save(
            str(path)
        )
        teacher = torch.jit.load(str(path))
    assert teacher.training
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cache = build_cache(teacher, np.load(files["x"]), files["out"], progress=False)
    assert cache.verify().ok and teacher.training  # the caller's module is left as it was
