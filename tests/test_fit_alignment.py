"""DistilledClassifier.fit refuses rows that are not the rows its LogitCache was built from.

The cache keeps a digest of every input row and every label; a fit recomputes the
digests of (a sample of) the rows it is given and compares labels, so X or y shuffled
against the cache is an error that names rows, in plain fits and inside
cross-validation folds. Rows that match none of the cache's are an error too (other
data), unless the estimator is told that an earlier Pipeline step transforms them
(``rows_transformed=True``): then the labels are what is checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
import torch
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kdpipe import DistilledClassifier, LazyRows, build_cache
from kdpipe.errors import RowMismatchError

zarr = pytest.importorskip("zarr")

FAST = dict(
    hidden_layer_sizes=(8,),
    learning_rate=1e-2,
    max_epochs=2,
    batch_size=64,
    random_state=0,
    device="cpu",
)


def _teacher(n_features: int, n_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(n_features, n_classes)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """X (float64, as the teacher saw it), y, and the cache built from both."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    y = np.argmax(X[:, :3], axis=1)
    path = tmp_path_factory.mktemp("alignment") / "cache.zarr"
    teacher = _teacher(6, 3).double()
    cache = build_cache(teacher, X, path, y=y, chunk_rows=128, progress=False)
    return X, y, cache


def test_aligned_rows_fit(built):
    X, y, cache = built
    clf = DistilledClassifier(**FAST).fit(X, y, teacher_logits=cache)
    assert clf.n_iter_ == 2


def test_rows_permuted_with_their_labels_are_refused_naming_rows(built):
    X, y, cache = built
    order = np.random.default_rng(1).permutation(len(X))
    with pytest.raises(RowMismatchError, match=r"row \d+ of X is row \d+ of the cache"):
        DistilledClassifier(**FAST).fit(X[order], y[order], teacher_logits=cache)


def test_labels_that_disagree_with_the_cache_are_refused_naming_rows(built):
    X, y, cache = built
    wrong = y.copy()
    wrong[[3, 17]] = (y[[3, 17]] + 1) % 3
    with pytest.raises(RowMismatchError, match=r"2 of the 400 rows .*row 3: y says"):
        DistilledClassifier(**FAST).fit(X, wrong, teacher_logits=cache)


def test_unlabeled_rows_are_not_compared(built):
    X, y, cache = built
    partly = y.copy()
    partly[::2] = -1
    DistilledClassifier(**FAST).fit(X, partly, teacher_logits=cache)


def test_refused_fit_leaves_the_fitted_student_as_it_was(built):
    X, y, cache = built
    clf = DistilledClassifier(**FAST).fit(X, y, teacher_logits=cache)
    before = clf.predict_proba(X)
    weights = [p.detach().clone() for p in clf.module_.parameters()]
    order = np.random.default_rng(2).permutation(len(X))
    with pytest.raises(RowMismatchError):
        clf.fit(X[order], y[order], teacher_logits=cache)
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    for old, new in zip(weights, clf.module_.parameters()):
        assert torch.equal(old, new)


def test_scaled_X_in_a_pipeline_needs_rows_transformed_and_then_its_labels_are_checked(built):
    """A transformed X cannot be matched by its bytes: an error by default, naming the
    parameter; with rows_transformed=True it fits, and shuffled labels are still caught."""
    X, y, cache = built
    with sklearn.config_context(enable_metadata_routing=True):
        student = DistilledClassifier(**FAST).set_fit_request(teacher_logits=True)
        with pytest.raises(
            RowMismatchError, match="none of the 400 checked rows.*rows_transformed=True"
        ):
            make_pipeline(StandardScaler(), student).fit(X, y, teacher_logits=cache)
        student.set_params(rows_transformed=True)
        pipe = make_pipeline(StandardScaler(), student)
        pipe.fit(X, y, teacher_logits=cache)
        assert pipe[-1].n_iter_ == 2
        order = np.random.default_rng(3).permutation(len(X))
        with pytest.raises(RowMismatchError, match="disagree"):
            pipe.fit(X[order], y[order], teacher_logits=cache)


def test_other_data_of_the_same_shape_is_refused(built):
    """Rows the cache never saw, with the cache's own labels: no row matches, an error."""
    X, y, cache = built
    other = np.random.default_rng(5).normal(size=X.shape)
    with pytest.raises(RowMismatchError, match="none of the 400 checked rows of X"):
        DistilledClassifier(**FAST).fit(other, y, teacher_logits=cache)
    with pytest.raises(RowMismatchError, match="none of the 400 checked rows of X"):
        DistilledClassifier(**FAST).fit(X * 1.0001, y, teacher_logits=cache)
    with pytest.raises(RowMismatchError, match="none of the 134 checked rows of X"):
        DistilledClassifier(**FAST).fit(other[::3], y[::3], teacher_logits=cache[::3])


def test_each_cross_validation_fold_is_checked(built):
    """Folds read row subsets of the cache; an X shuffled against it fails in every fold."""
    X, y, cache = built
    with sklearn.config_context(enable_metadata_routing=True):
        student = DistilledClassifier(**FAST).set_fit_request(teacher_logits=True)
        search = GridSearchCV(
            student, {"temperature": [2.0, 4.0]}, cv=KFold(2), error_score="raise"
        )
        search.fit(X, y, teacher_logits=cache)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        swapped = X.copy()
        swapped[[10, 300]] = X[[300, 10]]  # row 10 sits in fold 1's test rows, 300 in fold 2's
        with pytest.raises(RowMismatchError, match="out of place"):
            search.fit(swapped, np.full(len(y), -1), teacher_logits=cache)


