"""The scikit-learn estimator contract of SpecialistEnsembleClassifier."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier


def tiny() -> SpecialistEnsembleClassifier:
    # on the CPU: the contract includes "same seed, same model", which CUDA kernels
    # do not promise
    generalist = DistilledClassifier(
        hidden_layer_sizes=(16,),
        learning_rate=3e-2,
        max_epochs=15,
        random_state=0,
        device="cpu",
    )
    return SpecialistEnsembleClassifier(
        generalist, n_specialists=2, specialist_max_epochs=2, random_state=0, device="cpu"
    )


EXPECTED_FAILED: dict[str, str] = {
    "check_methods_subset_invariance": (
        "the generalist and the specialists compute in float32 and BLAS picks kernels by "
        "batch size, so a row's probabilities differ by ~1e-7 between a 20-row and a "
        "one-row batch, above the check's atol=1e-7 (measured: up to 2e-7 at 4 of 60 "
        "entries; the per-example KL optimization itself is batch-independent: "
        "tests/test_specialists_math.py). "
        "test_methods_are_subset_invariant_within_float32_rounding runs the same check "
        "with a stated tolerance"
    ),
}


# not strict: whether any of the 60 entries crosses 1e-7 depends on the trained weights
# (measured: it does at 4 entries, and at none after the hard term became a mean
# reduction, which moves the weights by float32 rounding)
@parametrize_with_checks(
    [tiny()], expected_failed_checks=lambda est: EXPECTED_FAILED, xfail_strict=False
)
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_methods_are_subset_invariant_within_float32_rounding():
    # scikit-learn's check_methods_subset_invariance (same data, same seed), with
    # rtol=1e-5 / atol=1e-6 (some float32 ulps) instead of 1e-7, and predict exact
    rng = np.random.RandomState(0)
    X = 3 * rng.uniform(size=(20, 3))
    y = X[:, 0].astype(int)
    clf = clone(tiny()).set_params(random_state=1).fit(X, y)
    np.testing.assert_array_equal(
        np.concatenate([clf.predict(row[None]) for row in X]), clf.predict(X)
    )
    full = clf.predict_proba(X)
    by_row = np.concatenate([clf.predict_proba(row[None]) for row in X])
    np.testing.assert_allclose(by_row, full, rtol=1e-5, atol=1e-6)
