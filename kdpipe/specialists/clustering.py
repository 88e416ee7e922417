"""Confusable class subsets from the generalist alone (Hinton et al. 2015, section 5.2).

Classes that the generalist often predicts together have similar columns in the
covariance matrix of its predicted probabilities. Two classes are close when their
predicted probabilities are strongly correlated (or, as in the paper, when their
covariance columns are close), and average-linkage agglomerative clustering groups
the classes by these distances; no labels are used, so unlabeled transfer rows count
as much as labeled ones.

The paper clusters with an on-line K-means. A K-means start is fragile here, and
restarts do not cure it: on 50 random problems of
:func:`~kdpipe.datasets.make_confusable_classification` (3-10 groups of 2-8 classes,
``benchmarks/bench_clustering.py``), kdpipe's former mini-batch K-means recovered the
groups with an adjusted Rand index (ARI) of 0.18 at worst (median 0.92, mean 0.80),
and ten k-means++ restarts kept by their objective still 0.46 at worst (mean 0.98):
when the classes of a group are rarely confused with each other, the group is not
compact in covariance space, and the best K-means objective may split it and merge
two others. Average linkage needs no start, is deterministic, and recovered every
group of the 50 problems (ARI 1.0; 0.72 at worst, mean 0.98, on harder problems with
closer groups and fewer rows).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from kdpipe.errors import ClassMismatchError, InputError

__all__ = [
    "prediction_covariance",
    "class_points",
    "class_distances",
    "cluster_classes",
    "parse_class_subsets",
]


def prediction_covariance(proba: np.ndarray) -> np.ndarray:
    """Covariance ``(C, C)`` of the columns of predicted probabilities ``(n, C)``."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] < 2:
        raise ValueError(f"need predicted probabilities of shape (n >= 2, C), got {proba.shape}")
    centered = proba - proba.mean(axis=0)  # (n, C)
    return centered.T @ centered / (proba.shape[0] - 1)  # (C, C)


def class_points(proba: np.ndarray, features: str = "correlation") -> np.ndarray:
    """The point of each class: row ``c`` of the ``(C, C)`` result is class ``c``'s column.

    ``"covariance"``: the columns of :func:`prediction_covariance` (the paper).
    ``"correlation"``: the columns of the correlation matrix, i.e. the covariance
    divided by both standard deviations; a class never predicted (zero variance)
    gets a zero column.
    """
    points = prediction_covariance(proba)  # (C, C): row c = column c (symmetric)
    if features == "covariance":
        return points
    if features != "correlation":
        raise ValueError(f"features must be 'correlation' or 'covariance', got {features!r}")
    sd = np.sqrt(np.diag(points))  # (C,)
    scale = np.where(sd > 0, sd, 1.0)
    return points / scale[:, None] / scale[None, :]


def class_distances(proba: np.ndarray, features: str = "correlation") -> np.ndarray:
    """Pairwise distances ``(C, C)`` between classes, zero on the diagonal.

    ``"correlation"``: ``1 - r_ij``, with ``r_ij`` the correlation of the predicted
    probabilities of classes ``i`` and ``j`` (0 for two classes always predicted
    together, 1 for unrelated ones, up to 2). ``"covariance"``: the Euclidean
    distance between the two classes' covariance columns (the paper's points).
    """
    points = class_points(proba, features)  # (C, C)
    if features == "correlation":
        distances = 1.0 - points
    else:
        sq = (points**2).sum(axis=1)  # (C,)
        distances = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2.0 * points @ points.T, 0, None))
    distances = (distances + distances.T) / 2.0  # exactly symmetric
    np.fill_diagonal(distances, 0.0)
    return distances


