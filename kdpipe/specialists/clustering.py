"""Confusable class subsets from the generalist alone (Hinton et al. 2015, section 5.2).

Classes that the generalist often predicts together have similar columns in the
covariance matrix of its predicted probabilities. Each class becomes a point (its
column of the ``C x C`` covariance, or correlation, matrix) and the points are grouped
by average-linkage agglomerative clustering; no labels are used, so unlabeled transfer
rows count as much as labeled ones.

The paper clusters the same points with an on-line K-means. A single K-means start is
fragile here, and restarts do not cure it: on 50 random problems of
:func:`~kdpipe.datasets.make_confusable_classification` (3-10 groups of 2-8 classes),
one mini-batch K-means run recovered the groups with an adjusted Rand index (ARI) of
0.18 at worst (median 0.92, mean 0.80), and ten k-means++ restarts kept by their
objective still 0.46 at worst (mean 0.98; fifty restarts 0.29): with well separated
classes the points of one group are not compact, and the best K-means objective can
split a group and merge two others. Average linkage needs no start, is deterministic,
and recovered every group of the 50 problems (ARI 1.0);
``benchmarks/bench_clustering.py`` measures it.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from kdpipe.errors import ClassMismatchError, InputError

__all__ = ["prediction_covariance", "class_points", "cluster_classes", "parse_class_subsets"]


def prediction_covariance(proba: np.ndarray) -> np.ndarray:
    """Covariance ``(C, C)`` of the columns of predicted probabilities ``(n, C)``."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] < 2:
        raise ValueError(
            f"need predicted probabilities of shape (n >= 2, C), got {proba.shape}"
        )
    centered = proba - proba.mean(axis=0)  # (n, C)
    return centered.T @ centered / (proba.shape[0] - 1)  # (C, C)


def class_points(proba: np.ndarray, features: str = "correlation") -> np.ndarray:
    """The point ``(C,)`` of each class that clustering groups: ``(C, C)``, row ``c``.

    ``"covariance"``: class ``c``'s column of :func:`prediction_covariance` (the
    paper). ``"correlation"``: that column divided by the standard deviations, i.e.
    the correlation matrix's column; a class never predicted (zero variance) gets a
    zero column.
    """
    points = prediction_covariance(proba)  # (C, C): row c = column c (symmetric)
    if features == "covariance":
        return points
    if features != "correlation":
        raise ValueError(f"features must be 'correlation' or 'covariance', got {features!r}")
    sd = np.sqrt(np.diag(points))  # (C,)
    scale = np.where(sd > 0, sd, 1.0)
    return points / scale[:, None] / scale[None, :]


def cluster_classes(
    proba: np.ndarray,
    n_clusters: int,
    *,
    classes_per_cluster: int | None = None,
    overlap: float = 0.0,
    features: str = "correlation",
) -> list[np.ndarray]:
    """Class subsets by average-linkage clustering of the prediction covariance columns.

    Parameters
    ----------
    proba : ndarray of shape (n, C)
        The generalist's predicted probabilities on the transfer set.
    n_clusters : int
        Number of subsets (one per specialist), at most ``C``.
    classes_per_cluster : int, optional
        ``None``: the clusters partition the classes (sizes vary), widened by
        ``overlap``. An int ``k``: each subset is the ``k`` classes nearest its
        cluster's centroid (the mean of its points), so subsets have equal sizes, may
        overlap, and some classes may belong to no subset.
    overlap : float >= 0, default=0.0
        Partition mode only: a class also joins every other cluster whose centroid is
        within ``(1 + overlap)`` times the distance to its own cluster's centroid. (A
        class may lie nearer another cluster's centroid than its own, since linkage
        does not assign by centroid; any ``overlap > 0`` adds such clusters.)
    features : {"correlation", "covariance"}, default="correlation"
        The points clustered (:func:`class_points`): each class's column of the
        covariance matrix (the paper), or of the correlation matrix. Classes the
        generalist predicts with very different confidence have covariance columns of
        very different length, so raw covariance columns cluster by scale as much as
        by confusion; correlation columns do not.

    Returns
    -------
    list of ndarray of int
        Sorted class codes of each subset, ordered by their smallest code. Identical
        subsets are merged (possible with ``classes_per_cluster``), so fewer than
        ``n_clusters`` subsets may come back.

    Notes
    -----
    Agglomerative clustering with average linkage and Euclidean distances
    (:class:`sklearn.cluster.AgglomerativeClustering`) merges, step by step, the two
    clusters whose points are closest on average, until ``n_clusters`` remain. It is
    deterministic (no seed), never leaves a cluster empty, and takes ``O(C^2)`` memory,
    the size of the covariance matrix itself. See the module notes for why it replaces
    the paper's K-means.
    """
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    if not 1 <= n_clusters <= n_classes:
        raise ValueError(f"n_clusters={n_clusters} must lie in [1, {n_classes}] (the classes)")
    if classes_per_cluster is not None and not 1 <= classes_per_cluster < n_classes:
        raise ValueError(
            f"classes_per_cluster={classes_per_cluster} must lie in [1, {n_classes - 1}]"
        )
    points = class_points(proba, features)  # (C, C)
    if n_clusters == n_classes:
        labels = np.arange(n_classes)
    else:
        labels = AgglomerativeClustering(n_clusters=n_clusters, linkage="average").fit_predict(
            points
        )  # (C,)
    centroids = np.stack([points[labels == k].mean(axis=0) for k in range(n_clusters)])  # (K, C)
    distances = np.sqrt(((points[:, None, :] - centroids[None]) ** 2).sum(axis=-1))  # (C, K)
    if classes_per_cluster is not None:
        order = np.argsort(distances, axis=0, kind="stable")  # (C, K)
        subsets = [np.sort(order[:classes_per_cluster, k]) for k in range(n_clusters)]
    else:
        member = np.zeros((n_classes, n_clusters), dtype=bool)  # (C, K)
        member[np.arange(n_classes), labels] = True
        if overlap > 0:
            own = distances[np.arange(n_classes), labels][:, None]  # (C, 1)
            member |= distances <= own * (1.0 + overlap)
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
