"""What a resume may reuse: temp leftovers, precision and device kind, teacher fingerprints; file modes; open errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import kdpipe
from kdpipe.cache import LogitCache, build_cache
from kdpipe.cache.fingerprint import fingerprint_callable, is_weak
from kdpipe.errors import CacheMismatchError, CacheNotFoundError, InputError

N, D, C, ROWS = 60, 4, 3, 20


@pytest.fixture
def X() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)


W = np.random.default_rng(1).normal(size=(D, C)).astype(np.float32)


def linear(batch):
    return batch @ W


def build(teacher, X, path, **kw):
    kw.setdefault("chunk_rows", ROWS)
    return build_cache(teacher, X, path, progress=False, num_workers=1, **kw)


# -- temp files a crash leaves behind ------------------------------------------------


@pytest.mark.parametrize("where", ["manifest", "record", "chunk"])
@pytest.mark.parametrize("finished", [True, False])
def test_leftover_temp_files_do_not_block_resume_or_overwrite(
    tmp_path, X, backend, where, finished
):
    path = tmp_path / "c"
    cache = build(linear, X, path, backend=backend)
    reference = np.asarray(cache)
    if not finished:
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.update(complete=False, chunks=[], finished=None)
        (path / "manifest.json").write_text(json.dumps(manifest))
        (path / "done" / "000001.json").unlink()
    folder = {
        "manifest": path,
        "record": path / "done",
        "chunk": path / ("hdf5" if backend == "hdf5" else "logits.zarr"),
    }[where]
    target = {"manifest": "manifest.json", "record": "000001.json", "chunk": "000001.h5"}[where]
    leftover = folder / f".{target}.0123456789abcdef.tmp"
    leftover.write_bytes(b'{"half": ')  # a write cut short

    if finished:
        opened = LogitCache.open(path)  # readers ignore it
        np.testing.assert_array_equal(np.asarray(opened), reference)
        assert opened.verify().ok
    resumed = build(linear, X, path, backend=backend)
    np.testing.assert_array_equal(np.asarray(resumed), reference)
    assert resumed.verify().ok
    if where != "chunk" or backend == "hdf5":
        assert not leftover.exists()  # removed on resume
    leftover.write_bytes(b"")
    rebuilt = build(linear, X, path, backend=backend, overwrite=True)
    np.testing.assert_array_equal(np.asarray(rebuilt), reference)
    assert not leftover.exists()


def test_a_folder_with_only_a_temp_manifest_is_a_crashed_start(tmp_path, X):
    path = tmp_path / "c"
    path.mkdir()
    (path / ".manifest.json.0123456789abcdef.tmp").write_bytes(b"")
    with pytest.raises(CacheNotFoundError):
        LogitCache.open(path)
    np.testing.assert_array_equal(np.asarray(build(linear, X, path))[:, 0], X @ W)


# -- file modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_cache_files_honour_the_umask(tmp_path, X, backend, umask):
    old = os.umask(umask)
    try:
        cache = build(linear, X, tmp_path / "c", backend=backend)
    finally:
        os.umask(old)
    entries = list(cache.path.rglob("*"))
    files = [p for p in entries if p.is_file()]
    assert {p.name for p in files} >= {"manifest.json"} and len(files) > 3
    modes = {p.relative_to(cache.path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == {name: 0o666 & ~umask for name in modes}
    dirs = [p for p in entries if p.is_dir()]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask for p in dirs)


# -- precision and device kind ----------------------------------------------------------------


def test_teacher_precision_is_explicit_recorded_and_compared(tmp_path, X):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, C))
    with torch.no_grad():
        exact = module(torch.from_numpy(X)).numpy()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            low = module(torch.from_numpy(X)).float().numpy()
    assert not np.array_equal(exact, low)  # the two settings give different logits

    model = build(module, X, tmp_path / "m", device="cpu")
    assert (
        model.manifest.build["precision"] == "model"
        and model.manifest.build["device_kind"] == "cpu"
    )
    np.testing.assert_array_equal(np.asarray(model)[:, 0], exact)
    half = build(module, X, tmp_path / "b", device="cpu", precision="bfloat16")
    assert half.manifest.build["precision"] == "bfloat16"
    np.testing.assert_array_equal(np.asarray(half)[:, 0], low)

    with pytest.raises(
        CacheMismatchError, match="teacher precision: cache has 'model', this build has 'bfloat16'"
    ):
        build(module, X, tmp_path / "m", device="cpu", precision="bfloat16")
    np.testing.assert_array_equal(
        np.asarray(build(module, X, tmp_path / "m", device="cpu"))[:, 0], exact
    )
    with pytest.raises(InputError, match="precision must be one of"):
        build(module, X, tmp_path / "x", precision="fp8")


def test_resume_on_another_device_kind_is_refused(tmp_path, X):
    torch.manual_seed(0)
    module = torch.nn.Linear(D, C)
    for teacher, refused in (
        (module, True),
        (linear, False),
    ):  # a numpy callable runs on the CPU anywhere
        path = tmp_path / type(teacher).__name__
        build(teacher, X, path, device="cpu")
        for name in ("manifest.json", "manifest.initial.json"):  # as if built on a GPU
            manifest = json.loads((path / name).read_text())
            manifest["build"]["device_kind"] = "cuda"
            (path / name).write_text(json.dumps(manifest))
        if refused:
            with pytest.raises(
                CacheMismatchError, match="device kind: cache has 'cuda', this build has 'cpu'"
            ):
                build(teacher, X, path, device="cpu")
        else:
            build(teacher, X, path, device="cpu")


def test_resume_with_another_batch_size_is_refused(tmp_path, X):
    """Rows batched otherwise may give other floats (the teacher's, a low-rank encode's):
    a resume must batch as the build did to finish the same cache."""
    path = tmp_path / "c"
    build(linear, X, path, batch_size=8)
    with pytest.raises(CacheMismatchError, match="batch_size: cache has 8, this build has 7"):
        build(linear, X, path, batch_size=7, resume=True)
    build(linear, X, path, batch_size=8, resume=True)  # the same batches: reused


def test_command_line_precision_flag(tmp_path, X):
    from kdpipe.cli import main

    torch.manual_seed(0)
    script = tmp_path / "t.pt"
    with pytest.warns(DeprecationWarning):  # torch.jit is deprecated in torch >= 2.10
        torch.jit.trace(torch.nn.Linear(D, C), torch.zeros(1, D)).save(str(script))
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "c"
    args = [
        "build-cache",
        str(script),
        "--data",
        str(tmp_path / "x.npy"),
        "-o",
        str(out),
        "--quiet",
        "--device",
        "cpu",
        "--precision",
        "bfloat16",
        "--chunk-rows",
        str(ROWS),
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning
        )
        assert main(args) == 0
    assert LogitCache.open(out).manifest.build["precision"] == "bfloat16"


# -- callable teachers: fingerprints, weak ones, versions ---------------------------------


def make(source: str, **namespace):
    """A function named ``teacher`` compiled from ``source``, as if edited in a module."""
    scope = {"np": np, **namespace}
    exec(textwrap.dedent(source), scope)  # noqa: S102 (the test writes the source itself)
    return scope["teacher"]


ORIGINAL = """
def helper(z):
    return z * 2.0

