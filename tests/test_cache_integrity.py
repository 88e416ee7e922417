"""Logit cache: nothing silently wrong. Refusals, corruption, bad teachers, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

from kdpipe.cache import LogitCache, build_cache
from kdpipe.errors import (
    CacheChunkMissingError,
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    ClassMismatchError,
    TeacherOutputError,
)

N, D, C, ROWS = 200, 5, 3, 40  # 5 chunks of 40 rows


@pytest.fixture
def X() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)


class Teacher:
    """A linear callable teacher that counts calls and can misbehave on chosen rows."""

    kdpipe_fingerprint = "test-linear-teacher"

    def __init__(self, fail_rows: range | None = None, mode: str = "raise", width: int = C):
        self.W = np.random.default_rng(1).normal(size=(D, C)).astype(np.float32)
        self.fail_rows, self.mode, self.width = fail_rows, mode, width
        self.calls = 0
        self.rows_seen: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        out = batch @ self.W
        hit = self.fail_rows is not None and any(
            np.isclose(batch[:, 0], X0).any() for X0 in self._fail_values
        )
        if hit and self.mode == "raise":
            raise RuntimeError("teacher crashed")
        if hit and self.mode == "nan":
            out[1] = np.nan
        if self.width != C:
            out = np.zeros((len(batch), self.width), np.float32)
        return out

    def arm(self, X: np.ndarray) -> Teacher:
        self._fail_values = [] if self.fail_rows is None else list(X[list(self.fail_rows), 0])
        return self


def build(teacher, X, path, backend="zarr", **kw):
    kw.setdefault("num_workers", 1)
    return build_cache(
        teacher, X, path, backend=backend, chunk_rows=ROWS, batch_size=20, progress=False, **kw
    )


def test_refuses_other_teacher_data_or_settings(tmp_path, X):
    torch.manual_seed(0)
    a, b = torch.nn.Linear(D, C), torch.nn.Linear(D, C)
    path = tmp_path / "c"
    build(a, X, path)
    assert np.array_equal(
        np.asarray(build(a, X, path)), np.asarray(LogitCache.open(path))
    )  # same call: reused
    with pytest.raises(CacheMismatchError, match="teacher 0"):
        build(b, X, path)
    with pytest.raises(CacheMismatchError, match=r"input rows 80-119 \(chunk 2\)"):
        changed = X.copy()
        changed[100, 3] += 1
        build(a, changed, path)
    with pytest.raises(CacheMismatchError, match="labels"):
        build(a, X, path, y=np.zeros(N, int))
    with pytest.raises(
        CacheMismatchError, match="dtype: cache has 'float32', this build has 'float16'"
    ):
        build(a, X, path, dtype="float16")
    with pytest.raises(CacheMismatchError, match="data shape"):
        build(a, X[:150], path)
    build(b, X, path, overwrite=True)
    with torch.no_grad():
        np.testing.assert_array_equal(
            np.asarray(LogitCache.open(path))[:, 0], b(torch.from_numpy(X)).numpy()
        )


def test_refuses_to_write_into_a_foreign_directory(tmp_path, X):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a kdpipe cache"):
        build(Teacher().arm(X), X, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").exists()


def _chunk_file(path, backend, index):
    if backend == "zarr":
        return path / "logits.zarr" / "logits" / "c" / str(index) / "0" / "0"
    return path / "hdf5" / f"{index:06d}.h5"


def _data_offset(path, backend, index):
    """Offset of the logits bytes inside a chunk file."""
    if backend == "zarr":
        return 0  # raw little-endian bytes, crc32c appended
    import h5py

    with h5py.File(_chunk_file(path, backend, index), "r") as f:
        return f["logits"].id.get_chunk_info(0).byte_offset


def test_flipped_byte_and_deleted_chunk_are_caught(tmp_path, backend, X):
    path = tmp_path / "c"
    build(Teacher().arm(X), X, path, backend=backend)
    assert LogitCache.open(path).verify().ok
    target = _chunk_file(path, backend, 1)
    raw = bytearray(target.read_bytes())
    raw[_data_offset(path, backend, 1) + 17] ^= 0x40
    target.write_bytes(bytes(raw))
    _chunk_file(path, backend, 3).unlink()

    cache = LogitCache.open(path, chunk_cache_bytes=0)
    report = cache.verify()
    assert not report.ok and report.n_verified == 3 and report.status == "FAILED"
    assert {(p.index, p.kind) for p in report.problems} == {(1, "corrupt"), (3, "missing")}
    assert report.corrupt == (1, 3) and report.incomplete == ()
    np.asarray(cache[np.arange(0, 40)])  # untouched chunk 0 still reads
    with pytest.raises(CacheCorruptError, match="chunk 1"):
        np.asarray(cache[np.arange(40, 50)])
    with pytest.raises(CacheChunkMissingError, match="chunk 3"):
        np.asarray(cache[130:])
    with pytest.raises(CacheCorruptError):
        cache.logits.compute()

    teacher = Teacher().arm(X)
    repaired = build(teacher, X, path, backend=backend)  # resume recomputes only the two bad chunks
    assert teacher.calls == 2 * 2  # 2 chunks x 2 batches
    assert repaired.verify().ok
    np.testing.assert_array_equal(np.asarray(repaired)[:, 0], X @ teacher.W)


def test_unfinished_cache_is_refused_and_missing_chunks_raise(tmp_path, X):
    path = tmp_path / "c"
    with pytest.raises(RuntimeError, match="teacher crashed"):
        build(Teacher(range(130, 131), "raise").arm(X), X, path)
    partial = LogitCache.open(path, allow_incomplete=True)
    done = sorted(r.index for r in partial._handle.records.values())
    assert 3 not in done and len(done) < 5
    with pytest.raises(CacheIncompleteError, match=f"{len(done)} of 5 chunks"):
        LogitCache.open(path)
    for i in done:  # chunks finished before the failure are intact
        rows = slice(40 * i, 40 * i + 40)
        np.testing.assert_array_equal(np.asarray(partial[rows])[:, 0], X[rows] @ Teacher().W)
    with pytest.raises(CacheIncompleteError, match=r"chunk 3 \(rows 120-159\)"):
        np.asarray(partial[125:126])
    report = partial.verify()  # unfinished is not corrupt: reported apart
    assert (
        not report.ok
        and report.status == "INCOMPLETE"
        and not report.problems
        and not report.corrupt
    )
    assert list(report.incomplete) == [i for i in range(5) if i not in done]
    assert report.n_verified == len(done) and "not written yet: 2 chunks (3, 4)" in str(report)


def test_resume_after_failure_computes_only_missing_chunks(tmp_path, backend, X):
    path = tmp_path / "c"
    with pytest.raises(RuntimeError):
        build(Teacher(range(130, 131), "raise").arm(X), X, path, backend=backend)
    done = LogitCache.open(path, allow_incomplete=True).info()["complete_chunks"]
    assert done < 5
    teacher = Teacher().arm(X)
    cache = build(teacher, X, path, backend=backend)
    assert teacher.calls == 2 * (5 - done)  # only the missing chunks, two batches each
    reference = build(Teacher().arm(X), X, tmp_path / "ref", backend=backend)
    np.testing.assert_array_equal(np.asarray(cache), np.asarray(reference))
    assert cache.info()["data"]["fingerprint"] == reference.info()["data"]["fingerprint"]


@pytest.mark.parametrize(
    "teacher, error, match",
    [
        (
            Teacher(range(95, 96), "nan"),
            TeacherOutputError,
            r"member 1 \(Teacher\).*NaN or inf.*rows 81",
        ),
        (
            Teacher(width=C + 1),
            TeacherOutputError,
            r"member 1 \(Teacher\) returned logits of shape \(20, 4\)",
        ),
    ],
)
def test_bad_teacher_output_names_member_and_rows(tmp_path, X, teacher, error, match):
    path = tmp_path / "c"
    teacher.arm(X)
    good = Teacher().arm(X)
    if teacher.width != C:  # every chunk fails; let the first member define 3 classes
        with pytest.raises(error, match=match):
            build([good, teacher], X, path, classes=[0, 1, 2])
        return
    with pytest.raises(error, match=match):
        build([good, teacher], X, path)
    partial = LogitCache.open(path, allow_incomplete=True)
    done = sorted(partial._handle.records)
    assert 2 not in done  # the chunk holding row 81
    for i in done:  # chunks finished before the error are kept, intact
        np.testing.assert_array_equal(
            np.asarray(partial[40 * i : 40 * i + 40])[:, 0], X[40 * i : 40 * i + 40] @ good.W
        )


def test_float16_overflow_is_an_error(tmp_path, X):
    with pytest.raises(TeacherOutputError, match="float16 range"):
        build(lambda b: np.full((len(b), C), 1e6, np.float32), X, tmp_path / "c", dtype="float16")


def test_class_set_mismatch_names_member(tmp_path, X):
    from sklearn.linear_model import LogisticRegression

    a = LogisticRegression().fit(X, np.arange(N) % 3)
    b = LogisticRegression().fit(X, np.arange(N) % 3 + 1)
    with pytest.raises(
        ClassMismatchError, match=r"member 1 \(LogisticRegression\) has classes \[1, 2, 3\]"
    ):
        build([a, b], X, tmp_path / "c")
    with pytest.raises(ClassMismatchError, match="label 7"):
        build(a, X, tmp_path / "d", y=np.full(N, 7))


_KILLED_BUILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import kdpipe.cache.tasks as tasks
    from kdpipe.cache import build_cache

    compute = tasks.ChunkJob.compute
    def slow(self, index, x=None):
        time.sleep(0.4)
        return compute(self, index, x)
    tasks.ChunkJob.compute = slow
    X = np.load(sys.argv[1])
    build_cache(sys.argv[2], X, sys.argv[3], backend=sys.argv[4], chunk_rows=8, batch_size=4,
                progress=False, num_workers=2)
    """
)


