"""Logit cache built on a dask.distributed cluster equals the in-process build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdpipe.cache import build_cache

distributed = pytest.importorskip("distributed")


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_local_cluster_build_equals_threaded_build(tmp_path, backend):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(180, 6)).astype(np.float32)
    y = rng.integers(-1, 3, 180)
    torch.manual_seed(0)
    members = [torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)]
    kw = dict(y=y, backend=backend, chunk_rows=32, batch_size=16, progress=False)
    local = build_cache(members, X, tmp_path / "local", **kw)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        remote = build_cache(members, X, tmp_path / "remote", client=client, **kw)
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.info()["data"]["fingerprint"] == local.info()["data"]["fingerprint"]
    assert remote.verify().ok
