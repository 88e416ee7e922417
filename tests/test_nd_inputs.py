"""X of shape (n, *sample_shape) (images) and uint8 rows, through the cache build, the row
path and both estimators: the student sees the sample shape, every container gives the
model numpy gives, uint8 is float32 x / 255 bit for bit, and another sample shape is refused."""

from __future__ import annotations

import doctest
from typing import ClassVar

import numpy as np
import pytest
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from torch import nn

import kdpipe.rows
from kdpipe import (
    DistilledClassifier,
    LazyRows,
    LogitCache,
    SpecialistEnsembleClassifier,
    build_cache,
)
from kdpipe._estimator import validate_rows
from kdpipe.cache.fingerprint import row_digests
from kdpipe.errors import InputError, RowMismatchError
from kdpipe.rows import MinibatchSource, to_model_dtype

zarr = pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")
da = pytest.importorskip("dask.array")

FAST = {
    "hidden_layer_sizes": (16,),
    "learning_rate": 1e-2,
    "max_epochs": 2,
    "batch_size": 64,
    "random_state": 0,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def digits():
    """300 digits as uint8 images (n, 1, 8, 8) (intensities 0..16 scaled to 0..255)."""
    data = load_digits()
    images = np.clip(data.images[:300] * 16, 0, 255).astype(np.uint8)[:, None]  # (n, 1, 8, 8)
    return images, data.target[:300]


class TinyCNN(nn.Module):
    """A CNN teacher: (b, 1, 8, 8) float -> (b, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.max_pool2d(torch.relu(self.conv(x)), 2)  # (b, 4, 4, 4)
        return self.out(h.flatten(1))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def nd_cache(digits, teacher, tmp_path_factory):
    images, y = digits
    path = tmp_path_factory.mktemp("nd") / "cache.zarr"
    return build_cache(teacher, images, path, y=y, chunk_rows=128, progress=False)


class ShapeRecorder(nn.Module):
    """A student that records the shape and dtype of every batch it is given."""

    seen: ClassVar[list[tuple[tuple[int, ...], torch.dtype]]] = []

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ShapeRecorder.seen.append((tuple(x.shape), x.dtype))
        return self.linear(x.flatten(1))


def test_to_model_dtype_divides_uint8_by_255_in_float32_and_only_casts_others():
    x = np.arange(256, dtype=np.uint8).reshape(2, 2, 64)
    got = to_model_dtype(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(got, x.astype(np.float32) / np.float32(255.0))
    assert got[0, 0, 0] == 0.0 and got[-1, -1, -1] == 1.0
    ints = np.array([[3, 300]], dtype=np.int64)
    assert np.array_equal(to_model_dtype(ints), [[3.0, 300.0]])
    floats = np.ones((2, 3), dtype=np.float32)
    assert to_model_dtype(floats) is floats  # float32 passes without a copy
    assert doctest.testmod(kdpipe.rows).failed == 0


def test_student_receives_batches_in_the_sample_shape_and_fit_records_it(digits):
    images, y = digits
    ShapeRecorder.seen = []
    clf = DistilledClassifier(
        module=ShapeRecorder, max_epochs=1, batch_size=100, random_state=0, device="cpu"
    ).fit(images, y)
    assert set(ShapeRecorder.seen) == {((100, 1, 8, 8), torch.float32)}
    assert clf.sample_shape_ == (1, 8, 8) and clf.n_features_in_ == 64
    ShapeRecorder.seen = []
    assert clf.predict(images[:7]).shape == (7,)
    assert ShapeRecorder.seen == [((7, 1, 8, 8), torch.float32)]
    flat = DistilledClassifier(**FAST).fit(images.reshape(300, -1), y)
    assert flat.sample_shape_ == (64,) and flat.n_features_in_ == 64


def _container(kind: str, images: np.ndarray, tmp_path):
    chunks = (64, *images.shape[1:])
    if kind == "numpy":
        return images
    if kind == "zarr":
        z = zarr.create_array(
            store=str(tmp_path / "X.zarr"), shape=images.shape, chunks=chunks, dtype=images.dtype
        )
        z[:] = images
        return LazyRows(z)
    if kind == "hdf5":
        with h5py.File(tmp_path / "X.h5", "w") as f:
            f.create_dataset("X", data=images, chunks=chunks)
        return LazyRows(h5py.File(tmp_path / "X.h5", "r")["X"])
    return da.from_array(images, chunks=chunks)


@pytest.mark.parametrize("kind", ["zarr", "hdf5", "dask"])
def test_every_container_of_nd_uint8_X_trains_the_model_numpy_trains(
    digits, nd_cache, kind, tmp_path
):
    images, y = digits
    reference = DistilledClassifier(**FAST).fit(images, y, teacher_logits=nd_cache)
    X = _container(kind, images, tmp_path)
    assert X.shape == images.shape and np.dtype(X.dtype) == np.uint8
    clf = DistilledClassifier(**FAST).fit(X, y, teacher_logits=nd_cache)
    assert clf.sample_shape_ == (1, 8, 8)
    for name, tensor in reference.module_.state_dict().items():
        assert torch.equal(tensor, clf.module_.state_dict()[name]), name
    assert np.array_equal(clf.predict_proba(X), reference.predict_proba(images))


def test_uint8_trains_bit_for_bit_the_model_of_float32_divided_by_255(digits, tmp_path):
    images, y = digits
    scaled = images.astype(np.float32) / 255  # the user's own conversion
    a = DistilledClassifier(**FAST).fit(images, y)
    b = DistilledClassifier(**FAST).fit(scaled, y)
    c = DistilledClassifier(**FAST).fit(_container("zarr", images, tmp_path), y)
    for name, tensor in a.module_.state_dict().items():
        assert torch.equal(tensor, b.module_.state_dict()[name]), name
        assert torch.equal(tensor, c.module_.state_dict()[name]), name
    assert np.array_equal(a.predict_proba(images), b.predict_proba(scaled))
    # a different scaling is a different model: the test can tell
    d = DistilledClassifier(**FAST).fit(images.astype(np.float32), y)
    assert not np.array_equal(a.predict_proba(images), d.predict_proba(images.astype(np.float32)))
    # the in-memory batches are uint8 until the minibatch is made (4x less memory)
    X, _, _ = validate_rows(DistilledClassifier(), images, y, reset=True)
    assert X.dtype == np.uint8
    assert MinibatchSource(X).fetch(np.arange(3)).X.dtype == np.float32


def test_predict_refuses_another_sample_shape(digits, tmp_path):
    images, y = digits
    clf = DistilledClassifier(**FAST).fit(images, y)
    for wrong in (
        images.reshape(300, 64),
        images.reshape(300, 1, 4, 16),
        images.reshape(300, 1, 1, 8, 8),
    ):
        with pytest.raises(
            InputError, match=r"samples of shape .* fitted on samples of shape \(1, 8, 8\)"
        ):
            clf.predict(wrong)
    z = zarr.create_array(
        store=str(tmp_path / "w.zarr"), shape=(300, 64), chunks=(64, 64), dtype="u1"
    )
    with pytest.raises(InputError, match=r"fitted on samples of shape \(1, 8, 8\)"):
        clf.predict(LazyRows(z))
    flat = DistilledClassifier(**FAST).fit(images.reshape(300, 64), y)
    with pytest.raises(InputError, match=r"fitted on samples of shape \(64,\)"):
        flat.predict(images)
    with pytest.raises(
        ValueError, match="X has 63 features, but DistilledClassifier is expecting 64"
    ):
        flat.predict(images.reshape(300, 64)[:, :63])  # 2-D keeps scikit-learn's message


def test_warm_start_keeps_the_sample_shape_and_a_refused_fit_changes_nothing(digits):
    images, y = digits
    clf = DistilledClassifier(**{**FAST, "warm_start": True}).fit(images, y)
    before = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    with pytest.raises(InputError, match=r"fitted on samples of shape \(1, 8, 8\)"):
        clf.fit(images.reshape(300, 1, 4, 16), y)
    assert clf.sample_shape_ == (1, 8, 8) and clf.n_iter_ == 2 and len(clf.history_) == 2
    assert all(torch.equal(v, clf.module_.state_dict()[k]) for k, v in before.items())
    clf.fit(images, y)  # the same shape trains on
    assert len(clf.history_) == 4


def test_build_cache_runs_a_torch_cnn_on_uint8_images_scaled_and_hashes_the_uint8_bytes(
    digits, teacher, nd_cache
):
    images, _ = digits
    with torch.no_grad():
        expected = teacher(torch.from_numpy(images).float() / 255).numpy()  # (n, 10)
    stored = nd_cache.read_rows(np.arange(len(images)))  # (n, 1 member, 10)
    np.testing.assert_allclose(stored[:, 0], expected, rtol=0, atol=1e-6)
    manifest = nd_cache.manifest
    assert (
        tuple(manifest.data_shape) == (300, 1, 8, 8) and np.dtype(manifest.data_dtype) == np.uint8
    )
    assert np.array_equal(nd_cache.row_digests, row_digests(images))
    assert nd_cache.verify().ok


def test_a_torch_dataset_of_uint8_image_tensors_builds_the_cache_the_array_builds(
    digits, teacher, nd_cache, tmp_path
):
    images, y = digits

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return torch.from_numpy(images[i]), int(y[i])  # (1, 8, 8) uint8, label

    cache = build_cache(teacher, Images(), tmp_path / "ds.zarr", chunk_rows=128, progress=False)
    assert np.array_equal(cache.row_digests, nd_cache.row_digests)
    assert np.array_equal(cache.labels, nd_cache.labels)
    assert np.array_equal(cache.read_rows(np.arange(300)), nd_cache.read_rows(np.arange(300)))


def test_sklearn_teachers_get_nd_rows_flattened_in_their_stored_dtype(digits, tmp_path):
    images, y = digits
    flat = images.reshape(300, -1)
    lr = LogisticRegression(max_iter=200).fit(flat, y)
    cache = build_cache(lr, images, tmp_path / "lr.zarr", y=y, progress=False)
    expected = lr.decision_function(flat).astype(np.float32)
    assert np.array_equal(cache.read_rows(np.arange(300))[:, 0], expected)
    # a kdpipe estimator fitted on images takes them whole
    student = DistilledClassifier(**FAST).fit(images, y)
    cache = build_cache(student, images, tmp_path / "student.zarr", y=y, progress=False)
    np.testing.assert_allclose(
        cache.read_rows(np.arange(300))[:, 0], student.decision_function(images), rtol=0, atol=1e-5
    )


def test_alignment_checks_nd_uint8_rows(digits, nd_cache):
    images, _ = digits
    order = np.random.default_rng(1).permutation(300)
    with pytest.raises(RowMismatchError, match="out of place"):
        DistilledClassifier(**FAST).fit(images[order], np.full(300, -1), teacher_logits=nd_cache)
    moved = images.copy()
    moved[[3, 200]] = images[[200, 3]]
    with pytest.raises(RowMismatchError, match="row 3 of X is row 200 of the cache"):
        DistilledClassifier(**FAST).fit(moved, np.full(300, -1), teacher_logits=nd_cache)


def test_grid_search_over_an_nd_cache_with_lazy_uint8_X(digits, nd_cache, tmp_path):
    images, y = digits
    X = _container("zarr", images, tmp_path)
    with sklearn.config_context(enable_metadata_routing=True):
        student = DistilledClassifier(**FAST).set_fit_request(teacher_logits=True)
        search = GridSearchCV(
            student, {"temperature": [2.0, 8.0]}, cv=KFold(2), error_score="raise"
        )
        search.fit(X, y, teacher_logits=LogitCache.open(nd_cache.path))
        in_memory = GridSearchCV(
            student, {"temperature": [2.0, 8.0]}, cv=KFold(2), error_score="raise"
        )
        in_memory.fit(images, y, teacher_logits=LogitCache.open(nd_cache.path))
    assert np.array_equal(
        search.cv_results_["mean_test_score"], in_memory.cv_results_["mean_test_score"]
    )
    assert search.best_estimator_.sample_shape_ == (1, 8, 8)


def test_specialists_take_nd_uint8_images_and_refuse_another_shape(digits, nd_cache):
    images, y = digits
    ensemble = SpecialistEnsembleClassifier(
        generalist=DistilledClassifier(**FAST),
        n_specialists=2,
        specialist_max_epochs=1,
        random_state=0,
        device="cpu",
    ).fit(images, y, teacher_logits=nd_cache)
    assert ensemble.sample_shape_ == (1, 8, 8) and ensemble.n_features_in_ == 64
    proba = ensemble.predict_proba(images[:20])
    assert proba.shape == (20, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    same = SpecialistEnsembleClassifier(
        generalist=DistilledClassifier(**FAST),
        n_specialists=2,
        specialist_max_epochs=1,
        random_state=0,
        device="cpu",
    ).fit(images.astype(np.float32) / 255, y)
    assert same.sample_shape_ == (1, 8, 8)
    with pytest.raises(InputError, match=r"fitted on samples of shape \(1, 8, 8\)"):
        ensemble.predict(images.reshape(300, 64))


def test_fashion_mnist_loads_as_uint8_images_whose_scaling_is_the_flat_rows(tmp_path):
    from kdpipe.datasets import load_fashion_mnist

    pixels = np.random.default_rng(2).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    for stem, array in (
        ("train-images-idx3-ubyte", pixels),
        ("train-labels-idx1-ubyte", np.arange(5)),
    ):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
            int(n).to_bytes(4, "big") for n in array.shape
        )
        (tmp_path / stem).write_bytes(header + array.astype(np.uint8).tobytes())
    images, y = load_fashion_mnist(tmp_path, images=True)
    assert images.dtype == np.uint8 and images.shape == (5, 1, 28, 28)
    assert np.array_equal(images[:, 0], pixels) and y.tolist() == [0, 1, 2, 3, 4]
    flat, _ = load_fashion_mnist(tmp_path)
    assert np.array_equal(flat, to_model_dtype(images).reshape(5, 784))