def test_resume_after_sigkill_equals_uninterrupted_build(tmp_path, backend, X):
    model = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.ReLU(), torch.nn.Linear(8, C))
    script_path = tmp_path / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # torch.jit is deprecated in torch >= 2.10
        torch.jit.trace(model, torch.zeros(1, D)).save(str(script_path))
    np.save(tmp_path / "x.npy", X)
    path = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_BUILD,
            str(tmp_path / "x.npy"),
            str(script_path),
            str(path),
            backend,
        ],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        deadline = time.monotonic() + 60
        while len(list((path / "done").glob("*.json"))) < 4 if (path / "done").is_dir() else True:
            assert time.monotonic() < deadline and proc.poll() is None, "build did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list((path / "done").glob("*.json")))
    assert 4 <= done < N // 8
    with pytest.raises(CacheIncompleteError):
        LogitCache.open(path)

    calls = []
    from kdpipe.cache import tasks

    compute = tasks.ChunkJob.compute  # the teachers' forward passes over one chunk, and its write

    def counted(self, index, x=None):
        calls.append(index)
        return compute(self, index, x)

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning
        )
        tasks.ChunkJob.compute = counted
        try:
            resumed = build_cache(
                str(script_path),
                X,
                path,
                backend=backend,
                chunk_rows=8,
                batch_size=4,
                progress=False,
            )
        finally:
            tasks.ChunkJob.compute = compute
        assert len(calls) == N // 8 - done
        reference = build_cache(
            str(script_path),
            X,
            tmp_path / "ref",
            backend=backend,
            chunk_rows=8,
            batch_size=4,
            progress=False,
        )
    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(reference))
    np.testing.assert_array_equal(resumed.labels, reference.labels)
    assert resumed.verify().ok
