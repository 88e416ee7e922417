"""SpecialistEnsembleClassifier end to end, on small generated problems.

Torch runs single-threaded here: on two busy shared cores, two intra-op threads make
small-batch training tens of times slower.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import adjusted_rand_score

import kdpipe.specialists.estimator
from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier
from kdpipe.datasets import make_confusable_classification
from kdpipe.engine import TrainingConfig, predict_logits
from kdpipe.errors import ClassMismatchError, InputError
from kdpipe.specialists.plan import row_classes
from kdpipe.specialists.targets import collapse_labels, collapse_probabilities
from kdpipe.specialists.training import fit_specialist, init_specialist_module, sample_rows


def small_generalist(**kw) -> DistilledClassifier:
    params = dict(hidden_layer_sizes=(32,), learning_rate=1e-2, max_epochs=15, random_state=0)
    return DistilledClassifier(**{**params, **kw})


@pytest.fixture(scope="module")
def problem():
    X, y, groups = make_confusable_classification(
        n_samples=3000,
        n_classes=20,
        group_size=5,
        n_features=10,
        class_separation=2.5,
        random_state=0,
        return_groups=True,
    )
    return X[:1500], y[:1500], X[1500:], y[1500:], groups


@pytest.fixture(scope="module")
def generalist(problem):
    X, y, *_ = problem
    return small_generalist().fit(X, y)


def quick(generalist, **kw) -> SpecialistEnsembleClassifier:
    params = dict(n_specialists=4, specialist_max_epochs=3, random_state=0)
    return SpecialistEnsembleClassifier(generalist, **{**params, **kw})


def quick_frozen(generalist, **kw) -> SpecialistEnsembleClassifier:
    """``quick`` with a prefit generalist kept as it is (frozen)."""
    return quick(FrozenEstimator(generalist), **kw)


def test_clusters_recover_the_generator_groups(problem, generalist):
    X, y, _, _, groups = problem
    clf = quick_frozen(generalist).fit(X, y)
    assert len(clf.clusters_) == 4
    found = np.empty(20, dtype=int)
    for k, labels in enumerate(clf.clusters_):
        found[labels] = k
    assert sorted(np.concatenate(clf.clusters_).tolist()) == list(range(20))  # a partition
    assert adjusted_rand_score(groups, found) > 0.9


def test_frozen_generalist_is_used_as_is(problem, generalist):
    X, y, *_ = problem
    before = {k: v.clone() for k, v in generalist.module_.state_dict().items()}
    frozen = FrozenEstimator(generalist)
    clf = quick(frozen).fit(X, y)
    assert clf.generalist_ is frozen and frozen.estimator is generalist
    for k, v in generalist.module_.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(s.module is not generalist.module_ for s in clf.specialists_)


def test_fitted_generalist_that_is_not_frozen_is_cloned_and_refitted(problem, generalist):
    X, y, *_ = problem
    before = {k: v.clone() for k, v in generalist.module_.state_dict().items()}
    clf = quick(generalist, specialist_max_epochs=1).fit(X[:600], y[:600])
    assert clf.generalist_ is not generalist
    refit = clf.generalist_.module_.state_dict()
    assert any(not torch.equal(refit[k], v) for k, v in before.items())  # trained anew
    for k, v in generalist.module_.state_dict().items():  # the user's object untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_specialist_starts_as_the_collapsed_generalist(problem, generalist):
    X, *_, groups = problem
    subset = np.flatnonzero(groups == 0)  # a confusable group, as clustering would give
    module = init_specialist_module(generalist.module_, subset, "dustbin", X[:1000], 0.0)
    z_spec = predict_logits(module, X[1000:], device="cpu").astype(np.float64)  # (n, k+1)
    z_gen = predict_logits(generalist.module_, X[1000:], device="cpu").astype(np.float64)
    np.testing.assert_allclose(z_spec[:, :-1], z_gen[:, subset], rtol=1e-5, atol=1e-5)
    expected = collapse_probabilities(softmax(z_gen, axis=1), subset)
    error = np.abs(softmax(z_spec, axis=1) - expected).sum(axis=1).mean()
    # the dustbin row is a linear least-squares fit of logsumexp(outer logits); the
    # obvious alternative, the mean outer row plus log(#outer), is a lower bound of it
    outside = np.setdiff1d(np.arange(20), subset)
    naive = np.column_stack(
        [z_gen[:, subset], z_gen[:, outside].mean(axis=1) + np.log(len(outside))]
    )
    naive_error = np.abs(softmax(naive, axis=1) - expected).sum(axis=1).mean()
    assert error < 0.02
    assert error < 0.1 * naive_error


def test_dustbin_correction_restores_the_natural_rate():
    # four unit-variance Gaussian classes; the specialist covers class 0 only, so the
    # natural dustbin rate is 3/4 while it trains on half class 0, half the rest
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5], [1.5, 1.5]])

    def draw(n):
        y = rng.integers(0, 4, size=n)
        return (centers[y] + rng.normal(size=(n, 2))).astype(np.float32), y

    X, y = draw(4000)
    X_test, _ = draw(4000)
    generalist = small_generalist(hidden_layer_sizes=(16,), max_epochs=10).fit(X, y)
    subset = np.array([0])
    rows, correction = sample_rows(y, subset, 0.5, np.random.default_rng(1))
    assert np.isin(y[rows], subset).mean() == pytest.approx(0.5, abs=0.01)
    assert correction == pytest.approx(np.log(3.0), rel=0.05)  # r_d ~ 1/3

    config = TrainingConfig(loss="hard", learning_rate=1e-2, max_epochs=15, device="cpu")
    spec = fit_specialist(
        generalist.module_,
        X,
        rows,
        collapse_labels(y[rows], subset),
        None,
        subset,
        "dustbin",
        correction,
        config,
        seed=0,
    )
    corrected = spec.predict_proba(X_test)[:, -1]
    z = predict_logits(spec.module, X_test, device="cpu").astype(np.float64)
    z[:, -1] -= correction  # what the specialist learned before the correction
    uncorrected = softmax(z, axis=1)[:, -1]
    d2 = ((X_test[:, None, :] - centers[None]) ** 2).sum(-1)
    bayes = 1.0 - softmax(-d2 / 2.0, axis=1)[:, 0]  # true P(outside | x)

    assert abs(corrected.mean() - 0.75) < 0.03
    assert abs(uncorrected.mean() - 0.75) > 0.15  # the biased sample's rate, near 1/2
    assert np.abs(corrected - bayes).mean() < 0.5 * np.abs(uncorrected - bayes).mean()


def test_unlabeled_rows_are_sampled_as_the_teachers_class():
    v = np.array([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(row_classes(np.array([2, -1, -1]), v), [2, 0, 2])
    members = np.stack([v, v[:, ::-1] * 0], axis=1)  # (n, 2, C): second member uniform
    np.testing.assert_array_equal(row_classes(np.array([-1, -1, -1]), members), [1, 0, 2])


def test_teacher_logits_and_unlabeled_rows(problem):
    X, y, X_test, y_test, _groups = problem
    centers = np.stack([X[y == c].mean(axis=0) for c in range(20)])
    teacher = -((X[:, None, :] - centers[None]) ** 2).sum(-1) / 2.0  # (n, C) logits
    y_part = y.copy()
    y_part[::3] = -1  # a third unlabeled
    clf = SpecialistEnsembleClassifier(
        small_generalist(max_epochs=8),
        n_specialists=4,
        specialist_max_epochs=3,
        random_state=0,
    ).fit(X, y_part, teacher_logits=teacher)
    assert [s.kind for s in clf.specialists_] == ["dustbin"] * 4
    proba = clf.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.score(X_test, y_test) > 0.5


def test_full_softmax_specialists(problem, generalist):
    X, y, X_test, _, _ = problem
    clf = quick_frozen(generalist, specialist_type="full").fit(X, y)
    assert all(s.kind == "full" for s in clf.specialists_)
    assert all(s.predict_proba(X_test[:3]).shape == (3, 20) for s in clf.specialists_)
    details = clf.inference_details(X_test)
    assert details.converged.all()
    assert (details.n_iter[details.n_active > 0] == 1).all()  # closed form: one step


def test_only_active_specialists_change_predictions(problem, generalist):
    X, y, X_test, _, _ = problem
    clf = quick_frozen(generalist, class_subsets=[[0, 1, 2], [2, 3]], top_n=2).fit(X, y)
    p_g = generalist.predict_proba(X_test)
    top = np.argsort(-p_g, axis=1, kind="stable")[:, :2]
    untouched = ~np.isin(top, [0, 1, 2, 3]).any(axis=1)
    details = clf.inference_details(X_test)
    np.testing.assert_array_equal(details.n_active == 0, untouched)
    np.testing.assert_array_equal(details.proba[untouched], p_g[untouched])
    assert not np.allclose(details.proba[~untouched], p_g[~untouched])
    np.testing.assert_allclose(details.proba.sum(axis=1), 1.0)


def test_coverage_report_buckets_by_covering_specialists(problem, generalist):
    X, y, X_test, y_test, _ = problem
    clf = quick_frozen(generalist, class_subsets=[[0, 1, 2], [2, 3], [3, 4, 5]]).fit(X, y)
    report = clf.coverage_report(X_test, y_test)
    counts = {r.n_covering: r.count for r in report.rows}
    assert counts == {
        0: int((y_test >= 6).sum()),
        1: int(np.isin(y_test, [0, 1, 4, 5]).sum()),
        2: int(np.isin(y_test, [2, 3]).sum()),
    }
    assert report.overall.count == len(y_test)
    assert report.overall.ensemble_accuracy == pytest.approx(clf.score(X_test, y_test))
    assert report.overall.generalist_accuracy == pytest.approx(generalist.score(X_test, y_test))
    weighted = sum(r.count * r.ensemble_accuracy for r in report.rows) / len(y_test)
    assert weighted == pytest.approx(report.overall.ensemble_accuracy)
    assert "| 2 |" in report.to_markdown()


def test_parallel_fit_equals_serial_fit(problem, generalist):
    X, y, X_test, _, _ = problem
    serial = quick_frozen(generalist, n_jobs=1).fit(X, y)
    parallel = quick_frozen(generalist, n_jobs=2).fit(X, y)
    for a, b in zip(serial.specialists_, parallel.specialists_):
        np.testing.assert_array_equal(a.subset, b.subset)
        for (name, ta), tb in zip(a.module.state_dict().items(), b.module.state_dict().values()):
            torch.testing.assert_close(ta, tb, rtol=0, atol=1e-6, msg=name)
    np.testing.assert_allclose(
        serial.predict_proba(X_test), parallel.predict_proba(X_test), rtol=0, atol=1e-6
    )


def test_dask_backend(problem, generalist):
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_backend

    X, y, X_test, _, _ = problem
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        parallel_backend("dask"),
    ):
        clf = quick_frozen(generalist, n_jobs=2).fit(X, y)
    serial = quick_frozen(generalist, n_jobs=1).fit(X, y)
    np.testing.assert_allclose(
        clf.predict_proba(X_test), serial.predict_proba(X_test), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"top_n": 21}, InputError, r"top_n=21 is larger than the number of classes \(20\)"),
        ({"n_specialists": 21}, InputError, r"n_specialists=21 is larger than the number of"),
        (
            {"class_subsets": [[0, 1], [2, 99]]},
            ClassMismatchError,
            r"class_subsets\[1\] holds \[99\]",
        ),
        ({"class_subsets": [list(range(20))]}, InputError, "non-empty dustbin"),
        ({"class_subsets": []}, InputError, "class_subsets is empty"),
        ({"classes_per_specialist": 20}, InputError, "classes_per_specialist=20 must be smaller"),
        ({"classes_per_specialist": 5, "overlap": 0.1}, InputError, "overlap=0.1 applies"),
        ({"subset_share": 1.0}, ValueError, "subset_share"),
        ({"overlap": 1.0}, InputError, "overlap=1.0 puts every class into one subset"),
    ],
)
def test_bad_settings_name_the_problem(problem, generalist, params, error, match):
    X, y, *_ = problem
    with pytest.raises(error, match=match):
        quick_frozen(generalist, **params).fit(X, y)


def test_labels_unknown_to_a_fitted_generalist(problem, generalist):
    X, y, *_ = problem
    with pytest.raises(ClassMismatchError, match="20"):
        quick_frozen(generalist).fit(X, np.where(y == 0, 20, y))


def test_overlapping_subsets(problem, generalist):
    X, y, *_ = problem
    clf = quick_frozen(generalist, n_specialists=4, classes_per_specialist=8).fit(X, y)
    assert all(len(c) == 8 for c in clf.clusters_)
    clf = quick_frozen(generalist, n_specialists=4, overlap=0.2).fit(X, y)
    assert sum(len(c) for c in clf.clusters_) > 20  # some classes in two subsets


def test_docstring_example():
    result = doctest.testmod(kdpipe.specialists.estimator, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
