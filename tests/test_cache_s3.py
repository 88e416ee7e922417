"""Logit caches in object storage: a real S3 endpoint (moto's server on 127.0.0.1).

Every promise of a local cache holds in a bucket: the same values, chunk data before its
completion record before the manifest, each object written once, resume after a killed
build (only missing chunks computed), corruption and deleted objects caught on read and
by ``verify``, other teachers and data refused, secrets never written. URLs without
their package, and URL look-alikes, fail before anything is created.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from kdpipe.cache import LogitCache, build_cache, durable, lock
from kdpipe.cache.location import RemotePath, parse_location, redact
from kdpipe.errors import (
    CacheChunkMissingError,
    CacheCorruptError,
    CacheLockedError,
    CacheMismatchError,
    CacheNotFoundError,
    InputError,
    MissingDependencyError,
)

s3fs = pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parents[1]
N, D, C, ROWS = 60, 4, 3, 10  # 6 chunks


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N, D)).astype(np.float32)
    W = rng.normal(size=(D, C)).astype(np.float32)
    y = rng.integers(-1, C, N)
    return X, y, W


def counting_teacher(W, calls):
    """A linear teacher with a strong fingerprint; ``calls`` counts its batches."""

    def teacher(batch):
        calls.append(len(batch))
        return batch @ W

    teacher.kdpipe_fingerprint = "s3-test-linear"
    return teacher


def fs_of(options):
    return s3fs.S3FileSystem(**options)


def test_round_trip_equals_a_local_cache(tmp_path, data, s3_bucket):
    X, y, W = data
    url, options = s3_bucket
    kw = dict(y=y, chunk_rows=ROWS, batch_size=4, progress=False)
    local = build_cache(counting_teacher(W, []), X, tmp_path / "local", **kw)
    remote = build_cache(
        counting_teacher(W, []), X, f"{url}/runs/a.zarr", storage_options=options, **kw
    )
    assert isinstance(remote.path, RemotePath) and str(remote.path) == f"{url}/runs/a.zarr"
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    np.testing.assert_allclose(np.asarray(remote)[:, 0], X @ W, rtol=1e-6)
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.info()["data"]["fingerprint"] == local.info()["data"]["fingerprint"]
    assert remote.verify().ok
    reopened = LogitCache.open(f"{url}/runs/a.zarr", storage_options=options)
    rows = np.array([57, 3, 3, 30])
    np.testing.assert_array_equal(np.asarray(reopened[rows]), np.asarray(local)[rows])
    # a bucket prefix that holds no cache
    with pytest.raises(CacheNotFoundError, match="no manifest.json"):
        LogitCache.open(f"{url}/runs/none.zarr", storage_options=options)
    assert not (Path.cwd() / "s3:").exists()


def test_a_low_rank_cache_and_its_basis_round_trip_and_a_damaged_basis_is_caught(
    tmp_path, data, s3_bucket
):
    from kdpipe.cache import LowRank
    from kdpipe.cache.lowrank import BASIS_NAME

    X, y, W = data
    url, options = s3_bucket
    kw = dict(y=y, chunk_rows=ROWS, batch_size=4, progress=False, sparse=LowRank(2))
    local = build_cache(counting_teacher(W, []), X, tmp_path / "local", **kw)
    where = f"{url}/runs/lowrank.zarr"
    remote = build_cache(counting_teacher(W, []), X, where, storage_options=options, **kw)
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    assert remote.verify().ok
    fs = fs_of(options)
    key = f"{where.removeprefix('s3://')}/{BASIS_NAME}"
    assert fs.cat_file(key) == (local.path / BASIS_NAME).read_bytes()
    fs.pipe_file(key, b"\x93NUMPY damaged")
    with pytest.raises(CacheCorruptError, match="fails its checksum"):
        np.asarray(LogitCache.open(where, storage_options=options))


def test_a_pickled_view_is_the_url_and_rows_never_data(data, s3_bucket):
    X, _y, W = data
    url, options = s3_bucket
    cache = build_cache(
        counting_teacher(W, []),
        X,
        f"{url}/p.zarr",
        storage_options=options,
        chunk_rows=ROWS,
        progress=False,
    )
    rows = np.arange(0, N, 2)
    view = cache[rows]
    blob = pickle.dumps(view)
    assert b"s3-test-linear" not in blob  # not even the manifest
    assert len(blob) < 1500 + rows.nbytes  # the URL, the options and the rows: no logits
    copy = pickle.loads(blob)
    assert str(copy.path) == f"{url}/p.zarr"
    np.testing.assert_array_equal(np.asarray(copy), np.asarray(cache)[rows])


def test_secrets_in_storage_options_are_never_written_or_printed(data, s3_bucket):
    X, _y, W = data
    url, options = s3_bucket
    secret = "kdpipe-test-secret"  # the credentials the server accepts, here given as options
    options = {**options, "key": "kdpipe-test-key", "secret": secret}
    cache = build_cache(
        counting_teacher(W, []),
        X,
        f"{url}/s.zarr",
        storage_options=options,
        chunk_rows=ROWS,
        progress=False,
    )
    fs = fs_of(options)
    for key in fs.find(f"{url}/s.zarr"):
        assert secret.encode() not in fs.cat_file(key), key
    shown = [
        repr(cache),
        str(cache.path),
        repr(cache.path),
        json.dumps(cache.info()),
        str(cache.verify()),
    ]
    assert not any(secret in text for text in shown)
    assert "***" in repr(cache.path)
    assert redact(
        {"client_kwargs": {"aws_secret_access_key": "s"}, "token": "t", "anon": False}
    ) == {"client_kwargs": {"aws_secret_access_key": "***"}, "token": "***", "anon": False}


def test_chunk_data_then_its_record_then_the_manifest_each_object_once(
    data, s3_bucket, monkeypatch
):
    X, y, W = data
    url, options = s3_bucket
    steps: list[tuple[str, str]] = []
    previous = durable.set_write_hook(lambda step, path: steps.append((step, path)))
    try:
        build_cache(
            counting_teacher(W, []),
            X,
            f"{url}/o.zarr",
            y=y,
            storage_options=options,
            chunk_rows=ROWS,
            progress=False,
            num_workers=2,
        )
    finally:
        durable.set_write_hook(previous)
    puts = [path for step, path in steps if step == "put"]
    assert all(path.startswith(f"{url}/o.zarr/") for path in puts)
    manifest = f"{url}/o.zarr/manifest.json"
    assert puts.count(manifest) == 2 and puts[-1] == manifest  # initialized first, finished last
    chunk_puts = [p for p in puts if p != manifest]
    assert len(chunk_puts) == len(set(chunk_puts))  # no object written twice
    for i in range(N // ROWS):
        data_at = [
            k for k, p in enumerate(puts) if re.search(rf"/logits.zarr/\w+/c/{i}(/0/0)?$", p)
        ]
        record_at = puts.index(f"{url}/o.zarr/done/{i:06d}.json")
        assert len(data_at) == 3 and max(data_at) < record_at < len(puts) - 1


def test_corrupt_and_deleted_objects_raise_show_in_verify_and_are_rebuilt(data, s3_bucket):
    X, y, W = data
    url, options = s3_bucket
    path = f"{url}/c.zarr"
    kw = dict(y=y, storage_options=options, chunk_rows=ROWS, batch_size=ROWS, progress=False)
    expected = np.asarray(build_cache(counting_teacher(W, []), X, path, **kw))
    fs = fs_of(options)
    key = f"{path}/logits.zarr/logits/c/1/0/0"
    blob = bytearray(fs.cat_file(key))
    blob[len(blob) // 2] ^= 0x01  # one bit of one logit
    fs.pipe_file(key, bytes(blob))
    fs.rm_file(f"{path}/logits.zarr/labels/c/4")

    cache = LogitCache.open(path, storage_options=options)
    with pytest.raises(CacheCorruptError, match="chunk 1"):
        np.asarray(cache[ROWS : 2 * ROWS])
    with pytest.raises(CacheChunkMissingError, match="chunk 4"):
        _ = cache.labels
    report = cache.verify()
    assert not report.ok and report.status == "FAILED"
    assert {(p.index, p.kind) for p in report.problems} == {(1, "corrupt"), (4, "missing")}

    calls: list[int] = []
    rebuilt = build_cache(counting_teacher(W, calls), X, path, **kw)
    assert calls == [ROWS, ROWS]  # chunks 1 and 4 only, one batch each
    assert rebuilt.verify().ok
    np.testing.assert_array_equal(np.asarray(rebuilt), expected)


def test_another_teacher_or_other_data_is_refused(data, s3_bucket):
    X, _y, W = data
    url, options = s3_bucket
    path = f"{url}/r.zarr"
    kw = dict(storage_options=options, chunk_rows=ROWS, progress=False)
    build_cache(counting_teacher(W, []), X, path, **kw)
    other = counting_teacher(W + 1, [])
    other.kdpipe_fingerprint = "another-teacher"
    with pytest.raises(CacheMismatchError, match="teacher 0"):
        build_cache(other, X, path, **kw)
    changed = X.copy()
    changed[13, 0] += 1
    with pytest.raises(CacheMismatchError, match="input rows 10-19"):
        build_cache(counting_teacher(W, []), changed, path, **kw)
    assert LogitCache.open(path, storage_options=options).verify().ok


_KILLED_BUILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from kdpipe.cache import build_cache

    folder, url, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    X, y, W = (np.load(f"{folder}/{name}.npy") for name in ("X", "y", "W"))

    def teacher(batch):
        time.sleep(0.1)  # slow enough to be killed between chunks
        return batch @ W

    teacher.kdpipe_fingerprint = "s3-test-linear"
    build_cache(teacher, X, url, y=y, storage_options=options, chunk_rows=%(rows)d, batch_size=%(rows)d,
                progress=False, num_workers=1)
    """  # noqa: UP031 (% leaves the script's own {} braces alone)
    % {"rows": ROWS}
)


