"""The convolutional student (kdpipe.students.ConvNet): shapes, its sizes as module__*
parameters in GridSearchCV, and learning digits as 8x8 images."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, KFold
from torch import nn

import kdpipe.students
from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier
from kdpipe.errors import InputError
from kdpipe.students import ConvNet

CONV = {
    "module": ConvNet,
    "learning_rate": 1e-2,
    "batch_size": 64,
    "random_state": 0,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def digit_images():
    data = load_digits()
    return (data.images / 16).astype(np.float32)[:, None], data.target  # (1797, 1, 8, 8)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_convnet_takes_its_input_channels_and_size_from_the_sample_shape():
    net = ConvNet(
        n_features=3 * 32 * 32,
        n_classes=7,
        sample_shape=(3, 32, 32),
        channels=(4, 8, 16),
        kernel_size=5,
        hidden=12,
    )
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    convs = _convs(net)
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 4, (5, 5)),
        (4, 8, (5, 5)),
        (8, 16, (5, 5)),
    ]
    assert [(lin.in_features, lin.out_features) for lin in _linears(net)] == [
        (16 * 4 * 4, 12),
        (12, 7),
    ]
    one_channel = ConvNet(
        n_features=36, n_classes=3, sample_shape=(6, 6), channels=(2, 2, 2), hidden=0
    )
    assert one_channel(torch.zeros(4, 6, 6)).shape == (4, 3)  # 6 -> 3 -> 1 -> 1: pooling stops at 1
    assert [(lin.in_features, lin.out_features) for lin in _linears(one_channel)] == [(2, 3)]
    assert doctest.testmod(kdpipe.students).failed == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_shape": (64,)}, "takes images"),
        ({"sample_shape": (1, 8, 8), "kernel_size": 2}, "odd"),
        ({"sample_shape": (1, 8, 8), "channels": ()}, "channels"),
        ({"sample_shape": (1, 4, 16)}, None),  # any image shape of 64 values is fine
        ({"sample_shape": (2, 8, 8)}, "n_features=64"),
    ],
)
def test_convnet_refuses_what_it_cannot_build(kwargs, match):
    if match is None:
        ConvNet(n_features=64, n_classes=2, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        ConvNet(n_features=64, n_classes=2, **kwargs)


def test_the_estimator_builds_the_convnet_from_X_and_refuses_2d_X(digit_images):
    X, y = digit_images
    clf = DistilledClassifier(**CONV, module_params={"channels": (3,), "hidden": 5}, max_epochs=1)
    clf.fit(X[:200], y[:200])
    assert clf.module_.sample_shape == (1, 8, 8) and _convs(clf.module_)[0].in_channels == 1
    with pytest.raises(InputError, match="takes images"):
        clone(clf).fit(X[:200].reshape(200, 64), y[:200])
    with pytest.raises(InputError, match="must not set sample_shape"):
        DistilledClassifier(**CONV, module_params={"sample_shape": (1, 8, 8)}).fit(X[:200], y[:200])


def test_grid_search_tunes_the_convnet_sizes_as_module_params(digit_images):
    X, y = digit_images
    X, y = X[:240], y[:240]
    student = DistilledClassifier(**CONV, module_params={"kernel_size": 3}, max_epochs=1)
    grid = {"module__channels": [(2,), (6, 4)], "module__hidden": [0, 7]}
    search = GridSearchCV(student, grid, cv=KFold(2), error_score="raise").fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    best = search.best_estimator_
    routed = {k.removeprefix("module__"): v for k, v in search.best_params_.items()}
    assert best.module_params == {"kernel_size": 3, **routed}
    assert [c.out_channels for c in _convs(best.module_)] == list(
        search.best_params_["module__channels"]
    )
    hidden = search.best_params_["module__hidden"]
    linears = _linears(best.module_)
    assert [lin.out_features for lin in linears] == ([hidden, 10] if hidden else [10])
    # each candidate really is another network: the fitted sizes follow the parameters
    for params in search.cv_results_["params"]:
        net = clone(student).set_params(**params).fit(X, y).module_
        assert [c.out_channels for c in _convs(net)] == list(params["module__channels"])
        hidden = params["module__hidden"]
        assert [lin.out_features for lin in _linears(net)] == ([hidden, 10] if hidden else [10])


def test_convnet_student_learns_digit_images_well_above_chance(digit_images):
    X, y = digit_images
    clf = DistilledClassifier(
        **CONV, module_params={"channels": (8, 16), "hidden": 32}, max_epochs=5
    )
    clf.fit(X[:1200], y[:1200])
    accuracy = clf.score(X[1200:], y[1200:])
    assert accuracy > 0.8, accuracy  # chance is 0.1 (10 balanced classes); measured 0.90


def test_convnet_student_distills_from_teacher_logits_and_serves_as_a_generalist(digit_images):
    X, y = digit_images
    X, y = X[:300], y[:300]
    teacher = np.eye(10, dtype=np.float32)[y] * 6.0  # a confident teacher that is always right
    generalist = DistilledClassifier(
        **CONV, module_params={"channels": (4,), "hidden": 16}, max_epochs=2
    )
    generalist.fit(X, y, teacher_logits=teacher)
    ensemble = SpecialistEnsembleClassifier(
        generalist=generalist,
        n_specialists=2,
        specialist_max_epochs=1,
        random_state=0,
        device="cpu",
    ).fit(X, y, teacher_logits=teacher)
    specialist = ensemble.specialists_[0].module
    assert isinstance(
        specialist, ConvNet
    )  # a copy of the generalist's CNN, with a new output layer
    assert _linears(specialist)[-1].out_features == len(ensemble.specialists_[0].subset) + 1
    proba = ensemble.predict_proba(X[:10])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_a_grid_search_of_convnets_over_a_cache(tmp_path, digit_images):
    from kdpipe import build_cache

    X, y = digit_images
    images = np.round(X[:256] * 255).astype(np.uint8)
    y = y[:256]
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    cache = build_cache(teacher, images, tmp_path / "c.zarr", y=y, progress=False)
    with sklearn.config_context(enable_metadata_routing=True):
        student = DistilledClassifier(**CONV, module_params={"hidden": 8}, max_epochs=1)
        student.set_fit_request(teacher_logits=True)
        search = GridSearchCV(
            student,
            {"module__channels": [(2,), (4,)], "temperature": [2.0]},
            cv=KFold(2),
            error_score="raise",
        )
        search.fit(images, y, teacher_logits=cache)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.sample_shape_ == (1, 8, 8)