def teacher(batch, scale=1.0):
    return helper(batch @ W) * scale + 0.5
"""
EDITS = {
    "body": ORIGINAL.replace("+ 0.5", "- 0.5"),
    "constant": ORIGINAL.replace("0.5", "0.25"),
    "default": ORIGINAL.replace("scale=1.0", "scale=3.0"),
    "helper": ORIGINAL.replace("z * 2.0", "z * 3.0"),
}


@pytest.mark.parametrize("edit", [*EDITS, "global value", "closure value", "global estimator"])
def test_an_edited_callable_is_refused_and_the_same_one_resumes(tmp_path, X, edit):
    path = tmp_path / "c"
    original = make(ORIGINAL, W=W)
    first = np.asarray(build(original, X, path))
    np.testing.assert_allclose(first[:, 0], (X @ W) * 2 + 0.5, rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(build(make(ORIGINAL, W=W.copy()), X, path)), first
    )  # same: resumes

    if edit == "global value":
        edited = make(ORIGINAL, W=W + 1)
    elif edit == "global estimator":
        from sklearn.linear_model import LogisticRegression

        source = "def teacher(batch):\n    return est.decision_function(batch)\n"
        labels = np.arange(N) % C
        build(make(source, est=LogisticRegression(C=1.0).fit(X, labels)), X, tmp_path / "e")
        path, edited = tmp_path / "e", make(source, est=LogisticRegression(C=0.01).fit(X, labels))
    elif edit == "closure value":

        def closure(W):
            return lambda batch: batch @ W

        build(closure(W), X, tmp_path / "k")
        path, edited = tmp_path / "k", closure(W * 2)
    else:
        edited = make(EDITS[edit], W=W)
    assert not is_weak(fingerprint_callable(edited))
    with pytest.raises(CacheMismatchError, match="teacher 0"):
        build(edited, X, path)


class Opaque:
    """A value kdpipe does not know how to hash."""

    def __init__(self, w):
        self.w = w


def test_a_weak_callable_resumes_only_with_a_named_version(tmp_path, X):
    state = Opaque(W)

    def teacher(batch):
        return batch @ state.w

    assert is_weak(fingerprint_callable(teacher))
    path = tmp_path / "c"
    build(teacher, X, path)
    with pytest.raises(
        CacheMismatchError, match=r"teacher 0 \(.*teacher\) is a callable.*teacher_versions="
    ):
        build(teacher, X, path)  # even unchanged: kdpipe cannot tell

    build(teacher, X, path, overwrite=True, teacher_versions=["v1"])
    first = np.asarray(
        build(teacher, X, path, teacher_versions=["v1"])
    )  # the named version resumes
    np.testing.assert_allclose(first[:, 0], X @ W, rtol=1e-6)
    with pytest.raises(CacheMismatchError, match="teacher 0"):
        build(teacher, X, path, teacher_versions="v2")  # a new version: other logits
    with pytest.raises(InputError, match="one string"):
        build([teacher, teacher], X, tmp_path / "d", teacher_versions=["v1"])


# -- stable dask tokens, open errors ---------------------------------------------------------------


def test_dask_tokens_agree_across_processes(tmp_path, X):
    import dask.base

    cache = build(linear, X, tmp_path / "c")
    rows = [5, 1, 40, 33]
    code = (
        "import sys, dask.base; from kdpipe.cache import LogitCache; "
        f"print(dask.base.tokenize(LogitCache.open(sys.argv[1])[{rows}]))"
    )
    here = dask.base.tokenize(cache[rows])
    root = os.path.dirname(os.path.dirname(kdpipe.__file__))  # this checkout's kdpipe
    env = {**os.environ, "PYTHONHASHSEED": "random", "PYTHONPATH": root}
    there = [
        subprocess.run(
            [sys.executable, "-c", code, str(cache.path)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert there == [here, here]
    assert dask.base.tokenize(cache[[5, 1, 40, 34]]) != here


def test_open_without_a_cache_is_one_clear_error(tmp_path):
    plain = tmp_path / "file.npy"
    plain.write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        plain: "is a file",
        tmp_path / "nothing": "does not exist",
        empty: "has no manifest.json",
    }
    for path, words in cases.items():
        with pytest.raises(CacheNotFoundError, match=f"no kdpipe logit cache at {path}.*{words}"):
            LogitCache.open(path)
    assert issubclass(CacheNotFoundError, FileNotFoundError)
