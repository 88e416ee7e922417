"""Logit cache built on a dask.distributed cluster equals the in-process build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdpipe.cache import LowRank, build_cache

distributed = pytest.importorskip("distributed")


@pytest.mark.parametrize(
    "backend, processes, sparse",
    [
        ("zarr", False, None),
        ("hdf5", False, None),
        ("zarr", True, None),
        ("zarr", True, LowRank(2, fit_rows=40)),  # each worker process reads the basis
    ],
)
def test_cluster_build_equals_threaded_build(tmp_path, backend, processes, sparse):
    """Threads or worker processes: the same values, labels and fingerprint.

    In worker processes the job and each chunk's rows are pickled; unpickled rows may
    lie off a 16-byte boundary, which changed MKL's last bits until batches were
    realigned (``teachers._torch_forward``).
    """
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 6)).astype(np.float32)
    y = rng.integers(-1, 3, 150)
    torch.manual_seed(1)
    hidden = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    members = [hidden, torch.nn.Linear(6, 3)]
    kw = dict(y=y, backend=backend, chunk_rows=32, batch_size=16, progress=False, sparse=sparse)
    local = build_cache(members, X, tmp_path / "local", num_workers=2, **kw)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = build_cache(members, X, tmp_path / "remote", client=client, **kw)
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.info()["data"]["fingerprint"] == local.info()["data"]["fingerprint"]
    assert remote.verify().ok


class _KillsItsWorkerOnce:
    """A teacher (logits ``x @ W``) that SIGKILLs the worker process running it the first
    time it sees row ``kill_row`` (column 0 of X holds the row number), outside the driver."""

    def __init__(self, W: np.ndarray, kill_row: int, marker: str, driver_pid: int) -> None:
        self.W, self.kill_row, self.marker, self.driver_pid = W, kill_row, marker, driver_pid
        self.kdpipe_fingerprint = "kills-once-v1"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import os
        import signal
        from pathlib import Path

        if (
            os.getpid() != self.driver_pid
            and self.kill_row in batch[:, 0]
            and not Path(self.marker).exists()
        ):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return np.asarray(batch, dtype=np.float32) @ self.W


@pytest.mark.slow  # a cluster of worker processes, one killed and restarted (~15 s); CI runs it (.ci/run: pytest -m slow)
def test_a_worker_killed_mid_build_costs_only_its_chunks_and_the_build_equals_an_uninterrupted_one(
    tmp_path,
):
    import os
    import sys

    import cloudpickle

    rng = np.random.default_rng(2)
    X = rng.normal(size=(240, 5)).astype(np.float32)
    X[:, 0] = np.arange(240)
    W = rng.normal(size=(5, 3)).astype(np.float32)
    marker = tmp_path / "killed"
    teacher = _KillsItsWorkerOnce(W, kill_row=100, marker=str(marker), driver_pid=os.getpid())
    kw = dict(y=np.arange(240) % 3, chunk_rows=20, batch_size=20, progress=False)
    # the workers cannot import this test module: ship the teacher's class by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            remote = build_cache(teacher, X, tmp_path / "remote", client=client, **kw)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists(), "no worker was killed: the test did not test anything"
    local = build_cache(teacher, X, tmp_path / "local", **kw)  # in the driver: never killed
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    np.testing.assert_array_equal(np.asarray(remote)[:, 0], X @ W)
    assert remote.verify().ok
