"""Faults the cache must survive (issue 18): racing builders, damaged records and manifests,
symbolic links inside a cache, edited manifest fields.

Every expected value comes from an uninterrupted build of the same inputs, or from the
teacher's own arithmetic (``X @ W``), never from the code under test.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kdpipe
from kdpipe import errors
from kdpipe.cache import LogitCache, build_cache
from kdpipe.errors import CacheCorruptError, CacheMismatchError

# looked up when used, so that this module also runs (and shows its failures) on a kdpipe without them
CacheLockedError = getattr(errors, "CacheLockedError", CacheMismatchError)
UnsafeCacheLinkError = getattr(errors, "UnsafeCacheLinkError", CacheCorruptError)


def BuildLock(*args, **kwargs):
    from kdpipe.cache.lock import BuildLock

    return BuildLock(*args, **kwargs)


N, D, C, ROWS = 60, 4, 3, 10  # 6 chunks
REPO = Path(kdpipe.__file__).resolve().parents[1]


def _data():
    rng = np.random.default_rng(18)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(-1, C, N)
    return X, y


class Linear:
    """A picklable linear teacher ``x @ W`` with its own fingerprint; ``delay`` seconds per batch."""

    def __init__(self, seed: int, delay: float = 0.0) -> None:
        self.W = np.random.default_rng(seed).normal(size=(D, C)).astype(np.float32)
        self.delay = delay
        self.kdpipe_fingerprint = f"faults-linear-{seed}"
        self.calls: list[int] = []

    def __call__(self, batch):
        self.calls.append(len(batch))
        if self.delay:
            time.sleep(self.delay)
        return batch @ self.W


def build(teacher, X, path, **kw):
    kw.setdefault("chunk_rows", ROWS)
    kw.setdefault("batch_size", ROWS)
    return build_cache(teacher, X, path, progress=False, num_workers=1, **kw)


def snapshot(cache: LogitCache) -> dict:
    """Everything a finished cache promises, less the build's timestamps."""
    manifest = cache.manifest.to_dict()
    for key in ("created", "finished"):
        manifest.pop(key)
    return {
        "logits": np.asarray(cache).tolist(),
        "labels": cache.labels.tolist(),
        "digests": cache.row_digests.tolist(),
        "manifest": manifest,
    }