@pytest.mark.slow  # a build killed and resumed in a bucket (~11 s; the local variant runs in the quick suite); CI runs it (.ci/run: pytest -m slow)
def test_a_build_killed_with_sigkill_resumes_computing_only_missing_chunks(
    tmp_path, data, s3_bucket, monkeypatch
):
    X, y, W = data
    url, options = s3_bucket
    path = f"{url}/k.zarr"
    for name, array in (("X", X), ("y", y), ("W", W)):
        np.save(tmp_path / f"{name}.npy", array)
    fs = fs_of(options)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BUILD, str(tmp_path), path, json.dumps(options)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            fs.invalidate_cache()
            if len(fs.glob(f"{path}/done/*.json")) >= 2:
                break
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    fs.invalidate_cache()
    done = len(fs.glob(f"{path}/done/*.json"))
    assert 2 <= done < N // ROWS
    with pytest.raises(Exception, match="not finished"):
        LogitCache.open(path, storage_options=options)

    # the killed build's lease is still in the bucket: refused until it goes stale (kdpipe.cache.lock),
    # here after 2 s instead of 60 (a refresh interval plus LastModified's whole second below it)
    with pytest.raises(CacheLockedError, match=f"process {child.pid} on host"):
        build_cache(
            counting_teacher(W, []),
            X,
            path,
            y=y,
            storage_options=options,
            chunk_rows=ROWS,
            batch_size=ROWS,
            progress=False,
        )
    monkeypatch.setattr(lock, "LEASE_SECONDS", 2.0)
    calls: list[int] = []
    resumed = build_cache(
        counting_teacher(W, calls),
        X,
        path,
        y=y,
        storage_options=options,
        chunk_rows=ROWS,
        batch_size=ROWS,
        progress=False,
        lock_timeout=30,
    )
    assert len(calls) == N // ROWS - done  # one batch per missing chunk, none for the others
    reference = build_cache(
        counting_teacher(W, []),
        X,
        tmp_path / "whole",
        y=y,
        chunk_rows=ROWS,
        batch_size=ROWS,
        progress=False,
    )
    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(reference))
    np.testing.assert_array_equal(resumed.labels, reference.labels)
    assert resumed.verify().ok


