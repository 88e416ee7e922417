"""The scikit-learn estimator contract of DistilledClassifier, check by check."""

from __future__ import annotations

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
            "row's logits can differ by ~1e-7 between a full and a partial batch, above "
            "the check's rtol=1e-7 (predicted classes agree); whether it shows depends on "
            "the CPU's BLAS kernels, hence xfail_strict=False"
        ),
    }


@parametrize_with_checks(
    [DistilledClassifier(**FAST)],
    expected_failed_checks=expected_failed_checks,
    xfail_strict=False,
)
def test_sklearn_contract(estimator, check):
    check(estimator)
