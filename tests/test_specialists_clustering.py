"""Label-free class subsets (section 5.2) recover the confusable groups of many problems.

The generalist here is a quick, independent one: the Gaussian posterior of the empirical
class means (a nearest-centroid classifier), so these tests exercise the clustering and
not the training. ``benchmarks/bench_clustering.py`` reports the ARI distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import adjusted_rand_score

from kdpipe import DistilledClassifier
from kdpipe.datasets import make_confusable_classification
from kdpipe.specialists import cluster_classes, prediction_covariance
from kdpipe.specialists.clustering import class_distances, class_points


def nearest_centroid_proba(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    centers = np.stack([X[y == c].mean(axis=0) for c in range(n_classes)])  # (C, d)
    d2 = ((X[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(axis=-1)  # (n, C)
    return softmax(-d2 / 2.0, axis=1)


def labels_of(subsets: list[np.ndarray], n_classes: int) -> np.ndarray:
    found = np.full(n_classes, -1)
    for k, subset in enumerate(subsets):
        assert (found[subset] == -1).all(), "subsets overlap"
        found[subset] = k
    assert (found >= 0).all(), "some class is in no subset"
    return found


def random_problem(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Probabilities, true groups and group count of a random confusable problem."""
    rng = np.random.default_rng(seed)
    n_groups, size = int(rng.integers(3, 9)), int(rng.integers(2, 7))
    n_classes = n_groups * size
    X, y, groups = make_confusable_classification(
        n_samples=60 * n_classes,
        n_classes=n_classes,
        n_groups=n_groups,
        n_features=int(rng.integers(8, 17)),
        group_separation=float(rng.uniform(8.0, 14.0)),
        class_separation=float(rng.uniform(1.5, 4.0)),
        random_state=seed,
        return_groups=True,
    )
    return nearest_centroid_proba(X, y, n_classes), groups, n_groups


@pytest.mark.parametrize("seed", range(24))
def test_groups_are_recovered_on_random_problems(seed):
    proba, groups, n_groups = random_problem(seed)
    subsets = cluster_classes(proba, n_groups)
    assert len(subsets) == n_groups
    assert adjusted_rand_score(groups, labels_of(subsets, len(groups))) >= 0.9


def test_forty_classes_in_eight_groups_of_five_with_a_trained_generalist():
    # the case of issue 8, where one K-means start merged two groups (ARI 0.71)
    X, y, groups = make_confusable_classification(
        n_samples=4000,
        n_classes=40,
        group_size=5,
        n_features=20,
        random_state=0,
        return_groups=True,
    )
    generalist = DistilledClassifier(
        hidden_layer_sizes=(32,),
        learning_rate=1e-2,
        max_epochs=8,
        random_state=0,
        device="cpu",
    ).fit(X, y)
    subsets = cluster_classes(generalist.predict_proba(X), 8)
    assert sorted(len(s) for s in subsets) == [5] * 8
    assert adjusted_rand_score(groups, labels_of(subsets, 40)) == pytest.approx(1.0)


def test_correlation_points_are_the_covariance_scaled_by_standard_deviations():
    proba = softmax(np.random.default_rng(0).normal(size=(200, 6)), axis=1)
    proba[:, 5] = 0.0  # a class never predicted: zero variance
    points = class_points(proba, "correlation")
    np.testing.assert_allclose(points[:5, :5], np.corrcoef(proba[:, :5], rowvar=False))
    np.testing.assert_array_equal(points[5], 0.0)
    np.testing.assert_allclose(class_points(proba, "covariance"), np.cov(proba, rowvar=False))
    np.testing.assert_allclose(prediction_covariance(proba), np.cov(proba, rowvar=False))


def test_distances_are_one_minus_correlation_or_between_covariance_columns():
    proba = softmax(np.random.default_rng(1).normal(size=(100, 5)), axis=1)
    corr = np.corrcoef(proba, rowvar=False)
    np.testing.assert_allclose(class_distances(proba), 1.0 - corr, atol=1e-12)
    cov = np.cov(proba, rowvar=False)
    expected = np.linalg.norm(cov[:, None, :] - cov[None, :, :], axis=-1)
    np.testing.assert_allclose(class_distances(proba, "covariance"), expected, atol=1e-12)


def test_partition_overlap_and_fixed_size_modes():
    proba, groups, n_groups = random_problem(0)
    n_classes = len(groups)
    partition = cluster_classes(proba, n_groups)
    labels_of(partition, n_classes)  # a partition
    again = cluster_classes(proba, n_groups)  # deterministic: no seed
    assert [s.tolist() for s in again] == [s.tolist() for s in partition]
    D = class_distances(proba)

    def mean_distance(c, cluster):  # to the cluster's members other than c
        others = [j for j in cluster if j != c]
        return np.mean(D[c, others]) if others else 0.0

    own = {c: mean_distance(c, k) for k in partition for c in k}
    for overlap in (0.5, 2.0):
        wide = cluster_classes(proba, n_groups, overlap=overlap)
        expected = [
            [
                c
                for c in range(n_classes)
                if c in small or mean_distance(c, small) <= (1 + overlap) * own[c]
            ]
            for small in partition
        ]
        assert sorted(tuple(s.tolist()) for s in wide) == sorted(set(map(tuple, expected)))
        if overlap == 0.5:  # some classes in two subsets, not every class in all
            assert n_classes < sum(len(s) for s in wide) < n_groups * n_classes
    fixed = cluster_classes(proba, n_groups, classes_per_cluster=2)
    assert all(len(s) == 2 for s in fixed)
    for s in fixed:  # two classes of one true group, the nearest to its centroid
        assert len(set(groups[s].tolist())) == 1


def test_one_cluster_and_one_cluster_per_class():
    proba, groups, _ = random_problem(1)
    n_classes = len(groups)
    (everything,) = cluster_classes(proba, 1)
    np.testing.assert_array_equal(everything, np.arange(n_classes))
    singletons = cluster_classes(proba, n_classes)
    assert [s.tolist() for s in singletons] == [[c] for c in range(n_classes)]
    with pytest.raises(
        ValueError, match=rf"n_clusters={n_classes + 1} must lie in \[1, {n_classes}\]"
    ):
        cluster_classes(proba, n_classes + 1)
    with pytest.raises(ValueError, match="features must be"):
        cluster_classes(proba, 2, features="cosine")
