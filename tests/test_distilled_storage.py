"""DistilledClassifier on on-disk data: zarr/h5py/dask X and a LogitCache of teacher logits."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kdpipe import DistilledClassifier
from kdpipe.errors import ClassMismatchError, InputError, TeacherOutputError

zarr = pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")
cache_module = pytest.importorskip("kdpipe.cache")

FAST = dict(hidden_layer_sizes=(16,), learning_rate=1e-2, max_epochs=6, batch_size=64, device="cpu")
NAMES = np.array(["ant", "bee", "cat"])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    y = NAMES[np.argmax(X[:, :3] + 0.5 * rng.normal(size=(600, 3)), axis=1)]
    teachers = [LogisticRegression(C=c).fit(X, y) for c in (0.1, 1.0)]
    logits = np.stack([t.decision_function(X) for t in teachers], axis=1).astype(np.float32)
    return X, y, teachers, logits  # logits: (n, M=2, C=3)


@pytest.fixture(scope="module")
def cache(data, tmp_path_factory):
    X, y, teachers, _ = data
    path = tmp_path_factory.mktemp("cache") / "logits.zarr"
    return cache_module.build_cache(teachers, X, path, y=y, chunk_rows=100, progress=False)


def _zarr(path, array, chunk_rows=50):
    z = zarr.create_array(
        store=str(path), shape=array.shape, dtype=array.dtype, chunks=(chunk_rows, *array.shape[1:])
    )
    z[...] = array
    return z


def test_cache_matches_its_teachers(data, cache):
    _, _, _, logits = data
    np.testing.assert_allclose(np.asarray(cache), logits, rtol=1e-6, atol=1e-6)
    assert cache.classes.tolist() == NAMES.tolist()


@pytest.mark.parametrize("storage", ["zarr", "hdf5", "dask"])
def test_streaming_X_equals_in_memory_fit(data, tmp_path, storage):
    X, y, _, logits = data
    if storage == "zarr":
        X_disk = _zarr(tmp_path / "X.zarr", X)
    elif storage == "hdf5":
        handle = h5py.File(tmp_path / "X.h5", "w")
        X_disk = handle.create_dataset("X", data=X, chunks=(50, 6))
    else:
        import dask.array as da

        X_disk = da.from_array(X, chunks=(50, 6))
    memory = DistilledClassifier(random_state=0, **FAST).fit(X, y, teacher_logits=logits)
    disk = DistilledClassifier(random_state=0, **FAST).fit(X_disk, y, teacher_logits=logits)
    assert disk.n_features_in_ == 6
    np.testing.assert_array_equal(disk.predict_proba(X_disk), memory.predict_proba(X))
    np.testing.assert_array_equal(disk.predict(X), memory.predict(X))
    narrow = (
        X_disk[:, :4] if storage == "dask" else _zarr(tmp_path / "narrow.zarr", X[:, :4].copy())
    )
    with pytest.raises(InputError, match="expecting 6 features"):
        disk.predict(narrow)
    if storage == "hdf5":
        handle.close()


def _named_rows(message: str) -> set[int]:
    return set(map(int, re.search(r"rows \[([\d, ]+)\]", message).group(1).split(", ")))


def test_nan_in_on_disk_X_or_logits_names_the_rows(data, tmp_path, monkeypatch):
    X, y, _, logits = data
    bad_X = X.copy()
    bad_X[123, 2] = np.inf
    with pytest.raises(InputError) as error:
        DistilledClassifier(**FAST).fit(_zarr(tmp_path / "X.zarr", bad_X), y, teacher_logits=logits)
    assert _named_rows(str(error.value)) == {123}
    # two bad rows: the message names exactly the bad rows of the minibatch that was read
    from kdpipe.rows import MinibatchSource

    batches: list[np.ndarray] = []
    fetch = MinibatchSource.fetch

    def spy(self, rows):
        batches.append(np.array(rows))
        return fetch(self, rows)

    monkeypatch.setattr(MinibatchSource, "fetch", spy)
    bad_logits = logits.copy()
    bad_logits[[7, 450], 1, 0] = np.nan
    for seed in range(4):  # some seeds put 7 and 450 in one minibatch, some do not
        batches.clear()
        with pytest.raises(TeacherOutputError) as error:
            DistilledClassifier(random_state=seed, **FAST).fit(
                X, y, teacher_logits=_zarr(tmp_path / f"v{seed}.zarr", bad_logits)
            )
        failed = next(b for b in batches if np.isin([7, 450], b).any())
        assert _named_rows(str(error.value)) == set(np.intersect1d(failed, [7, 450]).tolist())


def test_fit_from_cache_equals_fit_from_arrays(data, cache):
    X, y, _, logits = data
    from_cache = DistilledClassifier(random_state=0, **FAST).fit(X, y, teacher_logits=cache)
    from_array = DistilledClassifier(random_state=0, **FAST).fit(X, y, teacher_logits=logits)
    np.testing.assert_array_equal(from_cache.predict_proba(X), from_array.predict_proba(X))
    assert from_cache.classes_.tolist() == NAMES.tolist()


def test_cache_class_list_rules(data, cache):
    X, y, _, _ = data
    # a class the teacher knows but the transfer set lacks: classes_ comes from the cache
    rows = np.flatnonzero(y != "cat")
    clf = DistilledClassifier(random_state=0, **FAST).fit(
        X[rows], y[rows], teacher_logits=cache[rows]
    )
    assert clf.classes_.tolist() == ["ant", "bee", "cat"]
    with pytest.raises(ClassMismatchError, match="eel"):
        DistilledClassifier(**FAST).fit(X, np.where(y == "cat", "eel", y), teacher_logits=cache)
    with pytest.raises(ClassMismatchError, match="logits"):
        DistilledClassifier(classes=["cat", "bee", "ant"], **FAST).fit(X, y, teacher_logits=cache)
    with pytest.raises(ClassMismatchError):  # integer codes are not the cache's labels
        DistilledClassifier(**FAST).fit(X, np.searchsorted(NAMES, y), teacher_logits=cache)
    with pytest.raises(InputError, match="rows"):
        DistilledClassifier(**FAST).fit(X[:-5], y[:-5], teacher_logits=cache)


GRID = {
    "distilledclassifier__temperature": [1.0, 4.0],
    "distilledclassifier__alpha": [0.0, 0.5],
    "distilledclassifier__hidden_layer_sizes": [(4,), (16,)],
}


def _search(n_jobs):
    pipe = make_pipeline(
        StandardScaler(),
        # the scaler transforms X: its rows are checked by their labels
        DistilledClassifier(random_state=0, rows_transformed=True, **FAST).set_fit_request(
            teacher_logits=True
        ),
    )
    return GridSearchCV(pipe, GRID, cv=2, n_jobs=n_jobs)


@pytest.mark.slow  # a process-parallel grid search (~25 s); CI runs it (.ci/run: pytest -m slow)
def test_grid_search_pipeline_reads_only_fold_rows_from_the_cache(data, cache, monkeypatch):
    X, y, _, _ = data
    reads: list[int] = []
    original = type(cache)._read

    def spy(self, rows):
        reads.append(-1 if rows is None else len(rows))
        return original(self, rows)

    monkeypatch.setattr(type(cache), "_read", spy)
    with sklearn.config_context(enable_metadata_routing=True):
        search = _search(n_jobs=1).fit(X, y, teacher_logits=cache)
    # whole reads never: one minibatch per read
    assert reads and -1 not in reads and max(reads) <= FAST["batch_size"]
    assert search.best_score_ > 0.6
    monkeypatch.undo()

    with sklearn.config_context(enable_metadata_routing=True):
        parallel = _search(n_jobs=2).fit(X, y, teacher_logits=cache)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"]
    )
    assert parallel.best_params_ == search.best_params_


def test_chunked_reader_reads_rows_in_any_order_within_its_memory(data, tmp_path):
    from kdpipe.rows import ChunkedReader

    X = data[0]
    reader = ChunkedReader(
        _zarr(tmp_path / "X.zarr", X, chunk_rows=64), memory_bytes=3 * 64 * 6 * 4
    )
    assert reader.chunk_rows == 64
    rows = np.array([599, 3, 3, 130, 64, 0, 598])
    np.testing.assert_array_equal(reader.read_rows(rows), X[rows])
    np.testing.assert_array_equal(reader.read_rows(np.arange(600)), X)
    assert reader.memory.nbytes <= reader.memory_bytes and len(reader.memory) == 3


def test_shuffle_window_visits_every_row_once_window_by_window(data, cache):
    from kdpipe.engine import _row_batches

    rows = np.arange(1000)
    order = np.concatenate(list(_row_batches(rows, 32, np.random.default_rng(0), window=100)))
    np.testing.assert_array_equal(np.sort(order), rows)
    windows = order.reshape(10, 100) // 100  # each run of 100 comes from one window
    assert (windows == windows[:, :1]).all() and len(set(windows[:, 0])) == 10
    assert not np.array_equal(order, rows)
    X, y, _, _ = data
    clf = DistilledClassifier(shuffle_window=128, random_state=0, **FAST)
    assert clf.fit(X, y, teacher_logits=cache).score(X, y) > 0.6
