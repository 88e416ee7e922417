"""A full disk during a build (issue 18): an ``OSError`` naming it, never a crash, and
nothing written is lost: after space is freed the same call resumes to a cache that verifies.

The disk is a small tmpfs mounted for the test (needs root and ``mount``; skipped where
mounting is not possible) and unmounted after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kdpipe.cache import LogitCache, build_cache
from kdpipe.cache.manifest import RECORDS_DIR

ROOT = Path(__file__).resolve().parents[1]
ROWS, D, C, CHUNK = (
    4000,
    8,
    100,
    500,
)  # a chunk's HDF5 file is ~217 KB: the third does not fit in 512 KiB


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs at ``tmp_path / "disk"``; yields a function that resizes it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True, timeout=30)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30, check=False)


def _inputs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, D)).astype(np.float32)
    W = rng.normal(size=(D, C)).astype(np.float32)
    return X, W


def _teacher(W):
    return lambda batch: np.asarray(batch, dtype=np.float32) @ W


_CHILD = textwrap.dedent(
    """
    import errno, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_cache_disk_full import _inputs, _teacher, CHUNK
    from kdpipe.cache import build_cache
    X, W = _inputs()
    try:
        build_cache(_teacher(W), X, {out!r}, backend={backend!r}, chunk_rows=CHUNK, progress=False,
                    teacher_versions="w0")
    except OSError as exc:
        print("OSError", exc.errno == errno.ENOSPC, exc)
        sys.exit(3)
    print("built")
    """
)


@pytest.mark.parametrize("backend", ["hdf5"])  # zarr writes through Python already
def test_full_disk_is_an_oserror_and_the_rerun_resumes_to_the_same_cache(
    small_disk, backend, tmp_path
):
    mount, resize = small_disk
    out = mount / "cache"
    code = _CHILD.format(tests=str(ROOT / "tests"), out=str(out), backend=backend)
    child = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    # before the fix, libhdf5 segfaulted here (returncode -11) after "errno = 28"
    assert child.returncode == 3, (child.returncode, child.stdout, child.stderr[-2000:])
    assert child.stdout.startswith("OSError True") and "No space left on device" in child.stdout
    records = {p.name: p.stat().st_mtime_ns for p in (out / RECORDS_DIR).glob("*.json")}
    assert 1 <= len(records) < ROWS // CHUNK  # some chunks finished before the disk filled up
    assert not [p for p in out.rglob(".*.tmp")], "a temp file was left on the full disk"

    resize("8m")
    X, W = _inputs()
    cache = build_cache(
        _teacher(W),
        X,
        out,
        backend=backend,
        chunk_rows=CHUNK,
        progress=False,
        teacher_versions="w0",
    )
    assert cache.verify().ok
    kept = {p.name: p.stat().st_mtime_ns for p in (out / RECORDS_DIR).glob("*.json")}
    assert {
        name: kept[name] for name in records
    } == records  # finished chunks were kept, not recomputed
    np.testing.assert_allclose(np.asarray(LogitCache.open(out))[:, 0], X @ W, rtol=1e-6, atol=1e-5)
