"""Specialist ensembles (Hinton, Vinyals & Dean 2015, sections 5 and 6.1).

A generalist plus specialists trained on confusable class subsets:

- :mod:`~kdpipe.specialists.clustering`: subsets from the generalist's prediction
  covariance (average-linkage clustering).
- :mod:`~kdpipe.specialists.targets`: collapsing labels, probabilities and logits onto a
  subset plus a dustbin; the sampling correction.
- :mod:`~kdpipe.specialists.training` and :mod:`~kdpipe.specialists.plan`: one
  specialist's sample, targets, initialization and training.
- :mod:`~kdpipe.specialists.inference`: the per-example KL combination (section 5.4).
- :mod:`~kdpipe.specialists.report`: accuracy by specialist coverage (table 4).
- :mod:`~kdpipe.specialists.estimator`: :class:`SpecialistEnsembleClassifier`.
"""

from __future__ import annotations

from kdpipe.specialists.clustering import cluster_classes, prediction_covariance
from kdpipe.specialists.estimator import SpecialistEnsembleClassifier
from kdpipe.specialists.inference import InferenceResult, combine_distributions
from kdpipe.specialists.report import CoverageReport, CoverageRow
from kdpipe.specialists.training import Specialist

__all__ = [
    "SpecialistEnsembleClassifier",
    "Specialist",
    "cluster_classes",
    "prediction_covariance",
    "combine_distributions",
    "InferenceResult",
    "CoverageReport",
    "CoverageRow",
]
