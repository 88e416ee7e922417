"""A scikit-learn classifier that trains a PyTorch student on a teacher's soft targets."""

from __future__ import annotations

import copy
import itertools
from numbers import Integral, Real
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.metrics import accuracy_score
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
)

from kdpipe._estimator import (
    ModuleParamsMixin,
    build_module,
    check_lazy_X,
    check_teacher_logits,
    fitted_sample_shape,
    fitted_state,
    restore_state,
    rows_as_given,
    torch_classifier_tags,
    validate_rows,
)
from kdpipe.bias import Metric, fit_offsets
from kdpipe.cache.alignment import check_fit_alignment
from kdpipe.engine import (
    TrainingConfig,
    TrainingLoss,
    predict_logits,
    seeded,
    split_validation,
    train_student,
)
from kdpipe.errors import InputError
from kdpipe.labels import UNLABELED, encode_labels, resolve_classes, unlabeled_mask
from kdpipe.losses import Combine
from kdpipe.rows import CheckedReads, MinibatchSource, is_lazy_array

__all__ = ["DistilledClassifier"]

_D = TrainingConfig()  # the training defaults, held once, there


class DistilledClassifier(ModuleParamsMixin, ClassifierMixin, BaseEstimator):
    """Distill a teacher (or an ensemble) into a small PyTorch student.

    The student minimizes the objective of Hinton et al. (2015), section 2, on a
    transfer set: cross-entropy with the teacher's soft targets at temperature ``T``
    (times ``T**2``) plus ``alpha`` times cross-entropy with the true labels at ``T=1``
    (see :func:`kdpipe.distillation_loss`). Without teacher logits it trains on the
    hard labels alone: the baseline student of the same size. It predicts at ``T=1``.

    Parameters
    ----------
    module : torch.nn.Module subclass, default=None
        The student's class, called as ``module(n_features=..., n_classes=...,
        **module_params)``, plus ``sample_shape=`` (the shape of one row of ``X``)
        when its constructor has that parameter; it maps float32 batches
        ``(batch, *sample_shape)`` to logits ``(batch, n_classes)``. ``n_features`` is
        ``prod(sample_shape)``. ``None`` uses :class:`kdpipe.students.MLP` built from
        ``hidden_layer_sizes``, ``activation`` and ``dropout``; for images,
        :class:`kdpipe.students.ConvNet` is a small CNN (``module=ConvNet``, its sizes
        in ``module_params`` or as ``module__channels`` etc.).
    module_params : dict, default=None
        Constructor arguments of ``module``. Each is also a parameter ``module__<name>``
        of :meth:`get_params`/:meth:`set_params`, so ``GridSearchCV`` can tune it.
    hidden_layer_sizes : array-like of int, default=(100,)
        Units per hidden layer of the default MLP (ignored with ``module``).
    activation : {"relu", "tanh", "gelu", "logistic"}, default="relu"
        Hidden activation of the default MLP.
    dropout : float in [0, 1), default=0.0
        Dropout after each hidden layer of the default MLP.
    loss : {"distillation", "logit_matching"}, default="distillation"
        Soft-target term: KL at temperature ``T``, or Caruana's squared logit
        difference (the high-``T`` limit). Either is mixed with ``alpha`` of hard loss.
    temperature : float > 0, default=4.0
        Distillation temperature ``T``.
    alpha : float in [0, 1], default=0.1
        Weight of the hard-label cross-entropy; the soft term gets ``1 - alpha``.
    combine : {"arithmetic", "geometric"}, default="arithmetic"
        How the members of an ensemble teacher ``(n, M, C)`` are combined.
    optimizer : {"adam", "sgd"}, default="adam"
    learning_rate : float > 0, default=1e-3
    momentum : float in [0, 1], default=0.9
        SGD momentum.
    weight_decay : float >= 0, default=0.0
    batch_size : int, default=128
    max_epochs : int, default=50
    shuffle_window : int, default=None
        ``None`` shuffles all rows each epoch. An int shuffles rows within windows of
        that many consecutive rows, visiting windows in random order: for on-disk data
        larger than memory, so each window's chunks are read once per epoch (keep a
        window's logits within the cache's chunk memory, 64 MiB by default).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows (stratified) and stop when their
        loss has not improved by ``tol`` for ``n_iter_no_change`` epochs; the best
        epoch's weights are kept.
    validation_fraction : float in (0, 1), default=0.1
    n_iter_no_change : int, default=5
    tol : float >= 0, default=1e-4
    classes : array-like, default=None
        Every class, in the order of the teacher's logit columns. Needed with array
        logits when ``y`` lacks a class the teacher knows; a ``LogitCache`` gives its
        own list, which this must then equal.
    class_offsets : dict, default=None
        ``{label: offset}`` added to the student's logits before prediction (section 3's
        bias correction); :meth:`fit_class_offsets` learns them from labeled data.
    rows_transformed : bool, default=False
        ``fit`` checks that the rows of ``X`` are the rows that made a
        :class:`~kdpipe.LogitCache` given as ``teacher_logits``, comparing their bytes
        (all of them, or 1,024 drawn at random); X that matches no cached row is a
        :class:`~kdpipe.errors.RowMismatchError`. Set ``True`` when an earlier
        ``Pipeline`` step transforms ``X`` (a scaler, a projection): its bytes cannot
        match, so only the labels are compared with the cache's (rows that still match
        are checked as before). Ignored for logits given as arrays.
    random_state : int, RandomState instance or None, default=None
        Seeds initialization, shuffling, dropout and the validation split; on CPU the
        same seed gives identical predictions.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    verbose : int, default=0
        1: a progress bar over epochs; 2: one line per epoch.
    warm_start : bool, default=False
        Continue training the fitted student (same classes and features) on ``fit``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, in the order of the student's outputs.
    n_features_in_ : int
        Width of a row of ``X`` flattened: ``prod(sample_shape_)`` (the number of
        columns of a 2-D ``X``).
    sample_shape_ : tuple of int
        Shape of one row of ``X``: ``(n_features,)`` for 2-D ``X``, ``(1, 28, 28)``
        for ``X`` of shape ``(n, 1, 28, 28)``. Prediction refuses another shape.
    feature_names_in_ : ndarray of str
        Only when ``X`` has string column names.
    module_ : torch.nn.Module
        The trained student, in eval mode.
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy`` (nan
        without early stopping), ``rows_per_s``, ``seconds``.
    n_iter_ : int
        Epochs run by the last ``fit``.
    class_offsets_ : ndarray of shape (n_classes,)
        Offsets added to the logits at prediction: ``class_offsets`` as of ``fit``,
        updated by :meth:`fit_class_offsets`.

    See Also
    --------
    kdpipe.distillation_loss : The objective.
    kdpipe.build_cache : Run the teachers once and store their logits on disk.
    sklearn.neural_network.MLPClassifier : The same student trained on labels only.
    kdpipe.students.ConvNet : A convolutional student for images.

    Notes
    -----
    ``teacher_logits`` is a fit parameter aligned with the rows of ``X``: an array
    ``(n, C)`` or ``(n, M, C)``, a :class:`kdpipe.LogitCache` or a lazy subset of one.
    Cross-validation splits it with ``X`` (request it with
    ``set_fit_request(teacher_logits=True)`` under metadata routing); cache subsets are
    read one minibatch at a time, as are zarr, h5py and dask ``X`` and
    :class:`kdpipe.LazyRows` views, which never go through ``validate_data`` (it would
    load them). On-disk inputs are checked for NaN/inf per minibatch, in-memory ones up
    front. For cross-validation and ``Pipeline``, pass on-disk ``X`` as
    ``kdpipe.LazyRows(X)``: folds then stay lazy views that pickle as references (the
    zarr store, or the HDF5 file and dataset name), so ``n_jobs > 1`` works too.

    A sparse cache (``build_cache(..., sparse=...)``) is read as sparse targets per
    minibatch and trained with :func:`kdpipe.losses.sparse_distillation_loss`, never
    as dense rows; a temperature, combination or loss its format cannot give is a
    :class:`~kdpipe.errors.SparseFormatError` before training (see
    :mod:`kdpipe.cache.sparse`).

    The fitted student (``module_``) lives on the CPU; ``device`` is where it runs
    during a call (``fit``, ``predict``...), after which it goes back.

    With teacher logits, a label ``-1`` (or ``"-1"`` in string labels) marks an
    unlabeled row, which contributes the soft term only, and ``-1`` cannot be a class;
    :meth:`score` ignores such rows. Without teacher logits ``-1`` is an ordinary
    class. For binary problems :meth:`decision_function` returns the logit
    difference of the two classes, as scikit-learn expects.

    References
    ----------
    G. Hinton, O. Vinyals, J. Dean. Distilling the Knowledge in a Neural Network.
    arXiv:1503.02531, 2015.

    Examples
    --------
    >>> import numpy as np
    >>> from kdpipe import DistilledClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4)).astype(np.float32)
    >>> margin = X[:, 0] + X[:, 1]
    >>> y = (margin > 0).astype(int)
    >>> teacher_logits = np.stack([-margin, margin], axis=1) * 3  # a confident teacher
    >>> clf = DistilledClassifier(
    ...     hidden_layer_sizes=(16,), learning_rate=1e-2, max_epochs=20, random_state=0
    ... )
    >>> clf.fit(X, y, teacher_logits=teacher_logits).score(X, y) > 0.9
    True
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    # fitted attributes (set by fit, absent before it), for type checkers
    module_: torch.nn.Module
    class_offsets_: np.ndarray

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "module": [type, None],
        "module_params": [dict, None],
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"relu", "tanh", "gelu", "logistic"})],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "loss": [StrOptions({"distillation", "logit_matching"})],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "combine": [StrOptions({"arithmetic", "geometric"})],
        "optimizer": [StrOptions({"adam", "sgd"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "shuffle_window": [Interval(Integral, 1, None, closed="left"), None],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "classes": ["array-like", None],
        "class_offsets": [dict, None],
        "rows_transformed": ["boolean"],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        *,
        module: type | None = None,
        module_params: dict[str, Any] | None = None,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        dropout: float = 0.0,
        loss: str = _D.loss,
        temperature: float = _D.temperature,
        alpha: float = _D.alpha,
        combine: Combine = _D.combine,
        optimizer: Literal["adam", "sgd"] = _D.optimizer,
        learning_rate: float = _D.learning_rate,
        momentum: float = _D.momentum,
        weight_decay: float = _D.weight_decay,
        batch_size: int = _D.batch_size,
        max_epochs: int = _D.max_epochs,
        shuffle_window: int | None = _D.shuffle_window,
        early_stopping: bool = _D.early_stopping,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = _D.n_iter_no_change,
        tol: float = _D.tol,
        classes: Any = None,
        class_offsets: dict | None = None,
        rows_transformed: bool = False,
        random_state: Any = None,
        device: str = _D.device,
        verbose: int = 0,
        warm_start: bool = False,
    ):
        self.module = module
        self.module_params = module_params
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.dropout = dropout
        self.loss = loss
        self.temperature = temperature
        self.alpha = alpha
        self.combine = combine
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.shuffle_window = shuffle_window
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.classes = classes
        self.class_offsets = class_offsets
        self.rows_transformed = rows_transformed
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.warm_start = warm_start

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None, teacher_logits: Any = None) -> DistilledClassifier:
        """Train the student on ``X``, ``y`` and (optionally) the teacher's logits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *sample_shape)``, \
                a zarr, h5py or dask array, or a :class:`kdpipe.LazyRows` view of one
            The transfer set: a table, or images such as ``(n, 1, 28, 28)``, which the
            student receives in their own shape. ``uint8`` rows stay ``uint8`` in
            memory and are scaled to float32 ``x / 255`` per minibatch (the uint8 rule,
            :func:`kdpipe.rows.to_model_dtype`); other dtypes become float32. On-disk
            arrays are streamed, never loaded whole. Inside
            ``GridSearchCV``, ``cross_validate`` or a ``Pipeline``, wrap zarr and h5py
            arrays in ``kdpipe.LazyRows(X)``: scikit-learn indexes ``X[rows, ...]``,
            which zarr rejects, and pickles it for ``n_jobs > 1``, which h5py cannot.
        y : array-like of shape (n_samples,), default=None
            Labels; ``-1`` marks unlabeled rows when ``teacher_logits`` is given.
            ``None`` (with ``teacher_logits``) means no row is labeled.
        teacher_logits : array-like of shape (n_samples, C) or (n_samples, M, C), \
                LogitCache or cache subset, default=None
            Raw logits of the teacher or of ``M`` ensemble members, aligned with ``X``.
            ``None`` trains on the hard labels alone.

        Returns
        -------
        self : DistilledClassifier
        """
        state = fitted_state(self)
        try:  # a failed fit leaves the estimator as it was
            fitted = self._fit(X, y, teacher_logits)
        except BaseException:
            restore_state(self, state)
            raise
        module: torch.nn.Module = fitted.pop("module_")
        if self.warm_start and hasattr(self, "module_"):
            self.module_.load_state_dict(module.state_dict())  # the same student, trained on
        else:
            self.module_ = module
        self.__dict__.update(fitted)
        return self

    def _fit(self, X: Any, y: Any, teacher_logits: Any) -> dict[str, Any]:
        """Validate, train, and return the new fitted attributes (only ``validate_data``
        writes to ``self``; :meth:`fit` undoes that on failure)."""
        has_teacher = teacher_logits is not None
        warm = self.warm_start and hasattr(self, "module_")
        given = X  # the rows as given, before validate_data may change their dtype
        X, y, sample_shape = self._check_fit_data(X, y, has_teacher, warm)
        n = X.shape[0]
        unlabeled = unlabeled_mask(y) if has_teacher else np.zeros(n, dtype=bool)
        cache_classes = getattr(teacher_logits, "classes", None)
        classes = resolve_classes(
            y[~unlabeled], self.classes, cache_classes, has_teacher=has_teacher
        )
        codes = encode_labels(y, classes, unlabeled=unlabeled)
        if has_teacher:
            teacher_logits = check_teacher_logits(teacher_logits, n, len(classes))
            sparse = getattr(teacher_logits, "sparse", None)  # a sparse cache: can it train so?
            if sparse is not None:
                sparse.check_request(
                    temperature=self.temperature, combine=self.combine, loss=self.loss
                )
        if warm and not np.array_equal(classes, self.classes_):
            raise InputError(
                "warm_start needs the classes of the previous fit "
                f"({self.classes_.tolist()!r}), got {classes.tolist()!r}"
            )
        offsets = self._offsets_from_param(classes)

        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if has_teacher:
            raw = rows_as_given(given, X)
            check_fit_alignment(
                raw, codes, teacher_logits, seed=seed, transformed=self.rows_transformed
            )
        rows, val_rows = np.arange(n), None
        if self.early_stopping:
            rows, val_rows = split_validation(
                rows, self.validation_fraction, np.random.default_rng(seed), y=codes
            )
        if warm:  # train a copy: the fitted student stays as it is until training succeeds
            module, history = copy.deepcopy(self.module_), list(self.history_)
        else:
            with seeded(seed):
                module = build_module(self, sample_shape, len(classes))
            history = []
        epochs = train_student(
            module,
            MinibatchSource(X, codes, teacher_logits, view_seed=seed),
            rows,
            self._training_config(has_teacher),
            seed=seed,
            validation_rows=val_rows,
            verbose=self.verbose,
        )
        done = len(history)
        return {
            "classes_": classes,
            "class_offsets_": offsets,
            "n_features_in_": int(np.prod(sample_shape)),
            "sample_shape_": sample_shape,
            "module_": module.to("cpu"),  # fitted students live on the CPU
            "history_": history + [{**r, "epoch": r["epoch"] + done} for r in epochs],
            "n_iter_": len(epochs),
        }

    def _check_fit_data(
        self, X: Any, y: Any, has_teacher: bool, warm: bool
    ) -> tuple[Any, np.ndarray, tuple[int, ...]]:
        """Validate ``X`` and ``y`` (on-disk ``X`` by shape and dtype only); return the
        sample shape (the shape of one row of ``X``).

        A warm start checks the sample shape against the previous fit (``reset=False``).
        """
        if is_lazy_array(X):
            sample_shape = check_lazy_X(X, fitted_sample_shape(self) if warm else None)
            if not warm and hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            if y is None and not has_teacher:
                raise ValueError(
                    f"This {type(self).__name__} estimator requires y to be passed, "
                    "but the target y is None."
                )
        elif y is None and has_teacher:
            X, _, sample_shape = validate_rows(self, X, reset=not warm)
        else:
            X, y, sample_shape = validate_rows(self, X, y, reset=not warm)
        if y is None:
            return X, np.full(X.shape[0], UNLABELED), sample_shape
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        return X, y, sample_shape

    def _training_config(self, has_teacher: bool) -> TrainingConfig:
        return TrainingConfig(
            # checked against _parameter_constraints at the start of fit
            loss=cast(TrainingLoss, self.loss) if has_teacher else "hard",
            temperature=float(self.temperature),
            alpha=float(self.alpha),
            combine=self.combine,
            optimizer=self.optimizer,
            learning_rate=float(self.learning_rate),
            momentum=float(self.momentum),
            weight_decay=float(self.weight_decay),
            batch_size=int(self.batch_size),
            max_epochs=int(self.max_epochs),
            shuffle_window=None if self.shuffle_window is None else int(self.shuffle_window),
            early_stopping=bool(self.early_stopping),
            n_iter_no_change=int(self.n_iter_no_change),
            tol=float(self.tol),
            device=str(self.device),
        )

    def _offsets_from_param(self, classes: np.ndarray) -> np.ndarray:
        offsets = np.zeros(len(classes))
        if self.class_offsets:
            labels = np.array(list(self.class_offsets), dtype=object)
            codes = encode_labels(labels, classes, unlabeled=np.zeros(len(labels), dtype=bool))
            offsets[codes] = [float(v) for v in self.class_offsets.values()]
        return offsets

    def _raw_logits(self, X: Any) -> np.ndarray:
        """Student logits ``(n, n_classes)`` without offsets, float32."""
        check_is_fitted(self)
        if is_lazy_array(X):
            check_lazy_X(X, fitted_sample_shape(self))
            X = CheckedReads(X, "X")
        else:
            X, _, _ = validate_rows(self, X, reset=False)
        return predict_logits(self.module_, X, device=self.device)

    def _scores(self, X: Any) -> np.ndarray:
        return self._raw_logits(X).astype(np.float64) + self.class_offsets_  # (n, C)

    def decision_function(self, X: Any) -> np.ndarray:
        """Student logits plus ``class_offsets_``.

        Returns
        -------
        ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            For two classes, the logit of ``classes_[1]`` minus that of ``classes_[0]``.
        """
        z = self._scores(X)
        if z.shape[1] == 2:
            return z[:, 1] - z[:, 0]
        return z[:, 0] if z.shape[1] == 1 else z

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row (at ``T=1``, with offsets)."""
        scores = self._scores(X)
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``softmax(logits + class_offsets_)`` at ``T=1``, float64."""
        return softmax(self._scores(X), axis=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`, computed stably."""
        return log_softmax(self._scores(X), axis=1)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy on the labeled rows (rows labeled ``-1`` are skipped unless a class)."""
        y = column_or_1d(y)
        predicted = self.predict(X)
        keep = ~self._unlabeled(y)
        weight = None if sample_weight is None else np.asarray(sample_weight)[keep]
        return float(accuracy_score(y[keep], predicted[keep], sample_weight=weight))

    def _unlabeled(self, y: np.ndarray) -> np.ndarray:
        """Rows marked unlabeled, unless ``-1`` is one of the classes."""
        if unlabeled_mask(np.asarray(self.classes_)).any():
            return np.zeros(len(y), dtype=bool)
        return unlabeled_mask(y)

    def fit_class_offsets(
        self,
        X: Any,
        y: Any,
        classes: Any = None,
        *,
        metric: Metric = "accuracy",
        search_range: float = 10.0,
    ) -> DistilledClassifier:
        """Fit the logit offsets of some classes on held-out labeled data (section 3).

        A 1-D grid search per class (step 0.05, two passes of coordinate ascent when
        several classes are chosen); the other classes keep their offsets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or an on-disk array
            Held-out inputs, not the transfer set.
        y : array-like of shape (n_samples,)
            Their labels; ``-1`` rows are skipped unless ``-1`` is a class.
        classes : array-like, default=None
            Labels whose offsets are fitted; all classes when ``None``.
        metric : {"accuracy", "log_loss"}, default="accuracy"
            Maximized accuracy (ties broken by log-loss) or minimized log-loss.
        search_range : float > 0, default=10.0
            Offsets are searched in ``[-search_range, search_range]``.

        Returns
        -------
        self : DistilledClassifier
            With ``class_offsets_`` updated.
        """
        validate_parameter_constraints(
            {
                "metric": [StrOptions({"accuracy", "log_loss"})],
                "search_range": [Interval(Real, 0, None, closed="neither")],
            },
            {"metric": metric, "search_range": search_range},
            caller_name="fit_class_offsets",
        )
        check_is_fitted(self)
        y = column_or_1d(y)
        logits = self._raw_logits(X)
        check_consistent_length(logits, y)
        keep = ~self._unlabeled(y)
        codes = encode_labels(
            y[keep], self.classes_, unlabeled=np.zeros(int(keep.sum()), dtype=bool)
        )
        chosen = self.classes_ if classes is None else np.asarray(classes, dtype=object).ravel()
        chosen_codes = encode_labels(
            chosen, self.classes_, unlabeled=np.zeros(len(chosen), dtype=bool)
        )
        if len(codes) == 0:
            raise InputError("fit_class_offsets needs labeled rows")
        self.class_offsets_ = fit_offsets(
            logits[keep],
            codes,
            chosen_codes.tolist(),
            offsets=self.class_offsets_,
            metric=metric,
            search_range=float(search_range),
        )
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the student on CPU, so it unpickles where CUDA is absent."""
        state = super().__getstate__()
        module = state.get("module_")
        if module is not None:
            tensors = itertools.chain(module.parameters(), module.buffers())
            if any(t.device.type != "cpu" for t in tensors):
                state = {**state, "module_": copy.deepcopy(module).to("cpu")}
        return state

    def __sklearn_tags__(self) -> Any:
        return torch_classifier_tags(super().__sklearn_tags__())
