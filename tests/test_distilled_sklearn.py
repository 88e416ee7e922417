"""The scikit-learn estimator contract of DistilledClassifier, check by check."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from kdpipe.distilled import DistilledClassifier

# The fast settings every check runs with: a tiny MLP, few epochs, a fixed seed.
FAST = dict(
    hidden_layer_sizes=(16,), learning_rate=1e-2, max_epochs=20, random_state=0, device="cpu"
)


def expected_failed_checks(estimator: DistilledClassifier) -> dict[str, str]:
    return {
        "check_methods_subset_invariance": (
            "the student computes in float32 and BLAS picks kernels by batch size, so a "
            "row's logits differ by ~1e-7 between a 20-row and a one-row batch, above "
            "the check's atol=1e-7 (measured: 1.2e-7 at one of 60 entries). "
            "test_methods_are_subset_invariant_within_float32_rounding runs the same "
            "check with a stated tolerance"
        ),
    }


@parametrize_with_checks(
    [DistilledClassifier(**FAST)],
    expected_failed_checks=expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_methods_are_subset_invariant_within_float32_rounding():
    # scikit-learn's check_methods_subset_invariance (same data, same seed), with
    # rtol=1e-5 / atol=1e-6 (some float32 ulps) instead of 1e-7, and predict exact
    rng = np.random.RandomState(0)
    X = 3 * rng.uniform(size=(20, 3))
    y = X[:, 0].astype(int)
    clf = clone(DistilledClassifier(**FAST)).set_params(random_state=1).fit(X, y)
    np.testing.assert_array_equal(
        np.concatenate([clf.predict(row[None]) for row in X]), clf.predict(X)
    )
    for method in ("decision_function", "predict_proba", "predict_log_proba"):
        full = getattr(clf, method)(X)
        by_row = np.concatenate([getattr(clf, method)(row[None]) for row in X])
        np.testing.assert_allclose(by_row, full, rtol=1e-5, atol=1e-6, err_msg=method)
