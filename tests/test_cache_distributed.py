"""Logit cache built on a dask.distributed cluster equals the in-process build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdpipe.cache import build_cache

distributed = pytest.importorskip("distributed")


@pytest.mark.parametrize(
    "backend, processes", [("zarr", False), ("hdf5", False), ("zarr", True)]
)
def test_cluster_build_equals_threaded_build(tmp_path, backend, processes):
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
    kw = dict(y=y, backend=backend, chunk_rows=32, batch_size=16, progress=False)
    local = build_cache(members, X, tmp_path / "local", num_workers=2, **kw)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        remote = build_cache(members, X, tmp_path / "remote", client=client, **kw)
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.info()["data"]["fingerprint"] == local.info()["data"]["fingerprint"]
    assert remote.verify().ok
