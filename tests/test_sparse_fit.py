"""Students fitted from sparse logit caches: the same student, sparse batches only, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV

from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier
from kdpipe.cache import Sampled, TopK, build_cache
from kdpipe.datasets import make_confusable_classification
from kdpipe.errors import SparseFormatError
from kdpipe.sparse_targets import TopKTargets

C = 12
FAST = dict(hidden_layer_sizes=(16,), learning_rate=1e-2, batch_size=64, max_epochs=8)


@pytest.fixture(scope="module")
def data():
    X, y = make_confusable_classification(
        600, C, group_size=4, n_features=6, class_separation=5.0, random_state=0
    )
    X = X.astype(np.float32)
    mu = np.stack([X[y == c].mean(axis=0) for c in range(C)])

    def teacher(batch: np.ndarray) -> np.ndarray:
        return batch @ mu.T - 0.5 * (mu**2).sum(axis=1)

    teacher.kdpipe_fingerprint = "gaussian-classes"
    return X, y, teacher


def _cache(tmp_path_factory, data, sparse, name):
    X, y, teacher = data
    path = tmp_path_factory.mktemp("sparse-fit") / name
    return build_cache(teacher, X, path, y=y, sparse=sparse, chunk_rows=128, progress=False)


@pytest.fixture(scope="module")
def dense(tmp_path_factory, data):
    return _cache(tmp_path_factory, data, None, "dense")


@pytest.fixture(scope="module")
def topk_all_but_one(tmp_path_factory, data):
    return _cache(tmp_path_factory, data, TopK(C - 1), "topk")


def test_student_from_a_topk_cache_of_all_but_one_class_is_the_dense_student(
    data, dense, topk_all_but_one
):
    X, y, _ = data
    for temperature in (2.0, 3.0):  # on and off the tail grid: a one-class tail is exact everywhere
        kw = dict(random_state=0, temperature=temperature, **FAST)
        a = DistilledClassifier(**kw).fit(X, y, teacher_logits=dense)
        b = DistilledClassifier(**kw).fit(X, y, teacher_logits=topk_all_but_one)
        np.testing.assert_allclose(
            [h["train_loss"] for h in b.history_], [h["train_loss"] for h in a.history_], rtol=1e-4
        )
        np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), atol=1e-4)


def test_fit_from_a_sparse_cache_trains_on_sparse_batches_only(data, tmp_path_factory, monkeypatch):
    X, y, _ = data
    cache = _cache(tmp_path_factory, data, TopK(3), "small")
    from kdpipe import engine, losses

    seen = []
    sparse_loss = losses.sparse_distillation_loss

    def spy(student_logits, targets, *args, **kw):
        seen.append(type(targets))
        return sparse_loss(student_logits, targets, *args, **kw)

    def dense_loss(*args, **kw):
        raise AssertionError("the dense loss was called")

    monkeypatch.setattr(engine.losses, "sparse_distillation_loss", spy)
    monkeypatch.setattr(engine.losses, "distillation_loss", dense_loss)
    clf = DistilledClassifier(random_state=0, **FAST).fit(X, y, teacher_logits=cache)
    assert seen and set(seen) == {TopKTargets}
    assert clf.score(X, y) > 0.5


def test_grid_search_over_temperature_reads_fold_subsets_and_picks_the_dense_choice(
    data, dense, topk_all_but_one
):
    X, y, _ = data
    grid = {"temperature": [1.0, 4.0, 20.0]}
    with sklearn.config_context(enable_metadata_routing=True):
        est = DistilledClassifier(random_state=0, **FAST).set_fit_request(teacher_logits=True)
        on_dense = GridSearchCV(est, grid, cv=2).fit(X, y, teacher_logits=dense)
        on_sparse = GridSearchCV(est, grid, cv=2).fit(X, y, teacher_logits=topk_all_but_one)
    assert on_sparse.best_params_ == on_dense.best_params_
    np.testing.assert_allclose(
        on_sparse.cv_results_["mean_test_score"], on_dense.cv_results_["mean_test_score"], atol=0.01
    )


def test_a_sampled_cache_refuses_another_temperature_and_leaves_the_estimator_as_it_was(
    data, tmp_path_factory
):
    X, y, _ = data
    cache = _cache(tmp_path_factory, data, Sampled(draws=16, temperature=4.0), "sampled")
    clf = DistilledClassifier(random_state=0, temperature=4.0, **FAST).fit(
        X, y, teacher_logits=cache
    )
    weights = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    for bad in (dict(temperature=2.0), dict(loss="logit_matching")):
        with pytest.raises(SparseFormatError):
            clf.set_params(**bad).fit(X, y, teacher_logits=cache)
        clf.set_params(temperature=4.0, loss="distillation")
        for k, v in clf.module_.state_dict().items():
            torch.testing.assert_close(v, weights[k], rtol=0, atol=0)
    assert len(clf.history_) == FAST["max_epochs"]


def test_specialists_refuse_a_sparse_cache_and_take_a_generalist_fitted_from_one(
    data, topk_all_but_one
):
    X, y, _ = data
    quick = dict(n_specialists=3, specialist_max_epochs=2, random_state=0)
    with pytest.raises(SparseFormatError, match="FrozenEstimator"):
        SpecialistEnsembleClassifier(DistilledClassifier(**FAST), **quick).fit(
            X, y, teacher_logits=topk_all_but_one
        )
    generalist = DistilledClassifier(random_state=0, **FAST).fit(
        X, y, teacher_logits=topk_all_but_one
    )
    clf = SpecialistEnsembleClassifier(FrozenEstimator(generalist), **quick).fit(X, y)
    assert clf.generalist_.estimator is generalist and len(clf.specialists_) == 3
    assert clf.score(X, y) > 0.5
