"""The scikit-learn estimator contract of SpecialistEnsembleClassifier."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier


def tiny() -> SpecialistEnsembleClassifier:
    generalist = DistilledClassifier(
        hidden_layer_sizes=(16,), learning_rate=3e-2, max_epochs=15, random_state=0
    )
    return SpecialistEnsembleClassifier(
        generalist, n_specialists=2, specialist_max_epochs=2, random_state=0
    )


EXPECTED_FAILED: dict[str, str] = {
    "check_methods_subset_invariance": (
        "the generalist and the specialists compute in float32 and BLAS picks kernels by "
        "batch size, so a row's probabilities can differ by ~1e-7 between a full and a "
        "one-row batch, above the check's rtol=1e-7 (the per-example KL optimization "
        "itself is batch-independent: tests/test_specialists_math.py); whether it shows "
        "depends on the CPU's BLAS kernels, hence xfail_strict=False, as for "
        "DistilledClassifier"
    ),
}


@parametrize_with_checks(
    [tiny()], expected_failed_checks=lambda est: EXPECTED_FAILED, xfail_strict=False
)
def test_sklearn_contract(estimator, check):
    check(estimator)