def test_url_without_its_package_is_one_clear_error_and_creates_nothing(
    data, tmp_path, monkeypatch
):
    X, _y, W = data
    monkeypatch.chdir(tmp_path)
    registry = sys.modules["fsspec.registry"]._registry
    monkeypatch.delitem(registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now fails
    with pytest.raises(MissingDependencyError, match=r"s3fs.*pip install 'kdpipe\[s3\]'"):
        build_cache(counting_teacher(W, []), X, "s3://bucket/run.zarr", progress=False)
    with pytest.raises(MissingDependencyError, match="s3fs"):
        LogitCache.open("s3://bucket/run.zarr")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path", ["s3:bucket/run.zarr", Path("s3://bucket/run.zarr"), "s3:/bucket/run.zarr"]
)
def test_url_look_alikes_are_refused_before_a_local_folder_exists(
    data, tmp_path, monkeypatch, path
):
    X, _y, W = data
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="starts like a URL"):
        build_cache(counting_teacher(W, []), X, path, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert parse_location("file://" + str(tmp_path / "x")) == tmp_path / "x"


def test_hdf5_at_a_url_says_to_use_zarr(data, tmp_path, monkeypatch):
    X, _y, W = data
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="backend='zarr'"):
        build_cache(counting_teacher(W, []), X, "s3://bucket/run", backend="hdf5", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_command_line_builds_reads_and_verifies_a_bucket(
    data, tmp_path, s3_bucket, capsys, monkeypatch
):
    import joblib
    from sklearn.linear_model import LogisticRegression

    from kdpipe.cli import main

    X, y, _W = data
    url, options = s3_bucket
    teacher = tmp_path / "teacher.joblib"
    joblib.dump(LogisticRegression().fit(X, np.abs(y)), teacher)
    np.save(tmp_path / "X.npy", X)
    monkeypatch.setenv(
        "AWS_ENDPOINT_URL", options["endpoint_url"]
    )  # the endpoint, from the environment
    path = f"{url}/cli.zarr"
    assert (
        main(
            [
                "build-cache",
                str(teacher),
                "--data",
                str(tmp_path / "X.npy"),
                "-o",
                path,
                "--quiet",
                "--trust-pickled-teachers",
            ]
        )
        == 0
    )  # a pickle this test wrote
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    endpoint = ["--storage-option", f"endpoint_url={options['endpoint_url']}"]
    assert main(["info", path, *endpoint]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == path and info["complete"] and info["bytes_on_disk"] > 0
    assert main(["verify", path, *endpoint]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", path, "--storage-option", "secret=abc"]) == 2
    assert "credential" in capsys.readouterr().err
    assert main(["info", path, "--storage-option", "no-equals-sign"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err

    import zarr  # a .zarr transfer set in the bucket: the workers of a cluster could read it too

    group = zarr.open_group(
        parse_location(f"{url}/data.zarr", options).zarr_store(read_only=False), mode="w"
    )
    group.create_array("x", shape=X.shape, chunks=(16, D), dtype=X.dtype)[...] = X
    assert (
        main(
            [
                "build-cache",
                str(teacher),
                "--data",
                f"{url}/data.zarr",
                "--dataset",
                "x",
                "-o",
                f"{url}/z.zarr",
                *endpoint,
                "--quiet",
                "--trust-pickled-teachers",
            ]
        )
        == 0
    )
    remote_x = LogitCache.open(f"{url}/z.zarr", storage_options=options)
    np.testing.assert_array_equal(
        np.asarray(remote_x), np.asarray(LogitCache.open(path, storage_options=options))
    )
    assert (
        main(
            [
                "build-cache",
                str(teacher),
                "--data",
                str(tmp_path / "X.npy"),
                "-o",
                f"{url}/h",
                "--backend",
                "hdf5",
                *endpoint,
                "--quiet",
                "--trust-pickled-teachers",
            ]
        )
        == 1
    )
    assert "Use backend='zarr'" in capsys.readouterr().err


def test_a_sparse_cache_in_a_bucket_reads_and_trains_as_the_local_one(tmp_path, data, s3_bucket):
    from kdpipe import DistilledClassifier, TopK

    X, y, W = data
    url, options = s3_bucket
    kw = dict(y=y, chunk_rows=ROWS, batch_size=4, progress=False, sparse=TopK(k=2))
    local = build_cache(counting_teacher(W, []), X, tmp_path / "sparse", **kw)
    remote = build_cache(
        counting_teacher(W, []), X, f"{url}/sparse.zarr", storage_options=options, **kw
    )
    reopened = LogitCache.open(f"{url}/sparse.zarr", storage_options=options)
    assert type(reopened) is type(local) and reopened.info()["format"] == local.info()["format"]
    rows = np.array([59, 0, 31, 31])
    a, b = local.read_rows(rows), reopened.read_rows(rows)
    for field in ("values", "indices", "tail_max", "tail_mean", "tail_lse", "tail_slope"):
        np.testing.assert_array_equal(np.asarray(getattr(b, field)), np.asarray(getattr(a, field)))
    assert remote.verify().ok
    fitted = [
        DistilledClassifier(hidden_layer_sizes=(8,), max_epochs=2, random_state=0, device="cpu")
        .fit(X, y, teacher_logits=cache)
        .predict_proba(X)
        for cache in (local, pickle.loads(pickle.dumps(reopened)))
    ]
    np.testing.assert_array_equal(fitted[1], fitted[0])
