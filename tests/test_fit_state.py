"""A failed fit leaves a fitted DistilledClassifier exactly as it was; prediction leaves
the student where it lives (the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdpipe import DistilledClassifier

zarr = pytest.importorskip("zarr")

FAST = dict(
    hidden_layer_sizes=(8,),
    learning_rate=1e-2,
    max_epochs=2,
    batch_size=32,
    random_state=0,
    device="cpu",
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4)).astype(np.float32)
    y = np.array(["a", "b", "c"])[np.argmax(X[:, :3], axis=1)]
    logits = (3 * X[:, :3]).astype(np.float32)  # (n, C), class order a, b, c
    return X, y, logits


def _zarr(path, array):
    z = zarr.create_array(
        store=str(path), shape=array.shape, dtype=array.dtype, chunks=(32, *array.shape[1:])
    )
    z[...] = array
    return z


def _failures(data, tmp_path, warm_start):
    """name -> (set_params, fit args); every one of these fits raises."""
    X, y, logits = data
    nan_logits = logits.copy()
    nan_logits[5, 1] = np.nan
    late_nan = logits.copy()
    late_nan[-1, 0] = np.inf  # read in the last minibatches: training has already begun
    return {
        # with warm_start the width itself is the error; without it, a later check fails
        # after X (of another width) was validated
        "different number of features": (
            {},
            (X[:, :3], y),
            {"teacher_logits": logits if warm_start else logits[:, :2]},
        ),
        "a label the classes lack": (
            {"classes": ["a", "b", "c"]},
            (X, np.where(y == "c", "d", y)),
            {"teacher_logits": logits},
        ),
        "wrong logits shape": ({}, (X, y), {"teacher_logits": logits[:, :2]}),
        "logits rows not aligned": ({}, (X, y), {"teacher_logits": logits[:-1]}),
        "NaN in in-memory logits": ({}, (X, y), {"teacher_logits": nan_logits}),
        "inf in on-disk logits, mid-training": (
            {},
            (X, y),
            {"teacher_logits": _zarr(tmp_path / "v.zarr", late_nan)},
        ),
        "early stopping impossible": (
            {"early_stopping": True, "validation_fraction": 0.01},
            (X[:20], y[:20]),
            {"teacher_logits": logits[:20]},
        ),
        # one SGD step moves the weights by ~1e38: the next forward pass overflows
        "non-finite loss": (
            {"optimizer": "sgd", "learning_rate": 1e38},
            (X, y),
            {"teacher_logits": logits},
        ),
        "invalid parameter": ({"temperature": -1.0}, (X, y), {"teacher_logits": logits}),
        "y of the wrong length": ({}, (X, y[:-1]), {"teacher_logits": logits}),
    }


def _snapshot(clf: DistilledClassifier, X: np.ndarray) -> dict:
    return {
        "params": clf.get_params(),
        "attrs": {k: v for k, v in vars(clf).items() if k.endswith("_") and k != "module_"},
        "weights": {k: v.clone() for k, v in clf.module_.state_dict().items()},
        "history": [dict(r) for r in clf.history_],
        "proba": clf.predict_proba(X),
    }


@pytest.mark.parametrize("warm_start", [False, True])
def test_every_kind_of_failed_fit_leaves_the_estimator_as_it_was(data, tmp_path, warm_start):
    X, y, logits = data
    clf = DistilledClassifier(warm_start=warm_start, **FAST).fit(X, y, teacher_logits=logits)
    module = clf.module_
    for name, (params, args, kwargs) in _failures(data, tmp_path, warm_start).items():
        before = _snapshot(clf, X)
        original = clf.get_params()
        clf.set_params(**params)
        with pytest.raises((ValueError, FloatingPointError)):
            clf.fit(*args, **kwargs)
            pytest.fail(f"{name}: fit did not fail")
        clf.set_params(**original)
        after = _snapshot(clf, X)
        assert clf.module_ is module, name
        assert after["attrs"].keys() == before["attrs"].keys(), name
        for key, value in before["attrs"].items():
            np.testing.assert_array_equal(
                np.asarray(after["attrs"][key], dtype=object),
                np.asarray(value, dtype=object),
                err_msg=name,
            )
        assert all(torch.equal(after["weights"][k], v) for k, v in before["weights"].items()), name
        assert after["history"] == before["history"], name
        np.testing.assert_array_equal(after["proba"], before["proba"], err_msg=name)


def test_a_failed_fit_of_a_new_estimator_leaves_it_unfitted(data):
    X, y, logits = data
    clf = DistilledClassifier(**FAST)
    with pytest.raises(ValueError):
        clf.fit(X, y, teacher_logits=logits[:, :2])
    assert not [k for k in vars(clf) if k.endswith("_")]


def test_predict_leaves_the_student_on_the_cpu(data):
    X, y, logits = data
    clf = DistilledClassifier(**FAST).fit(X, y, teacher_logits=logits)
    assert {p.device.type for p in clf.module_.parameters()} == {"cpu"}
    clf.set_params(device="auto").predict(X)
    assert {p.device.type for p in clf.module_.parameters()} == {"cpu"}


@pytest.mark.gpu
def test_fit_and_predict_on_cuda_leave_the_student_on_the_cpu(data):
    X, y, logits = data
    clf = DistilledClassifier(**{**FAST, "device": "cuda"}).fit(X, y, teacher_logits=logits)
    assert {p.device.type for p in clf.module_.parameters()} == {"cpu"}
    proba = clf.predict_proba(X)
    assert {p.device.type for p in clf.module_.parameters()} == {"cpu"}
    cpu = clf.set_params(device="cpu").predict_proba(X)
    np.testing.assert_allclose(proba, cpu, atol=1e-5)
