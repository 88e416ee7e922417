"""``SpecialistEnsembleClassifier``: a generalist plus specialists (Hinton et al. 2015, §5)."""

from __future__ import annotations

import copy
import inspect
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from kdpipe._estimator import (
    check_teacher_logits,
    rows_as_given,
    torch_classifier_tags,
    validate_rows,
)
from kdpipe.cache.alignment import check_fit_alignment
from kdpipe.engine import TrainingConfig, seeded
from kdpipe.errors import InputError, SparseFormatError
from kdpipe.labels import UNLABELED, encode_labels, unlabeled_mask
from kdpipe.specialists.clustering import cluster_classes, parse_class_subsets
from kdpipe.specialists.inference import InferenceResult, combine_distributions
from kdpipe.specialists.plan import plan_specialist, row_classes
from kdpipe.specialists.report import CoverageReport, coverage_table
from kdpipe.specialists.training import Kind, fit_specialist
from kdpipe.students import MLP

__all__ = ["SpecialistEnsembleClassifier"]


class SpecialistEnsembleClassifier(ClassifierMixin, BaseEstimator):
    """A generalist plus specialists for confusable class subsets (Hinton et al. §5).

    ``fit`` (1) fits the generalist (distilled from ``teacher_logits`` when given),
    (2) clusters the classes, with no labels, by average linkage on the correlations
    (or covariance columns) of the generalist's predicted probabilities, and (3)
    trains one specialist per subset, independently and in parallel, starting from
    the generalist's weights. ``predict_proba`` takes the generalist's ``top_n`` classes,
    activates the specialists whose subset contains any of them, and returns the
    ``q`` minimizing ``KL(p^g || q) + sum_m KL(p^m || q)`` (section 5.4).

    Parameters
    ----------
    generalist : classifier, default=None
        ``None``: a default :class:`kdpipe.DistilledClassifier`. The generalist is
        always cloned and fitted (with ``teacher_logits`` when its ``fit`` accepts them,
        else on the labeled rows), *also when it is already fitted*: to use a prefit
        generalist as is, wrap it in :class:`sklearn.frozen.FrozenEstimator`, whose
        clone is itself and whose ``fit`` does nothing. So ``clone(est).fit`` trains
        the same model as ``est.fit``, in cross-validation too. Its ``classes_``
        become this estimator's classes. Specialists copy its
        ``module_`` (a torch module whose last ``nn.Linear`` is the output layer); a
        generalist without one gives specialists a fresh default MLP instead.
    n_specialists : int, default=10
        Number of clusters (at most the number of classes); duplicate subsets are
        merged. Ignored when ``class_subsets`` is given.
    class_subsets : list of array-like of labels, default=None
        Use these class subsets instead of clustering.
    classes_per_specialist : int, default=None
        ``None``: the clusters partition the classes (sizes set by the clustering).
        An int ``k``: each specialist covers the ``k`` classes nearest its cluster
        (mean distance to its members); subsets may overlap and some classes may
        have no specialist.
    overlap : float >= 0, default=0.0
        Partition mode: a class also joins every other cluster whose mean distance
        to it is within ``(1 + overlap)`` times its mean distance to the other
        members of its own cluster. Small values widen subsets a lot: on the
        20-class problem of the tests (4 groups of 5), 0.2 gives subsets of 8-9
        classes and 1.0 one subset of every class, an error. Must stay 0 with
        ``classes_per_specialist``.
    cluster_on : {"correlation", "covariance"}, default="correlation"
        Distance between two classes: one minus the correlation of the generalist's
        predicted probabilities of the two, or the distance between their columns
        of the covariance matrix (the paper). Raw covariance columns differ in
        length with each class's confidence and cluster by scale as much as by
        confusion (see :func:`~kdpipe.specialists.cluster_classes`).
    subset_share : float in (0, 1), default=0.5
        Share of a specialist's training rows from its own classes (the paper: half);
        the rest are drawn at random from the other classes.
    specialist_type : {"dustbin", "full"}, default="dustbin"
        ``"dustbin"``: a softmax over the subset plus one dustbin class (section 5).
        ``"full"``: a full softmax trained with hard targets on the subset plus the soft
        targets of the teacher (else the generalist) on the other classes
        (section 6.1).
    top_n : int, default=1
        Number of the generalist's most probable classes that pick the specialists.
    specialist_max_epochs : int, default=10
    specialist_learning_rate : float > 0, default=1e-3
        Adam learning rate of the specialists.
    specialist_batch_size : int, default=128
    specialist_temperature : float > 0, default=4.0
        Distillation temperature of the specialists' soft targets.
    specialist_alpha : float in [0, 1], default=0.1
        Weight of the hard-label cross-entropy when specialists have soft targets.
    inference_max_iter : int, default=200
        Iterations of the per-example optimization at most.
    inference_tol : float > 0, default=1e-6
        An example has converged when ``max_c |dF/dz_c| <= inference_tol``.
    inference_learning_rate : float in (0, 2], default=1.0
        Step of the update in log space; 1 is the exact EM (majorize-minimize) step.
    n_jobs : int, default=None
        Specialists trained in parallel by joblib (``-1``: all cores). Inside
        ``with joblib.parallel_backend("dask"):`` they run on the active Dask client.
    device : str, default="auto"
        Torch device on which the specialists train and predict: ``"auto"`` (CUDA
        when available), ``"cpu"``, ``"cuda"``. Fitted modules live on the CPU between
        calls (see Notes). The generalist uses its own ``device``.
    rows_transformed : bool, default=False
        As :class:`kdpipe.DistilledClassifier`'s: ``True`` when an earlier ``Pipeline``
        step transforms ``X``, so that its rows are checked against a
        :class:`~kdpipe.LogitCache` by their labels only. (The ensemble checks the
        rows as given; the generalist it fits gets them validated, so a generalist with
        the parameter is fitted with it set.)
    random_state : int, RandomState instance or None, default=None
        Seeds the generalist (when its own ``random_state`` is ``None``), the
        sampling and every specialist; the same seed gives the same model on CPU,
        serial or parallel.
    verbose : int, default=0
        joblib's progress messages.

    Attributes
    ----------
    generalist_ : classifier
        The fitted generalist: a fitted clone of ``generalist``, or the
        ``FrozenEstimator`` itself.
    classes_ : ndarray of shape (n_classes,)
        ``generalist_.classes_``.
    n_features_in_ : int
        Width of a row of ``X`` flattened, ``prod(sample_shape_)``.
    sample_shape_ : tuple of int
        Shape of one row of ``X`` (``(n_features,)`` for 2-D ``X``); prediction
        refuses another.
    feature_names_in_ : ndarray of str
        Only when ``X`` has string column names.
    clusters_ : list of ndarray
        Class labels of each specialist's subset.
    specialists_ : list of Specialist
        Each with ``subset`` (class codes), ``kind``, ``module`` (on the CPU),
        ``correction`` (the sampling correction already in its output bias),
        ``n_rows`` and ``history``.

    See Also
    --------
    kdpipe.DistilledClassifier : The default generalist.
    kdpipe.specialists.combine_distributions : The section 5.4 optimization.

    Notes
    -----
    *Sampling correction.* A specialist trains on all rows of its classes (rate
    ``r_s = 1``) and a fraction ``r_d`` of the others. Its training posterior then has
    the dustbin prior scaled by ``r_d / r_s``, so ``log(r_s / r_d)`` is added to the
    dustbin logit after training ("the log of the oversampling proportion"). Soft
    targets are shifted by the opposite amount before training, so the hard and soft
    terms describe the same re-balanced sample and one correction fits both.

    *Soft targets.* The teacher's ``T = 1`` logits are collapsed onto the subset and
    dustbin in log space (``logsumexp`` of the outer logits) and then tempered by the
    engine, so a specialist's ``T = 1`` dustbin probability is the natural outer mass.

    *Inference* minimizes the KL sum per example with an EM (preconditioned gradient)
    iteration on ``z = log q`` from ``log p^g``, each example on its own, so results
    do not depend on the batch; see :func:`~kdpipe.specialists.combine_distributions`.
    :meth:`inference_details` reports iterations and convergence.

    *Devices.* Specialists train on ``device``; their fitted modules are then kept on
    the CPU and moved to ``device`` only inside :meth:`predict_proba` (and moved back
    before it returns), so pickling or joblib never ship CUDA tensors. The
    generalist's network is copied to the CPU before it is sent to the specialists'
    jobs.

    *Failed fits.* Everything is computed into local variables and the fitted
    attributes are assigned at the very end, so a ``fit`` that raises leaves a fitted
    estimator exactly as it was.

    *Parallelism.* Jobs receive the shared ``X`` (memory-mapped by joblib's process
    backend), their rows and their precomputed targets. Unlabeled rows count, for
    sampling, as the teacher's most probable class.

    References
    ----------
    G. Hinton, O. Vinyals, J. Dean. Distilling the Knowledge in a Neural Network.
    arXiv:1503.02531, 2015, sections 5 and 6.1.

    Examples
    --------
    >>> from sklearn.frozen import FrozenEstimator
    >>> from kdpipe import DistilledClassifier, SpecialistEnsembleClassifier
    >>> from kdpipe.datasets import make_confusable_classification
    >>> X, y = make_confusable_classification(
    ...     n_samples=600, n_classes=12, group_size=4, random_state=0
    ... )
    >>> clf = SpecialistEnsembleClassifier(
    ...     DistilledClassifier(hidden_layer_sizes=(16,), max_epochs=5),
    ...     n_specialists=3,
    ...     specialist_max_epochs=2,
    ...     random_state=0,
    ... ).fit(X, y)
    >>> len(clf.specialists_), clf.predict_proba(X[:2]).shape
    (3, (2, 12))

    A generalist fitted beforehand is kept as it is only when frozen:

    >>> prefit = FrozenEstimator(clf.generalist_)
    >>> clf2 = SpecialistEnsembleClassifier(
    ...     prefit, n_specialists=3, specialist_max_epochs=2, random_state=0
    ... ).fit(X, y)
    >>> clf2.generalist_ is prefit
    True
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "generalist": [HasMethods(["fit", "predict_proba"]), None],
        "n_specialists": [Interval(Integral, 1, None, closed="left")],
        "class_subsets": [list, None],
        "classes_per_specialist": [Interval(Integral, 1, None, closed="left"), None],
        "overlap": [Interval(Real, 0, None, closed="left")],
        "cluster_on": [StrOptions({"correlation", "covariance"})],
        "subset_share": [Interval(Real, 0, 1, closed="neither")],
        "specialist_type": [StrOptions({"dustbin", "full"})],
        "top_n": [Interval(Integral, 1, None, closed="left")],
        "specialist_max_epochs": [Interval(Integral, 1, None, closed="left")],
        "specialist_learning_rate": [Interval(Real, 0, None, closed="neither")],
        "specialist_batch_size": [Interval(Integral, 1, None, closed="left")],
        "specialist_temperature": [Interval(Real, 0, None, closed="neither")],
        "specialist_alpha": [Interval(Real, 0, 1, closed="both")],
        "inference_max_iter": [Interval(Integral, 1, None, closed="left")],
        "inference_tol": [Interval(Real, 0, None, closed="neither")],
        "inference_learning_rate": [Interval(Real, 0, 2, closed="right")],
        "n_jobs": [Integral, None],
        "device": [str],
        "rows_transformed": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        generalist: Any = None,
        *,
        n_specialists: int = 10,
        class_subsets: list | None = None,
        classes_per_specialist: int | None = None,
        overlap: float = 0.0,
        cluster_on: str = "correlation",
        subset_share: float = 0.5,
        specialist_type: Kind = "dustbin",
        top_n: int = 1,
        specialist_max_epochs: int = 10,
        specialist_learning_rate: float = 1e-3,
        specialist_batch_size: int = 128,
        specialist_temperature: float = 4.0,
        specialist_alpha: float = 0.1,
        inference_max_iter: int = 200,
        inference_tol: float = 1e-6,
        inference_learning_rate: float = 1.0,
        n_jobs: int | None = None,
        device: str = "auto",
        rows_transformed: bool = False,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ):
        self.generalist = generalist
        self.n_specialists = n_specialists
        self.class_subsets = class_subsets
        self.classes_per_specialist = classes_per_specialist
        self.overlap = overlap
        self.cluster_on = cluster_on
        self.subset_share = subset_share
        self.specialist_type = specialist_type
        self.top_n = top_n
        self.specialist_max_epochs = specialist_max_epochs
        self.specialist_learning_rate = specialist_learning_rate
        self.specialist_batch_size = specialist_batch_size
        self.specialist_temperature = specialist_temperature
        self.specialist_alpha = specialist_alpha
        self.inference_max_iter = inference_max_iter
        self.inference_tol = inference_tol
        self.inference_learning_rate = inference_learning_rate
        self.n_jobs = n_jobs
        self.device = device
        self.rows_transformed = rows_transformed
        self.random_state = random_state
        self.verbose = verbose

    # ---------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=False)  # the generalist validates itself
    def fit(
        self, X: Any, y: Any = None, teacher_logits: Any = None
    ) -> SpecialistEnsembleClassifier:
        """Fit the generalist, find confusable subsets, train the specialists.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *sample_shape)``
            The transfer set, held in memory (on-disk arrays are loaded; ``uint8``
            stays ``uint8`` and is scaled per minibatch by the uint8 rule,
            :func:`kdpipe.rows.to_model_dtype`). Images reach the generalist and the
            specialists in their own shape.
        y : array-like of shape (n_samples,), default=None
            Labels; ``-1`` marks unlabeled rows when ``teacher_logits`` is given, and
            ``None`` (with ``teacher_logits``) means no row is labeled.
        teacher_logits : array-like of shape (n_samples, C) or (n_samples, M, C), \
                or LogitCache, default=None
            Raw teacher (or ensemble) logits aligned with ``X``, in the order of the
            generalist's ``classes_``. They distill the generalist (when it is fitted
            here) and give the specialists their soft targets. A sparse cache is refused
            (:class:`~kdpipe.errors.SparseFormatError`): fit the generalist from it with
            :class:`~kdpipe.DistilledClassifier` and pass it frozen.

        Returns
        -------
        self : SpecialistEnsembleClassifier
        """
        # Everything goes into locals; the fitted attributes are set together at the
        # end, so a fit that raises leaves a fitted estimator as it was.
        has_teacher = teacher_logits is not None
        if getattr(teacher_logits, "sparse", None) is not None:
            raise SparseFormatError(
                "specialists cannot train from a sparse logit cache: their soft targets need the "
                "logit of every class of their subset, which a sparse cache does not hold. Fit the "
                "generalist from it (DistilledClassifier().fit(X, y, teacher_logits=cache)), pass "
                "it as generalist=FrozenEstimator(generalist) and fit this ensemble without "
                "teacher_logits, or from a dense cache"
            )
        given = X  # the rows as given, before validate_data may change their dtype
        X, y, data_attrs = self._check_fit_data(X, y, has_teacher)
        rng = check_random_state(self.random_state)
        unlabeled = unlabeled_mask(y) if has_teacher else np.zeros(len(y), dtype=bool)
        if (~unlabeled).any():
            check_classification_targets(y[~unlabeled])
        self._check_settings()
        cache_classes = getattr(teacher_logits, "classes", None)
        if cache_classes is not None:  # a LogitCache: are these the rows that made it?
            raw = rows_as_given(given, X)
            codes = encode_labels(y, np.asarray(cache_classes), unlabeled=unlabeled)
            check_fit_alignment(
                raw, codes, teacher_logits, seed=0, transformed=self.rows_transformed
            )

        generalist = self._fit_generalist(X, y, teacher_logits, unlabeled, rng)
        classes = np.asarray(generalist.classes_)
        n_classes = len(classes)
        codes = encode_labels(y, classes, unlabeled=unlabeled)
        if has_teacher:
            teacher_logits = check_teacher_logits(teacher_logits, len(X), n_classes)
        self._check_sizes(n_classes)

        proba = generalist.predict_proba(X)  # (n, C)
        if self.class_subsets is None:
            subsets = cluster_classes(
                proba,
                self.n_specialists,
                classes_per_cluster=self.classes_per_specialist,
                overlap=float(self.overlap),
                features=self.cluster_on,
            )
            if any(len(s) == n_classes for s in subsets):
                raise InputError(
                    f"overlap={self.overlap} puts every class into one subset, which leaves "
                    "its specialist no dustbin: lower overlap"
                )
        else:
            subsets = parse_class_subsets(self.class_subsets, classes)

        sampling = row_classes(codes, teacher_logits) if has_teacher else codes
        np_rng = np.random.default_rng(rng.randint(np.iinfo(np.int32).max))
        plans = [
            plan_specialist(
                s,
                self.specialist_type,
                sampling,
                codes,
                share=float(self.subset_share),
                rng=np_rng,
                teacher_logits=teacher_logits,
                generalist_proba=proba,
            )
            for s in subsets
        ]
        seeds = rng.randint(np.iinfo(np.int32).max, size=len(plans))
        config = self._specialist_config(has_teacher)
        base = self._generalist_module(
            generalist, int(np.prod(X.shape[1:])), n_classes, int(seeds[0]) if len(seeds) else 0
        )
        specialists = Parallel(n_jobs=self.n_jobs, verbose=self.verbose)(
            delayed(fit_specialist)(
                base,
                X,
                p.rows,
                p.y,
                p.targets,
                p.subset,
                self.specialist_type,
                p.correction,
                config,
                int(seed),
            )
            for p, seed in zip(plans, seeds)
        )

        if "feature_names_in_" not in data_attrs and hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        for name, value in data_attrs.items():
            setattr(self, name, value)
        self.generalist_ = generalist
        self.classes_ = classes
        self.clusters_ = [classes[s] for s in subsets]
        self.specialists_ = specialists
        return self

    def _check_fit_data(
        self, X: Any, y: Any, has_teacher: bool
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``X``, ``y`` and the attributes ``validate_data`` would set, ``self`` untouched."""
        probe = type(self).__new__(type(self))  # receives n_features_in_, feature_names_in_
        if y is None and has_teacher:
            X, _, sample_shape = validate_rows(probe, X, reset=True)
            y = np.full(X.shape[0], UNLABELED)
        else:
            X, y, sample_shape = validate_rows(
                probe, X, y, reset=True
            )  # raises "requires y" on None
            y = column_or_1d(y)
        return X, y, {**vars(probe), "sample_shape_": sample_shape}

    def _fit_generalist(
        self,
        X: np.ndarray,
        y: np.ndarray,
        teacher_logits: Any,
        unlabeled: np.ndarray,
        rng: np.random.RandomState,
    ) -> Any:
        """A fitted clone of the generalist (a ``FrozenEstimator`` clones to itself)."""
        from kdpipe.distilled import DistilledClassifier

        generalist = clone(DistilledClassifier() if self.generalist is None else self.generalist)
        params = generalist.get_params(deep=False)
        if "random_state" in params and params["random_state"] is None:
            generalist.set_params(random_state=int(rng.randint(np.iinfo(np.int32).max)))
        if "rows_transformed" in params and teacher_logits is not None:
            # fit checked the rows as given; the generalist gets them validated (float32),
            # whose bytes match no row of a cache built from float64 ones
            generalist.set_params(rows_transformed=True)
        accepts_teacher = "teacher_logits" in inspect.signature(generalist.fit).parameters
        if teacher_logits is not None and accepts_teacher:
            return generalist.fit(X, y, teacher_logits=teacher_logits)
        return generalist.fit(X[~unlabeled], y[~unlabeled])

    def _check_settings(self) -> None:
        if self.classes_per_specialist is not None and self.overlap > 0:
            raise InputError(
                f"overlap={self.overlap} applies to the partition mode only; with "
                f"classes_per_specialist={self.classes_per_specialist} subsets overlap "
                "by construction, so leave overlap=0"
            )

    def _check_sizes(self, n_classes: int) -> None:
        if self.top_n > n_classes:
            raise InputError(
                f"top_n={self.top_n} is larger than the number of classes ({n_classes})"
            )
        if self.class_subsets is None and self.n_specialists > n_classes:
            raise InputError(
                f"n_specialists={self.n_specialists} is larger than the number of classes "
                f"({n_classes} class{'es' if n_classes != 1 else ''}): each specialist needs "
                "at least one class of its own"
            )
        if self.classes_per_specialist is not None and self.classes_per_specialist >= n_classes:
            raise InputError(
                f"classes_per_specialist={self.classes_per_specialist} must be smaller than "
                f"the number of classes ({n_classes}): a specialist needs a non-empty dustbin"
            )

    def _specialist_config(self, has_teacher: bool) -> TrainingConfig:
        soft = has_teacher or self.specialist_type == "full"
        return TrainingConfig(
            loss="distillation" if soft else "hard",
            temperature=float(self.specialist_temperature),
            alpha=float(self.specialist_alpha),
            learning_rate=float(self.specialist_learning_rate),
            batch_size=int(self.specialist_batch_size),
            max_epochs=int(self.specialist_max_epochs),
            device=self.device,
        )

    @staticmethod
    def _generalist_module(
        generalist: Any, n_features: int, n_classes: int, seed: int
    ) -> torch.nn.Module:
        """A CPU copy of the generalist's network, or a fresh default MLP when it has none."""
        module = getattr(generalist, "module_", None)
        if isinstance(module, torch.nn.Module):
            return copy.deepcopy(module).cpu()  # jobs never receive CUDA tensors
        with seeded(seed):
            return MLP(n_features, n_classes)

    # ---------------------------------------------------------------- inference
    def inference_details(self, X: Any) -> InferenceResult:
        """Combined probabilities plus per-example convergence (section 5.4, steps 1-3).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *sample_shape)``

        Returns
        -------
        InferenceResult
            ``proba`` (what :meth:`predict_proba` returns), ``n_iter``, ``converged``,
            ``grad_norm`` and ``n_active`` per example.
        """
        check_is_fitted(self)
        X, _, _ = validate_rows(self, X, reset=False)
        p_g = np.asarray(self.generalist_.predict_proba(X), dtype=np.float64)  # (n, C)
        n_classes = p_g.shape[1]
        member = np.zeros((len(self.specialists_), n_classes), dtype=bool)  # (M, C)
        for m, spec in enumerate(self.specialists_):
            member[m, spec.subset] = True
        top = np.argsort(-p_g, axis=1, kind="stable")[:, : self.top_n]  # (n, top_n)
        active = np.asarray(member.T[top].any(axis=1))  # (n, M)
        p_m = []
        for m, spec in enumerate(self.specialists_):
            width = n_classes if spec.kind == "full" else len(spec.subset) + 1
            pm = np.zeros((len(X), width))  # (n, out): rows where inactive stay unused
            rows = np.flatnonzero(active[:, m])
            if len(rows):
                pm[rows] = spec.predict_proba(X[rows], device=self.device)
            p_m.append(pm)
        return combine_distributions(
            p_g,
            p_m,
            [s.subset for s in self.specialists_],
            active,
            full=[s.kind == "full" for s in self.specialists_],
            max_iter=int(self.inference_max_iter),
            tol=float(self.inference_tol),
            step=float(self.inference_learning_rate),
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """The combined distribution ``q`` of each row, ``(n_samples, n_classes)``."""
        return self.inference_details(X).proba

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of the combined distribution."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def coverage_report(self, X: Any, y: Any) -> CoverageReport:
        """Generalist vs ensemble accuracy by how many specialists cover the true class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *sample_shape)``
        y : array-like of shape (n_samples,)
            True labels; rows labeled ``-1`` (when not a class) are skipped.

        Returns
        -------
        CoverageReport
            Table 4 of the paper: per number of covering specialists, the row count,
            both accuracies and the relative improvement; ``.to_markdown()`` prints it.
        """
        check_is_fitted(self)
        y = column_or_1d(y)
        unlabeled = unlabeled_mask(y) & ~unlabeled_mask(self.classes_).any()
        codes = encode_labels(y, self.classes_, unlabeled=unlabeled)
        keep = codes >= 0
        X = validate_rows(self, X, reset=False)[0][keep]
        gen = np.asarray(self.generalist_.predict_proba(X)).argmax(axis=1)
        ens = self.predict_proba(X).argmax(axis=1)
        return coverage_table(codes[keep], gen, ens, [s.subset for s in self.specialists_])

    def __sklearn_tags__(self) -> Any:
        return torch_classifier_tags(super().__sklearn_tags__())
