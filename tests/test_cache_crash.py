"""A build killed at every single write step resumes (or rebuilds) to the uninterrupted result.

A helper process imports kdpipe once, then forks one child per step ``k``; the child
builds a small cache with a write hook that ends it with ``os._exit`` just before step
``k`` (a chunk data write, an fsync, a rename, a folder fsync, the store's creation, a
completion record, a manifest write...). It never runs the build itself, so no thread
(zarr's event loop) exists when it forks. This process then resumes each crashed folder
and, separately, rebuilds it with ``overwrite=True``.

``os.fsync`` is a no-op in both processes: a process that dies keeps its writes in the
page cache, so syncing changes nothing this test can see, and it would cost most of its
time. The fsync *steps* are still crash points (the hook runs before each).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import PurePath

import numpy as np
import pytest

import kdpipe
from kdpipe.cache import LogitCache, build_cache
from kdpipe.errors import CacheIncompleteError, CacheNotFoundError

N, D, C, ROWS = 30, 3, 4, 10  # 3 chunks
CRASHED = 86  # exit status of a child ended by the hook

_CRASHER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from kdpipe.cache import durable
    from kdpipe.cache.build import build_cache
    import zarr, zarr.codecs, h5py  # imported once here, not in every child
    from kdpipe.cache import build
    build._versions()  # looked up once here too (cached), not in every child

    os.fsync = lambda fd: None  # see the module docstring
    X, y, W = (np.load(os.path.join(sys.argv[1], f"{name}.npy")) for name in ("X", "y", "W"))
    backend, out, sparse, views = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])

    def teacher(batch):
        return batch @ W

    teacher.kdpipe_fingerprint = "crash-test-linear"

    def jitter(batch, generator):
        import torch
        return torch.roll(batch, int(torch.randint(0, 3, (1,), generator=generator)), dims=1)

    if views is not None:
        import torch  # imported once here, not in every child
        from kdpipe import Views
        from kdpipe.augment import Function
        views = Views(count=views["count"], augment=Function(jitter, version="crash-jitter"), seed=views["seed"])

    def run(path, hook):
        pid = os.fork()
        if pid == 0:
            durable.set_write_hook(hook)
            build_cache(teacher, X, path, y=y, backend=backend, chunk_rows=%(rows)d, batch_size=4,
                        progress=False, num_workers=1, sparse=sparse, views=views)
            os._exit(0)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    log = os.path.join(out, "steps.txt")

    def record(step, path):
        with open(log, "a") as f:
            f.write(f"{step} {os.path.relpath(path, out)}\\n")

    assert run(os.path.join(out, "full"), record) == 0
    with open(log) as f:
        steps = f.read().splitlines()
    codes = []
    for k in range(1, len(steps) + 1):
        count = [0]

        def crash(step, path, k=k):
            count[0] += 1
            if count[0] == k:
                os._exit(%(crashed)d)

        codes.append(run(os.path.join(out, f"crash{k}"), crash))
    print(json.dumps({"steps": steps, "codes": codes}))
    """  # noqa: UP031 (% leaves the script's own {} braces alone)
    % {"rows": ROWS, "crashed": CRASHED}
)


def teacher_like_the_crasher(W):
    def teacher(batch):
        return batch @ W

    teacher.kdpipe_fingerprint = "crash-test-linear"
    teacher.__qualname__ = "teacher"  # the name recorded in the manifest, as in the helper
    return teacher


def jitter_views(views):
    """The views of the crash helper's builds: each row rolled by 0-2 places, per view."""
    if views is None:
        return None
    import torch

    from kdpipe import Views
    from kdpipe.augment import Function

    def jitter(batch, generator):
        return torch.roll(batch, int(torch.randint(0, 3, (1,), generator=generator)), dims=1)

    return Views(
        count=views["count"], augment=Function(jitter, version="crash-jitter"), seed=views["seed"]
    )


def snapshot(cache: LogitCache) -> dict:
    """Everything a finished cache promises, less the build's timestamps."""
    manifest = cache.manifest.to_dict()
    for key in ("created", "finished"):
        manifest.pop(key)
    if cache.manifest.views is not None:  # every view's logits and input digests
        from kdpipe.cache.views import comparable

        manifest["views"] = comparable(manifest["views"])  # the jitter's name: where it was defined
        rows = np.repeat(np.arange(len(cache)), cache.n_views)
        views = np.tile(np.arange(cache.n_views), len(cache))
        return {
            "logits": cache.read_views(rows, views).tolist(),
            "view_digests": cache.view_digests.tolist(),
            "labels": cache.labels.tolist(),
            "digests": cache.row_digests.tolist(),
            "manifest": manifest,
        }
    if cache.manifest.sparse is None or cache.manifest.sparse["kind"] == "lowrank":
        logits = np.asarray(cache).tolist()  # a low-rank cache decodes to logits
    else:  # a sparse cache holds records, not logits
        targets = cache.read_rows(np.arange(len(cache)))
        logits = [getattr(targets, name).tolist() for name in targets._arrays]
    return {
        "logits": logits,
        "labels": cache.labels.tolist(),
        "digests": cache.row_digests.tolist(),
        "manifest": manifest,
    }


