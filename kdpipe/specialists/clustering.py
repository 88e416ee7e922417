"""Confusable class subsets from the generalist alone (Hinton et al. 2015, section 5.2).

Classes that the generalist often predicts together have similar columns in the
covariance matrix of its predicted probabilities. Each class becomes a point (its
column of the ``C x C`` covariance matrix) and an on-line (mini-batch) K-means groups
the points; no labels are used, so unlabeled transfer rows count as much as labeled
ones.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning

from kdpipe.errors import ClassMismatchError, InputError

__all__ = ["prediction_covariance", "cluster_classes", "parse_class_subsets"]


def prediction_covariance(proba: np.ndarray) -> np.ndarray:
    """Covariance ``(C, C)`` of the columns of predicted probabilities ``(n, C)``."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] < 2:
        raise ValueError(
            f"need predicted probabilities of shape (n >= 2, C), got {proba.shape}"
        )
    centered = proba - proba.mean(axis=0)  # (n, C)
    return centered.T @ centered / (proba.shape[0] - 1)  # (C, C)


def cluster_classes(
    proba: np.ndarray,
    n_clusters: int,
    *,
    classes_per_cluster: int | None = None,
    overlap: float = 0.0,
    features: str = "correlation",
    random_state: int | None = None,
    n_init: int = 3,
) -> list[np.ndarray]:
    """Class subsets by on-line K-means on the columns of the prediction covariance.

    Parameters
    ----------
    proba : ndarray of shape (n, C)
        The generalist's predicted probabilities on the transfer set.
    n_clusters : int
        Number of subsets (one per specialist), at most ``C``.
    classes_per_cluster : int, optional
        ``None``: every class joins its nearest centroid (a partition, sizes vary), plus
        the clusters allowed by ``overlap``. An int ``k``: each subset is the ``k``
        classes nearest its centroid, so subsets have equal sizes, may overlap, and some
        classes may belong to no subset.
    overlap : float >= 0, default=0.0
        Partition mode only: a class also joins every cluster whose centroid is within
        ``(1 + overlap)`` times the distance to its nearest centroid.
    features : {"correlation", "covariance"}, default="correlation"
        The points clustered: each class's column of the covariance matrix (the
        paper), or of the correlation matrix, i.e. the covariance column divided by
        the standard deviations. Classes the generalist predicts with very different
        confidence have columns of very different length, so raw covariance columns
        cluster by scale as much as by confusion; correlation columns do not (on the
        generated problems of the tests, adjusted Rand index 0.9-1.0 against 0.1-0.9).
    random_state : int, optional
        Seeds K-means.
    n_init : int, default=3
        K-means restarts.

    Returns
    -------
    list of ndarray of int
        Sorted class codes of each non-empty subset, ordered by their smallest code.
        Empty clusters are dropped and identical subsets merged, so fewer than
        ``n_clusters`` subsets may come back.
    """
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    if not 1 <= n_clusters <= n_classes:
        raise ValueError(f"n_clusters={n_clusters} must lie in [1, {n_classes}] (the classes)")
    if classes_per_cluster is not None and not 1 <= classes_per_cluster < n_classes:
        raise ValueError(
            f"classes_per_cluster={classes_per_cluster} must lie in [1, {n_classes - 1}]"
        )
    points = prediction_covariance(proba)  # (C, C): row c = column c (symmetric)
    if features == "correlation":
        sd = np.sqrt(np.diag(points))  # (C,)
        scale = np.where(sd > 0, sd, 1.0)
        points = points / scale[:, None] / scale[None, :]
    elif features != "covariance":
        raise ValueError(f"features must be 'correlation' or 'covariance', got {features!r}")
    kmeans = MiniBatchKMeans(
        n_clusters=n_clusters,
        n_init=n_init,
        batch_size=min(1024, max(n_classes, 2)),
        random_state=random_state,
    )
    with warnings.catch_warnings():
        # identical points (e.g. classes never predicted) give fewer distinct clusters;
        # empty clusters are dropped below instead of warning
        warnings.simplefilter("ignore", ConvergenceWarning)
        distances = kmeans.fit_transform(points)  # (C, K)
    if classes_per_cluster is not None:
        order = np.argsort(distances, axis=0, kind="stable")  # (C, K)
        subsets = [np.sort(order[:classes_per_cluster, k]) for k in range(n_clusters)]
    else:
        nearest = distances.min(axis=1, keepdims=True)  # (C, 1)
        member = distances <= nearest * (1.0 + overlap)  # (C, K)
        member[np.arange(n_classes), distances.argmin(axis=1)] = True
        subsets = [np.flatnonzero(member[:, k]) for k in range(n_clusters)]
    unique = {tuple(s.tolist()) for s in subsets if len(s)}
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