def test_on_disk_X_is_checked_too(built, tmp_path):
    X, y, cache = built
    order = np.random.default_rng(4).permutation(len(X))
    stored = zarr.create_array(
        store=str(tmp_path / "X.zarr"), shape=X.shape, chunks=(64, 6), dtype="f8"
    )
    stored[:] = X
    DistilledClassifier(**FAST).fit(LazyRows(stored), y, teacher_logits=cache)
    stored[:] = X[order]
    with pytest.raises(RowMismatchError, match="out of place"):
        DistilledClassifier(**FAST).fit(LazyRows(stored), np.full(len(y), -1), teacher_logits=cache)


def test_X_rescaled_from_uint8_is_refused_unless_declared_transformed(tmp_path):
    """uint8 images scaled to [0, 1] would round to rows of zeros: never compared by bytes,
    so not the rows that made the cache (an error) unless declared a transform."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(200, 6), dtype=np.uint8)
    images[7] = 0  # a row that the scaled rows would otherwise collide with
    weights = rng.normal(size=(6, 3)).astype(np.float32)

    def teacher(batch: np.ndarray) -> np.ndarray:
        return batch.astype(np.float32) @ weights

    y = np.argmax(images[:, :3], axis=1)
    cache = build_cache(teacher, images, tmp_path / "c.zarr", y=y, progress=False)
    DistilledClassifier(**FAST).fit(images, y, teacher_logits=cache)  # the rows themselves
    with pytest.raises(RowMismatchError, match="their values are not uint8 values"):
        DistilledClassifier(**FAST).fit(images / 255.0, y, teacher_logits=cache)
    clf = DistilledClassifier(**FAST, rows_transformed=True)
    clf.fit(images / 255.0, y, teacher_logits=cache)
    assert clf.n_iter_ == 2


def test_specialists_refuse_rows_out_of_order_even_with_a_frozen_generalist(built):
    """A frozen generalist is not refitted, so the ensemble's own fit must check."""
    from sklearn.frozen import FrozenEstimator

    from kdpipe import SpecialistEnsembleClassifier

    X, y, cache = built
    generalist = DistilledClassifier(**FAST).fit(X, y, teacher_logits=cache)
    ensemble = SpecialistEnsembleClassifier(
        generalist=FrozenEstimator(generalist),
        class_subsets=[[0, 1]],
        specialist_max_epochs=1,
        random_state=0,
        device="cpu",
    )
    ensemble.fit(X, y, teacher_logits=cache)
    order = np.random.default_rng(6).permutation(len(X))
    with pytest.raises(RowMismatchError, match="out of place"):
        ensemble.fit(X[order], y[order], teacher_logits=cache)


def _ensemble(**extra):
    from kdpipe import SpecialistEnsembleClassifier

    return SpecialistEnsembleClassifier(
        generalist=DistilledClassifier(**FAST),
        class_subsets=[[0, 1]],
        specialist_max_epochs=1,
        random_state=0,
        device="cpu",
        **extra,
    )


def test_specialists_refuse_transformed_rows_unless_declared(built):
    """The ensemble checks the rows itself, following its rows_transformed; the clone of
    the generalist it fits then skips the byte check, the user's generalist untouched."""
    X, y, cache = built
    scaled = X * 2.0 + 1.0
    with pytest.raises(RowMismatchError, match="rows_transformed=True"):
        _ensemble().fit(scaled, y, teacher_logits=cache)
    ensemble = _ensemble(rows_transformed=True).fit(scaled, y, teacher_logits=cache)
    assert ensemble.generalist_.rows_transformed is True
    assert ensemble.generalist.rows_transformed is False  # the parameter is left as given


def test_rows_given_as_a_list_or_a_tensor_are_compared_in_their_own_dtype(built):
    """validate_data makes float32 rows, which match no row of a float64 build: the check
    reads the rows as the caller gave them."""
    X, y, cache = built
    DistilledClassifier(**FAST).fit(X.tolist(), y, teacher_logits=cache)
    DistilledClassifier(**FAST).fit(torch.from_numpy(X), y, teacher_logits=cache)
    order = np.random.default_rng(7).permutation(len(X))
    with pytest.raises(RowMismatchError, match="out of place"):
        DistilledClassifier(**FAST).fit(X[order].tolist(), y[order], teacher_logits=cache)


def test_specialists_fit_float64_rows_whose_generalist_sees_them_as_float32(built):
    X, y, cache = built
    assert X.dtype == np.float64
    ensemble = _ensemble().fit(X, y, teacher_logits=cache)  # checked as given, by the ensemble
    assert ensemble.generalist.rows_transformed is False  # the user's generalist, unchanged


def test_rows_transformed_ignores_rows_a_transform_changed_but_not_rows_out_of_place(built):
    """A clip changes some rows and leaves the rest: the changed ones cannot be checked,
    the unchanged ones still must sit at their own position."""
    X, y, cache = built
    clipped = np.clip(X, -1.5, 1.5)
    assert 0 < (clipped != X).any(axis=1).sum() < len(X)
    with pytest.raises(RowMismatchError, match="rows match no row of the cache"):
        DistilledClassifier(**FAST).fit(clipped, y, teacher_logits=cache)
    DistilledClassifier(**FAST, rows_transformed=True).fit(clipped, y, teacher_logits=cache)
    order = np.random.default_rng(8).permutation(len(X))
    with pytest.raises(RowMismatchError, match="out of place"):
        DistilledClassifier(**FAST, rows_transformed=True).fit(
            clipped[order], np.full(len(y), -1), teacher_logits=cache
        )