def cluster_classes(
    proba: np.ndarray,
    n_clusters: int,
    *,
    classes_per_cluster: int | None = None,
    overlap: float = 0.0,
    features: str = "correlation",
) -> list[np.ndarray]:
    """Class subsets by average-linkage clustering of the generalist's co-predictions.

    Parameters
    ----------
    proba : ndarray of shape (n, C)
        The generalist's predicted probabilities on the transfer set.
    n_clusters : int
        Number of subsets (one per specialist), at most ``C``.
    classes_per_cluster : int, optional
        ``None``: the clusters partition the classes (sizes vary), widened by
        ``overlap``. An int ``k``: each subset is the ``k`` classes nearest its
        cluster (by mean distance to its members), so subsets have equal sizes, may
        overlap, and some classes may belong to no subset.
    overlap : float >= 0, default=0.0
        Partition mode only: a class also joins every other cluster whose mean
        distance to it is within ``(1 + overlap)`` times the mean distance to the
        other members of its own cluster.
    features : {"correlation", "covariance"}, default="correlation"
        The distances (:func:`class_distances`): one minus the correlation of two
        classes' predicted probabilities, or the Euclidean distance between their
        columns of the covariance matrix (the paper's points). Classes the
        generalist predicts with very different confidence have covariance columns
        of very different length, so covariance distances group classes by scale as
        much as by confusion; correlations do not.

    Returns
    -------
    list of ndarray of int
        Sorted class codes of each subset, ordered by their smallest code. Identical
        subsets are merged (possible with ``classes_per_cluster``), so fewer than
        ``n_clusters`` subsets may come back.

    Notes
    -----
    Average linkage (:class:`sklearn.cluster.AgglomerativeClustering` on the
    precomputed distances) starts from one cluster per class and merges, step by
    step, the two clusters with the smallest mean distance between their members,
    until ``n_clusters`` remain. It needs no start, is deterministic, never leaves a
    cluster empty, and takes ``O(C^2)`` memory, the size of the covariance matrix
    itself. See the module notes for why it replaces the paper's K-means.
    """
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    if not 1 <= n_clusters <= n_classes:
        raise ValueError(f"n_clusters={n_clusters} must lie in [1, {n_classes}] (the classes)")
    if classes_per_cluster is not None and not 1 <= classes_per_cluster < n_classes:
        raise ValueError(
            f"classes_per_cluster={classes_per_cluster} must lie in [1, {n_classes - 1}]"
        )
    distances = class_distances(proba, features)  # (C, C)
    if n_clusters == n_classes:
        labels = np.arange(n_classes)
    else:
        labels = AgglomerativeClustering(
            n_clusters=n_clusters, metric="precomputed", linkage="average"
        ).fit_predict(distances)  # (C,)
    member = np.zeros((n_classes, n_clusters), dtype=bool)  # (C, K)
    member[np.arange(n_classes), labels] = True
    # mean distance of each class to the members of each cluster, itself left out
    others = member.sum(axis=0)[None, :] - member  # (C, K)
    to_cluster = distances @ member / np.maximum(others, 1)  # (C, K)
    if classes_per_cluster is not None:
        order = np.argsort(to_cluster, axis=0, kind="stable")  # (C, K)
        subsets = [np.sort(order[:classes_per_cluster, k]) for k in range(n_clusters)]
    else:
        if overlap > 0:
            own = to_cluster[np.arange(n_classes), labels][:, None]  # (C, 1)
            member |= to_cluster <= own * (1.0 + overlap)
        subsets = [np.flatnonzero(member[:, k]) for k in range(n_clusters)]
    unique = {tuple(s.tolist()) for s in subsets}
    return [np.asarray(s, dtype=np.intp) for s in sorted(unique)]


def parse_class_subsets(class_subsets: list, classes: np.ndarray) -> list[np.ndarray]:
    """Class codes of user-given subsets of labels; raise naming any bad subset.

    Each subset must hold 1 to ``C - 1`` distinct labels of ``classes`` (a specialist
    needs a non-empty dustbin).
    """
    lookup = {label: code for code, label in enumerate(np.asarray(classes).tolist())}
    if len(class_subsets) == 0:
        raise InputError("class_subsets is empty: give at least one subset, or None")
    subsets = []
    for i, labels in enumerate(class_subsets):
        labels = np.asarray(labels).ravel().tolist()
        unknown = [label for label in labels if label not in lookup]
        if unknown:
            raise ClassMismatchError(
                f"class_subsets[{i}] holds {unknown!r}, which are not classes of the "
                f"generalist ({list(lookup)[:20]!r})"
            )
        if not 0 < len(set(labels)) < len(lookup) or len(set(labels)) != len(labels):
            raise InputError(
                f"class_subsets[{i}]={labels!r} must hold 1 to {len(lookup) - 1} distinct "
                "classes (a specialist needs a non-empty dustbin)"
            )
        subsets.append(np.sort(np.array([lookup[label] for label in labels], dtype=np.intp)))
    return subsets