def unfinish(path: Path, *missing: int) -> None:
    """Make a finished cache look like a build killed before chunks ``missing`` were recorded."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(complete=False, chunks=[], finished=None, data_fingerprint=None)
    (path / "manifest.json").write_text(json.dumps(manifest))
    for i in missing:
        (path / "done" / f"{i:06d}.json").unlink()


# -- 1. two builders on one path -------------------------------------------------------------


def _race_worker(seed, path, barrier, results, lock_timeout):
    X, y = _data()
    teacher = Linear(seed, delay=0.03)
    kw = {} if lock_timeout == "absent" else {"lock_timeout": lock_timeout}
    barrier.wait()
    try:
        cache = build(teacher, X, path, y=y, **kw)
        ok = cache.verify().ok
        own = np.allclose(np.asarray(cache)[:, 0], X @ teacher.W, rtol=1e-6)
        results.put((seed, "built", ok and own, f"verify ok={ok}, own teacher's logits={own}"))
    except (CacheLockedError, CacheMismatchError) as exc:
        results.put((seed, type(exc).__name__, True, str(exc)))
    except Exception as exc:  # noqa: BLE001 - anything else is a failure the test reports
        results.put((seed, type(exc).__name__, False, str(exc)))


@pytest.mark.parametrize("lock_timeout", ["absent", pytest.param(30.0, marks=pytest.mark.slow)])
def test_two_builders_of_different_teachers_on_one_path(tmp_path, lock_timeout):
    """Each process gets a cache that verifies and holds its own teacher's logits, or a clear
    lock/mismatch error; exactly one builds. (Without a lock, one run here died with zarr's raw
    ContainsArrayError, its store created over the other's; issue 18 saw successes returning
    caches that failed verify or held the other teacher's logits.)"""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    path = str(tmp_path / "shared")
    procs = [
        ctx.Process(target=_race_worker, args=(seed, path, barrier, results, lock_timeout))
        for seed in (1, 2)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(good for _, _, good, _ in outcomes), outcomes
    assert sorted(kind == "built" for _, kind, _, _ in outcomes) == [False, True], outcomes
    if (
        lock_timeout == "absent"
    ):  # the default: the second fails at once, or finds the first's cache
        assert {kind for _, kind, _, _ in outcomes} <= {
            "built",
            "CacheLockedError",
            "CacheMismatchError",
        }
    else:  # it waits for the first, then refuses its cache as another teacher's
        assert {kind for _, kind, _, _ in outcomes} == {"built", "CacheMismatchError"}, outcomes
    winner = next(seed for seed, kind, _, _ in outcomes if kind == "built")
    X, _ = _data()
    cache = LogitCache.open(path)
    assert cache.verify().ok
    np.testing.assert_allclose(np.asarray(cache)[:, 0], X @ Linear(winner).W, rtol=1e-6)


def test_a_held_path_fails_at_once_naming_its_holder_or_waits_for_it(tmp_path):
    X, _ = _data()
    path = tmp_path / "c"
    holder = BuildLock(path, timeout=0)
    with holder:
        record = json.loads((path / "build.lock.json").read_text())
        assert (
            record["pid"] == os.getpid()
            and record["host"]
            and record["started"]
            and record["kdpipe"]
        )
        with pytest.raises(
            CacheLockedError,
            match=rf"process {os.getpid()} on host .* since {re.escape(record['started'])}",
        ):
            build(Linear(1), X, path)
        start = time.monotonic()
        with pytest.raises(CacheLockedError, match=r"waited 0.3 s"):
            build(Linear(1), X, path, lock_timeout=0.3)
        assert time.monotonic() - start >= 0.3
        assert sorted(p.name for p in path.iterdir()) == [
            "build.lock",
            "build.lock.json",
        ]  # nothing else written
    holder = BuildLock(path, timeout=0)
    holder.__enter__()
    threading.Timer(0.3, holder.__exit__, (None, None, None)).start()
    cache = build(Linear(1), X, path, lock_timeout=10)  # waits for the holder, then builds
    assert cache.verify().ok
    assert not (path / "build.lock.json").exists()  # the record goes with its holder


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    X, _ = _data()
    path = tmp_path / "c"
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from kdpipe.cache.lock import BuildLock
        BuildLock(Path({str(path)!r}), timeout=0).__enter__()
        os._exit(0)  # dies holding it: no release, the record stays
        """
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    dead = json.loads((path / "build.lock.json").read_text())
    assert dead["pid"] != os.getpid()
    cache = build(Linear(1), X, path)
    np.testing.assert_allclose(np.asarray(cache)[:, 0], X @ Linear(1).W, rtol=1e-6)


@pytest.mark.slow  # waits for a lease to go stale (~9 s); CI runs it (.ci/run: pytest -m slow)
def test_object_storage_lease_refused_refreshed_and_taken_over_when_stale(s3_bucket, monkeypatch):
    import s3fs

    X, _ = _data()
    url, options = s3_bucket
    path = f"{url}/leased.zarr"
    from kdpipe.cache.location import parse_location

    root = parse_location(path, options)
    from kdpipe.cache import lock as lock_module

    # LastModified has whole seconds: the lease time must exceed a refresh interval plus 1 s
    monkeypatch.setattr(lock_module, "LEASE_SECONDS", 2.0)
    with BuildLock(root, timeout=0):
        with pytest.raises(CacheLockedError, match=rf"process {os.getpid()} on host"):
            build(Linear(1), X, path, storage_options=options)
        time.sleep(3.0)  # past the lease time: only the holder's refreshes keep it
        with pytest.raises(CacheLockedError):
            build(Linear(1), X, path, storage_options=options)
    fs = s3fs.S3FileSystem(**options)
    assert not fs.exists(f"{path}/build.lock.json")  # released
    # a dead holder's lease: written once, never refreshed
    fs.pipe_file(
        f"{path}/build.lock.json",
        json.dumps({"pid": 1, "host": "gone", "started": "then"}).encode(),
    )
    with pytest.raises(CacheLockedError, match="process 1 on host gone since then"):
        build(Linear(1), X, path, storage_options=options)
    time.sleep(3.2)
    cache = build(Linear(1), X, path, storage_options=options)
    assert cache.verify().ok
    np.testing.assert_allclose(np.asarray(cache)[:, 0], X @ Linear(1).W, rtol=1e-6)


# -- 5. damaged records and manifests ------------------------------------------------------


def test_damaged_records_mean_recompute_and_the_rerun_equals_the_uninterrupted_build(
    tmp_path, backend
):
    X, y = _data()
    expected = snapshot(build(Linear(1), X, tmp_path / "reference", y=y, backend=backend))
    path = tmp_path / "c"
    build(Linear(1), X, path, y=y, backend=backend)
    unfinish(path, 4)
    (path / "done" / "000001.json").write_bytes(b"")  # zero length: a crash or a full disk
    (path / "done" / "000002.json").write_bytes(b'{"index": 2, "sta')  # cut short
    (path / "done" / "000003.json").write_text(
        json.dumps({"index": 5})
    )  # decodes, claims nothing sound
    teacher = Linear(1)
    resumed = build(teacher, X, path, y=y, backend=backend)
    assert len(teacher.calls) == 4  # chunks 1, 2, 3 and 4, one batch each; 0 and 5 were kept
    assert resumed.verify().ok
    assert snapshot(resumed) == expected


@pytest.mark.parametrize("finished", [True, False])
def test_a_damaged_manifest_is_recovered_from_its_initial_copy(tmp_path, finished):
    X, y = _data()
    expected = snapshot(build(Linear(1), X, tmp_path / "reference", y=y))
    path = tmp_path / "c"
    build(Linear(1), X, path, y=y)
    if not finished:
        unfinish(path, 2)
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])  # undecodable
    with pytest.raises(CacheCorruptError, match="cannot decode the manifest"):
        LogitCache.open(path)  # readers do not repair
    with pytest.raises(CacheMismatchError, match="teacher 0"):
        build(Linear(2), X, path, y=y)  # the copy still says which teacher made it
    teacher = Linear(1)
    resumed = build(teacher, X, path, y=y)
    assert len(teacher.calls) == (0 if finished else 1)
    assert resumed.verify().ok
    assert snapshot(resumed) == expected
    # no intact copy: refused, and overwrite=True is named
    (path / "manifest.json").write_text("{")
    (path / "manifest.initial.json").write_text("")
    with pytest.raises(CacheCorruptError, match="no intact manifest.initial.json.*overwrite=True"):
        build(Linear(1), X, path, y=y)


# -- 6. symbolic links inside a cache ------------------------------------------------------


def _tree(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("link", ["done", "logits.zarr/labels", "manifest.json"])
def test_a_symbolic_link_inside_a_cache_is_refused_and_nothing_goes_through_it(tmp_path, link):
    X, y = _data()
    path = tmp_path / "c"
    build(Linear(1), X, path, y=y)
    unfinish(path, 1, 4)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / Path(link).name
    shutil.move(path / link, target)
    (path / link).symlink_to(target, target_is_directory=target.is_dir())
    before = _tree(outside)
    with pytest.raises(
        UnsafeCacheLinkError,
        match=rf"{re.escape(str(path / link))} inside the cache .* is a symbolic link",
    ):
        build(Linear(1), X, path, y=y)
    with pytest.raises(UnsafeCacheLinkError, match="symbolic link"):
        build(Linear(1), X, path, y=y, overwrite=True)
    assert _tree(outside) == before  # nothing written, nothing deleted there
    assert (path / link).is_symlink()


# -- 7. manifest fields are checked ----------------------------------------------------------


def _set(manifest: dict, field: str, value) -> None:
    manifest[field] = value


EDITS = {
    "n_rows larger": (lambda m: (_set(m, "n_rows", 70), _set(m, "data_shape", [70, D])), "n_rows"),
    "n_rows smaller": (lambda m: (_set(m, "n_rows", 55), _set(m, "data_shape", [55, D])), "n_rows"),
    "n_rows negative": (lambda m: _set(m, "n_rows", -5), "n_rows"),
    "n_rows not data_shape": (lambda m: _set(m, "n_rows", 59), "n_rows"),
    "chunk_rows zero": (lambda m: _set(m, "chunk_rows", 0), "chunk_rows"),
    "chunk_rows other": (lambda m: _set(m, "chunk_rows", 12), "chunk_rows"),
    "chunk_rows text": (lambda m: _set(m, "chunk_rows", "10"), "chunk_rows"),
    "dtype float16": (lambda m: _set(m, "dtype", "float16"), "dtype"),
    "dtype nonsense": (lambda m: _set(m, "dtype", "int8"), "dtype"),
    "backend": (lambda m: _set(m, "backend", "parquet"), "backend"),
    "one class more": (lambda m: m["classes"]["values"].append(C), "classes"),
    "repeated class": (lambda m: _set(m["classes"], "values", [0, 0, 1]), "classes"),
    "no classes": (lambda m: _set(m["classes"], "values", []), "classes"),
    "a member more": (lambda m: m["teachers"].append(m["teachers"][0]), "teachers"),
    "no members": (lambda m: _set(m, "teachers", []), "teachers"),
    "data_dtype": (lambda m: _set(m, "data_dtype", "<q9"), "data_dtype"),
    "a record lost": (lambda m: m["chunks"].pop(), "chunks"),
    "a record moved": (lambda m: m["chunks"][2].update(start=21), "chunks"),
    "complete text": (lambda m: _set(m, "complete", "yes"), "complete"),
    "not a manifest": (lambda m: m.clear(), "cannot decode"),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    X, y = _data()
    root = tmp_path_factory.mktemp("pristine")
    return {b: build(Linear(1), X, root / b, y=y, backend=b).path for b in ("zarr", "hdf5")}


# edits that only the stores can expose run on both backends; the rest are the manifest's own checks
STORE_EDITS = {
    "n_rows larger",
    "n_rows smaller",
    "dtype float16",
    "one class more",
    "a member more",
}


@pytest.mark.parametrize(
    "backend, edit",
    [("zarr", e) for e in sorted(EDITS)] + [("hdf5", e) for e in sorted(STORE_EDITS)],
)
def test_an_edited_manifest_field_is_corrupt_naming_the_field(tmp_path, pristine, backend, edit):
    change, field = EDITS[edit]
    path = tmp_path / "c"
    shutil.copytree(pristine[backend], path)
    # an edit only the stores can expose is made to the initial copy too, which would
    # expose it first (see the next test)
    names = ["manifest.json", "manifest.initial.json"] if edit in STORE_EDITS else ["manifest.json"]
    for name in names:
        manifest = json.loads((path / name).read_text())
        change(manifest)
        (path / name).write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError, match=field):
        LogitCache.open(path).verify()
