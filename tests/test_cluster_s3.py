"""Past one machine: a dask.distributed cluster of worker processes that share no disk
with the driver, only a bucket (moto's S3 server on 127.0.0.1).

The workers build a cache into the bucket, and a ``GridSearchCV`` under
``joblib.parallel_backend("dask")`` reads X and the cache from the bucket in the
workers: a pickled view is a URL and rows, never data.
"""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold

from kdpipe import DistilledClassifier, LazyRows
from kdpipe.cache import LogitCache, build_cache

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

NAMES = np.array(["ant", "bee", "cat"])
FAST = dict(hidden_layer_sizes=(8,), learning_rate=1e-2, max_epochs=2, batch_size=32, device="cpu")


@pytest.fixture
def client(s3_cluster):
    return s3_cluster


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(240, 5)).astype(np.float32)
    y = NAMES[np.argmax(X[:, :3] + 0.5 * rng.normal(size=(240, 3)), axis=1)]
    teachers = [LogisticRegression(C=c).fit(X, y) for c in (0.1, 1.0)]
    return X, y, teachers


@pytest.mark.slow  # worker processes and an S3 server (~15 s); CI runs it (.ci/run: pytest -m slow)
def test_worker_processes_build_into_the_bucket_what_a_local_build_writes(
    tmp_path, data, s3_bucket, client
):
    X, y, teachers = data
    url, options = s3_bucket
    kw = dict(y=y, chunk_rows=40, batch_size=16, progress=False)
    local = build_cache(teachers, X, tmp_path / "local", num_workers=1, **kw)
    with distributed.get_task_stream(client) as stream:
        remote = build_cache(
            teachers, X, f"{url}/cluster.zarr", client=client, storage_options=options, **kw
        )
    workers = {task["worker"] for task in stream.data if task["key"].startswith("kdpipe-compute-")}
    assert len(workers) == 2  # both worker processes computed (and wrote) chunks
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.info()["data"]["fingerprint"] == local.info()["data"]["fingerprint"]
    assert LogitCache.open(f"{url}/cluster.zarr", storage_options=options).verify().ok


@pytest.mark.slow  # a grid search on worker processes (~11 s); CI runs it (.ci/run: pytest -m slow)
def test_grid_search_on_the_cluster_reading_the_bucket_equals_a_local_run(data, s3_bucket, client):
    X, y, teachers = data
    url, options = s3_bucket
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(f"{url}/X.zarr", storage_options=options)
    z = zarr.create_array(store=store, shape=X.shape, chunks=(60, X.shape[1]), dtype=X.dtype)
    z[...] = X
    cache = build_cache(
        teachers,
        X,
        f"{url}/logits.zarr",
        y=y,
        chunk_rows=60,
        storage_options=options,
        progress=False,
    )
    X_remote = LazyRows(
        zarr.open_array(
            FsspecStore.from_url(f"{url}/X.zarr", storage_options=options, read_only=True), mode="r"
        )
    )
    rows = np.arange(0, 240, 2)
    blob = pickle.dumps(X_remote[rows])
    assert len(blob) < rows.nbytes + 4096 and not any(
        x.tobytes() in blob for x in X
    )  # URL and rows, no data

    def search(n_jobs):
        estimator = DistilledClassifier(random_state=0, **FAST)
        return GridSearchCV(estimator, {"temperature": [1.0, 4.0]}, cv=KFold(2), n_jobs=n_jobs)

    # the reference: one process, the same data as in-memory arrays
    logits = np.stack([t.decision_function(X) for t in teachers], axis=1).astype(np.float32)
    local = search(n_jobs=1).fit(X, y, teacher_logits=logits)
    with distributed.get_task_stream(client) as stream, joblib.parallel_backend("dask"):
        remote = search(n_jobs=-1).fit(X_remote, y, teacher_logits=cache)
    assert stream.data, "the search did not run on the cluster"
    for key in ("mean_test_score", *(f"split{k}_test_score" for k in range(2))):
        np.testing.assert_allclose(remote.cv_results_[key], local.cv_results_[key], err_msg=key)
    assert remote.best_params_ == local.best_params_