@pytest.mark.parametrize(
    "backend, sparse, views",
    [
        ("zarr", None, None),
        # the other stores and formats take the same write steps (~20 s each): CI runs them
        # with the slow tests (.ci/run: pytest -m slow)
        pytest.param("hdf5", None, None, marks=pytest.mark.slow),
        pytest.param(
            "zarr", {"kind": "topk", "k": 2, "temperatures": [2.0]}, None, marks=pytest.mark.slow
        ),
        pytest.param("zarr", None, {"count": 3, "seed": 5}, marks=pytest.mark.slow),
        pytest.param(  # its basis is one more file, written before the manifest
            "zarr", {"kind": "lowrank", "rank": 2, "fit_rows": 10}, None, marks=pytest.mark.slow
        ),
    ],
)
def test_crash_at_every_write_step_resumes_to_the_uninterrupted_build(
    tmp_path, backend, sparse, views, monkeypatch
):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # see the module docstring
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(-1, C, N)
    W = rng.normal(size=(D, C)).astype(np.float32)
    for name, array in (("X", X), ("y", y), ("W", W)):
        np.save(tmp_path / f"{name}.npy", array)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CRASHER,
            str(tmp_path),
            backend,
            str(out),
            json.dumps(sparse),
            json.dumps(views),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            **os.environ,
            "PYTHONWARNINGS": "error",
            "PYTHONPATH": os.path.dirname(os.path.dirname(kdpipe.__file__)),
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    steps, codes = result["steps"], result["codes"]
    assert codes == [CRASHED] * len(steps)  # every child died at its step, none finished
    kinds = Counter(step.split()[0] for step in steps)
    # the whole write path is covered: each chunk's data and record, the manifest twice
    assert {"mkdir", "create-store", "write", "fsync", "rename", "fsync-dir"} <= set(kinds)
    assert sum(s.startswith("rename") and s.endswith("/manifest.json") for s in steps) == 2
    assert sum(s.startswith("rename") and "/done/" in s for s in steps) == N // ROWS
    for i, step in enumerate(
        steps
    ):  # durability order: data synced before it is named, names synced
        kind, where = step.split(" ", 1)
        if kind == "write":
            assert steps[i + 1] == f"fsync {where}", steps[i : i + 2]
        if kind == "rename":
            synced = steps[i - 1].split(" ", 1)
            assert synced[0] == "fsync" and PurePath(synced[1]).name.startswith(
                f".{PurePath(where).name}."
            ), step
            assert steps[i + 1] == f"fsync-dir {PurePath(where).parent}", steps[i : i + 2]
    print(f"{backend}: {len(steps)} crash points: {dict(kinds)}")

    teacher = teacher_like_the_crasher(W)
    kw = dict(
        y=y,
        backend=backend,
        chunk_rows=ROWS,
        batch_size=4,
        progress=False,
        num_workers=1,
        sparse=sparse,
        views=jitter_views(views),
    )
    expected = snapshot(build_cache(teacher, X, tmp_path / "reference", **kw))
    checked = range(1, len(steps) + 1)
    if sparse is not None or views is not None:
        # a sparse (or views) build writes its records through the same steps (asserted above) as a dense
        # one, whose resumes are checked at every step: here every third, and the last, keep
        # the suite within its time
        checked = sorted({*range(1, len(steps) + 1, 3 if views is None else 7), len(steps)})
    for k in checked:
        crashed = out / f"crash{k}"
        where = f"crash before step {k} ({steps[k - 1]})"
        try:  # what a crash leaves is never corrupt: unfinished, or finished
            report = LogitCache.open(crashed, allow_incomplete=True).verify()
            assert report.status in ("OK", "INCOMPLETE") and not report.problems, (
                f"{where}: {report}"
            )
        except (CacheNotFoundError, CacheIncompleteError):
            pass
        resumed_path = tmp_path / f"resumed{k}"
        if crashed.exists():  # a crash before the first mkdir leaves nothing
            shutil.copytree(crashed, resumed_path)
        resumed = build_cache(teacher, X, resumed_path, **kw)
        assert resumed.verify().ok, where
        assert snapshot(resumed) == expected, where
        rebuilt = build_cache(teacher, X, crashed, overwrite=True, **kw)
        assert rebuilt.verify().ok, where
        assert snapshot(rebuilt) == expected, where
        assert not [p for p in resumed_path.rglob("*.tmp")], (
            f"{where}: temp files left after the resume"
        )
