"""On-disk X in scikit-learn's model selection through kdpipe.LazyRows: lazy, picklable,
and giving the same results as the in-memory arrays."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, cross_validate
from sklearn.pipeline import Pipeline

from kdpipe import DistilledClassifier, LazyRows
from kdpipe.rows import ChunkedReader

zarr = pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")
da = pytest.importorskip("dask.array")

FAST = dict(
    hidden_layer_sizes=(8,),
    learning_rate=1e-2,
    max_epochs=3,
    batch_size=64,
    random_state=0,
    device="cpu",
)
CV = KFold(3)  # folds of 400 training and 200 test rows
KINDS = ["zarr", "hdf5", "dask"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5)).astype(np.float32)
    y = np.argmax(X[:, :3] + 0.3 * rng.normal(size=(600, 3)), axis=1)
    logits = LogisticRegression().fit(X, y).decision_function(X).astype(np.float32)
    return X, y, logits


@pytest.fixture
def stored(data, tmp_path):
    """``kind -> on-disk X``; HDF5 opened read-only, as a shared file should be."""
    X = data[0]
    made = {}

    def make(kind: str):
        if kind == "zarr":
            z = zarr.create_array(
                store=str(tmp_path / "X.zarr"), shape=X.shape, chunks=(64, 5), dtype="f4"
            )
            z[:] = X
            return z
        if kind == "hdf5":
            with h5py.File(tmp_path / "X.h5", "w") as f:
                f.create_dataset("X", data=X, chunks=(64, 5))
            made["file"] = h5py.File(tmp_path / "X.h5", "r")
            return made["file"]["X"]
        return da.from_array(X, chunks=(64, 5))

    yield make
    if "file" in made:
        made["file"].close()


def _search(n_jobs: int) -> GridSearchCV:
    clf = DistilledClassifier(**FAST).set_fit_request(teacher_logits=True)
    return GridSearchCV(clf, {"temperature": [1.0, 4.0]}, cv=CV, n_jobs=n_jobs)


@pytest.mark.parametrize("kind", KINDS)
def test_grid_search_on_a_view_reads_lazily_and_matches_memory(data, stored, kind, monkeypatch):
    X, y, logits = data
    view = LazyRows(stored(kind))
    reads: list[int] = []
    read_rows = ChunkedReader.read_rows

    def spy(self, rows):
        reads.append(len(rows))
        return read_rows(self, rows)

    with sklearn.config_context(enable_metadata_routing=True):
        memory = _search(n_jobs=1).fit(X, y, teacher_logits=logits)
        monkeypatch.setattr(ChunkedReader, "read_rows", spy)
        lazy = _search(n_jobs=1).fit(view, y, teacher_logits=logits)
        monkeypatch.undo()
        parallel = _search(n_jobs=2).fit(view, y, teacher_logits=logits)
    # minibatches of 64 rows and prediction blocks of a test fold (200 rows): no fold's
    # 400 training rows, let alone all 600, are ever read at once
    assert reads and max(reads) <= 200
    for result in (lazy, parallel):
        np.testing.assert_array_equal(
            result.cv_results_["mean_test_score"], memory.cv_results_["mean_test_score"]
        )
        assert result.best_params_ == memory.best_params_


@pytest.mark.parametrize("kind", KINDS)
def test_cross_validate_and_pipeline_on_a_view(data, stored, kind):
    X, y, _ = data
    view = LazyRows(stored(kind))
    clf = DistilledClassifier(**FAST)
    expected = cross_val_score(clf, X, y, cv=CV)
    np.testing.assert_array_equal(cross_val_score(clf, view, y, cv=CV, n_jobs=2), expected)
    pipe = Pipeline([("keep", "passthrough"), ("student", clf)])
    got = cross_validate(pipe, view, y, cv=CV, n_jobs=1)["test_score"]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_a_view_pickles_as_a_reference_and_indexes_to_views(data, stored, kind):
    X = data[0]
    view = LazyRows(stored(kind))
    rows = np.array([599, 3, 3, 130, 0])
    sub = view[rows, ...]
    assert isinstance(sub, LazyRows) and isinstance(view[10:20], LazyRows)
    assert sub.shape == (5, 5) and isinstance(sub[[1, 0]], LazyRows)
    np.testing.assert_array_equal(np.asarray(sub), X[rows])
    np.testing.assert_array_equal(np.asarray(sub[[4, 0]]), X[[0, 599]])
    np.testing.assert_array_equal(sub[0], X[599])
    np.testing.assert_array_equal(view[5:8, 1:3], X[5:8, 1:3])
    mask = np.zeros(600, dtype=bool)
    mask[[2, 7]] = True
    np.testing.assert_array_equal(np.asarray(view[mask]), X[[2, 7]])
    blob = pickle.dumps(sub)
    if kind != "dask":  # a dask graph from numpy carries its data; zarr and HDF5 do not
        assert len(blob) < X.nbytes / 4
    np.testing.assert_array_equal(np.asarray(pickle.loads(blob)), X[rows])
    with pytest.raises(IndexError, match="out of range"):
        view[[600]]


class _Linear:
    def __init__(self):
        self.W = np.random.default_rng(3).normal(size=(5, 3)).astype(np.float32)

    def __call__(self, batch):
        return np.asarray(batch, dtype=np.float32) @ self.W


@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_build_cache_reads_a_view_like_its_rows_in_memory(data, stored, kind, tmp_path):
    from kdpipe.cache import build_cache

    X = data[0]
    rows = np.arange(0, 600, 3)[::-1]
    view = LazyRows(stored(kind))
    for name, source in (("whole", view), ("subset", view[rows])):
        cache = build_cache(
            _Linear(), source, tmp_path / name, chunk_rows=64, progress=False, device="cpu"
        )
        expected = X if name == "whole" else X[rows]
        np.testing.assert_allclose(np.asarray(cache)[:, 0], expected @ _Linear().W, rtol=1e-6)
