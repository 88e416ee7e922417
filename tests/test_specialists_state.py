"""SpecialistEnsembleClassifier state: clone equals fit, failed fits, where modules live.

Torch runs single-threaded here (see conftest.py).
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator

from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier
from kdpipe.datasets import make_confusable_classification


def small_generalist(**kw) -> DistilledClassifier:
    params = dict(
        hidden_layer_sizes=(16,), learning_rate=1e-2, max_epochs=5, random_state=0, device="cpu"
    )
    return DistilledClassifier(**{**params, **kw})


def ensemble(generalist, **kw) -> SpecialistEnsembleClassifier:
    params = dict(n_specialists=3, specialist_max_epochs=2, random_state=0, device="cpu")
    return SpecialistEnsembleClassifier(generalist, **{**params, **kw})


@pytest.fixture(scope="module")
def data():
    X, y = make_confusable_classification(
        n_samples=900, n_classes=12, group_size=4, n_features=8, random_state=0
    )
    return X[:600], y[:600], X[600:], y[600:]


@pytest.fixture(scope="module")
def prefit(data):
    X, y, *_ = data
    return small_generalist(random_state=1).fit(X, y)


def state_dicts(est: SpecialistEnsembleClassifier) -> list[dict[str, torch.Tensor]]:
    modules = [est.generalist_.module_] + [s.module for s in est.specialists_]
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


# ---------------------------------------------------------------- clone(est).fit == est.fit
@pytest.mark.parametrize("kind", ["default", "unfitted", "frozen", "fitted, not frozen"])
def test_clone_fit_equals_fit(data, prefit, kind):
    X, y, X_test, _ = data
    generalist = {
        "default": None,
        "unfitted": small_generalist(),
        "frozen": FrozenEstimator(prefit),
        "fitted, not frozen": prefit,
    }[kind]
    est = ensemble(generalist)
    proba = est.fit(X, y).predict_proba(X_test)
    cloned = clone(est).fit(X, y)
    np.testing.assert_allclose(cloned.predict_proba(X_test), proba, rtol=0, atol=1e-6)
    if kind == "frozen":
        assert est.generalist_ is generalist and cloned.generalist_ is generalist
    else:
        assert est.generalist_ is not generalist and cloned.generalist_ is not generalist


# ---------------------------------------------------------------- failed fits change nothing
@pytest.fixture(scope="module")
def fitted(data):
    X, y, *_ = data
    return ensemble(small_generalist()).fit(X, y)


@pytest.fixture(scope="module")
def fitted_frozen(data, prefit):
    X, y, *_ = data
    return ensemble(FrozenEstimator(prefit)).fit(X, y)


def logits_like(X: np.ndarray, n_classes: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(len(X), n_classes)).astype(np.float32)


def with_nan(X: np.ndarray) -> np.ndarray:
    X = X.copy()
    X[3, 1] = np.nan
    return X


FAILURES = {
    # name: (which fitted estimator, parameters to set, how to build the bad fit arguments)
    "fewer features than the frozen generalist": ("frozen", {}, lambda X, y: ((X[:, :5], y), {})),
    "NaN in X": ("plain", {}, lambda X, y: ((with_nan(X), y), {})),
    "y of another length": ("plain", {}, lambda X, y: ((X, y[:-3]), {})),
    "continuous y": ("plain", {}, lambda X, y: ((X, y + 0.5), {})),
    "a label the frozen generalist lacks": (
        "frozen",
        {},
        lambda X, y: ((X, np.where(y == 0, 99, y)), {}),
    ),
    "no y and no teacher": ("plain", {}, lambda X, y: ((X, None), {})),
    "top_n above the classes": ("plain", {"top_n": 13}, lambda X, y: ((X, y), {})),
    "more specialists than classes": ("frozen", {"n_specialists": 13}, lambda X, y: ((X, y), {})),
    "a subset with an unknown class": (
        "frozen",
        {"class_subsets": [[0, 1], [2, 99]]},
        lambda X, y: ((X, y), {}),
    ),
    "a subset of every class": (
        "frozen",
        {"class_subsets": [list(range(12))]},
        lambda X, y: ((X, y), {}),
    ),
    "overlap with classes_per_specialist": (
        "plain",
        {"classes_per_specialist": 3, "overlap": 0.5},
        lambda X, y: ((X, y), {}),
    ),
    "subset_share out of range": ("plain", {"subset_share": 1.0}, lambda X, y: ((X, y), {})),
    "teacher logits with a class too many (frozen generalist)": (
        "frozen",
        {},
        lambda X, y: ((X, y), {"teacher_logits": logits_like(X, 13)}),
    ),
    "teacher logits with a class too many (generalist fitted here)": (
        "plain",
        {},
        lambda X, y: ((X, y), {"teacher_logits": logits_like(X, 13)}),
    ),
    "teacher logits with rows missing": (
        "frozen",
        {},
        lambda X, y: ((X, y), {"teacher_logits": logits_like(X[:-1], 12)}),
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_fit_leaves_the_fitted_estimator_as_it_was(data, fitted, fitted_frozen, failure):
    X, y, X_test, _ = data
    which, params, make_args = FAILURES[failure]
    est = copy.deepcopy(fitted if which == "plain" else fitted_frozen)
    attributes = {k: v for k, v in vars(est).items() if k.endswith("_")}
    weights = state_dicts(est)
    proba = est.predict_proba(X_test)
    args, kwargs = make_args(X, y)

    est.set_params(**params)
    with pytest.raises(ValueError):  # every kdpipe input error is a ValueError too
        est.fit(*args, **kwargs)

    assert {k: v for k, v in vars(est).items() if k.endswith("_")}.keys() == attributes.keys()
    for name, value in attributes.items():
        assert getattr(est, name) is value, name  # not even replaced by an equal object
    for before, after in zip(weights, state_dicts(est)):
        for k in before:
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    est.set_params(**{k: getattr(fitted, k) for k in params})
    np.testing.assert_array_equal(est.predict_proba(X_test), proba)


# ---------------------------------------------------------------- where fitted modules live
def all_parameters(est: SpecialistEnsembleClassifier) -> list[torch.Tensor]:
    modules = [est.generalist_.module_] + [s.module for s in est.specialists_]
    return [t for m in modules for t in [*m.parameters(), *m.buffers()]]


def test_default_device_is_auto():
    assert SpecialistEnsembleClassifier().device == "auto"
    assert SpecialistEnsembleClassifier().get_params()["device"] == "auto"


def test_fitted_modules_are_on_the_cpu_after_predict_and_pickle(data, fitted):
    _X, _y, X_test, _ = data
    est = copy.deepcopy(fitted)
    est.predict_proba(X_test)
    assert all(t.device.type == "cpu" for t in all_parameters(est))
    assert all(t.device.type == "cpu" for t in all_parameters(pickle.loads(pickle.dumps(est))))


@pytest.mark.gpu
def test_cuda_fit_and_predict_leave_every_module_on_the_cpu(data):
    X, y, X_test, _ = data
    est = ensemble(small_generalist(device="cuda"), device="cuda").fit(X, y)
    assert all(t.device.type == "cpu" for s in est.specialists_ for t in s.module.parameters())
    est.predict_proba(X_test)
    assert all(t.device.type == "cpu" for s in est.specialists_ for t in s.module.parameters())
    restored = pickle.loads(pickle.dumps(est))
    assert all(t.device.type == "cpu" for s in restored.specialists_ for t in s.module.parameters())
    cpu = copy.deepcopy(est).set_params(device="cpu")
    np.testing.assert_allclose(cpu.predict_proba(X_test), est.predict_proba(X_test), atol=1e-5)
