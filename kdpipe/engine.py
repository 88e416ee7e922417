"""The student training engine: minibatches in, a trained ``torch.nn.Module`` out.

Estimators build the module and the :class:`~kdpipe.rows.RowSource` (usually a
:class:`~kdpipe.rows.MinibatchSource`); this module runs the epochs: seeded shuffling, the loss (from :mod:`kdpipe.losses`, called in one
place, :func:`batch_loss`), the optimizer, early stopping on a validation split, a
per-epoch history and an optional progress bar.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import torch
from tqdm.auto import tqdm

from kdpipe import losses
from kdpipe.devices import resolve_device, small_model_threads
from kdpipe.rows import Batch, RowSource, prefetched, take_rows, to_model_dtype
from kdpipe.sparse_targets import SampledTargets, SparseTargets, TopKTargets

__all__ = [
    "TrainingConfig",
    "TrainingLoss",
    "batch_loss",
    "train_student",
    "predict_logits",
    "split_validation",
    "seeded",
]

TrainingLoss = Literal["distillation", "logit_matching", "hard"]


@dataclass(frozen=True)
class TrainingConfig:
    """How a student is trained.

    The field defaults are the only copy of the training defaults: the estimators'
    ``__init__`` signatures read theirs from here.
    """

    loss: TrainingLoss = "distillation"
    temperature: float = 4.0  # distillation temperature T
    alpha: float = 0.1  # weight of the hard-label cross-entropy
    combine: Literal["arithmetic", "geometric"] = "arithmetic"  # ensemble members
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 50
    early_stopping: bool = False  # stop when the validation loss stops improving
    n_iter_no_change: int = 5  # epochs without improvement before stopping
    tol: float = 1e-4  # smallest validation-loss decrease that counts
    device: str = "auto"
    # None: each epoch shuffles all rows; an int: rows are shuffled within consecutive
    # windows of that many rows, visited in random order (on-disk data: each window's
    # chunks are read once per epoch instead of once per minibatch)
    shuffle_window: int | None = None


def batch_loss(
    student_logits: torch.Tensor,
    y: torch.Tensor | None,
    teacher_logits: torch.Tensor | SparseTargets | None,
    config: TrainingConfig,
    *,
    labels_checked: bool = False,
) -> torch.Tensor:
    """The training objective of one minibatch; the only place losses are called.

    ``labels_checked``: the codes in ``y`` were checked on the CPU and some row is
    labeled (see :func:`check_codes`), so the losses skip their checks, which would
    sync a GPU.
    """
    if config.loss == "hard" or teacher_logits is None:
        if y is None:
            raise ValueError("training without teacher logits needs labels")
        return losses.hard_label_loss(student_logits, y, labels_checked=labels_checked)
    if isinstance(teacher_logits, (TopKTargets, SampledTargets)):
        if config.loss != "distillation":
            raise ValueError(
                f"sparse teacher targets support loss='distillation' only, not {config.loss!r}"
            )
        return losses.sparse_distillation_loss(
            student_logits,
            teacher_logits,
            y,
            temperature=config.temperature,
            alpha=config.alpha,
            combine=config.combine,
            labels_checked=labels_checked,
        )
    if config.loss == "distillation":
        return losses.distillation_loss(
            student_logits,
            teacher_logits,
            y,
            temperature=config.temperature,
            alpha=config.alpha,
            combine=config.combine,
            labels_checked=labels_checked,
        )
    if config.loss == "logit_matching":
        soft = (1.0 - config.alpha) * losses.logit_matching_loss(student_logits, teacher_logits)
        return losses.plus_hard_term(soft, student_logits, y, config.alpha, labels_checked)
    raise ValueError(
        f"loss must be 'distillation', 'logit_matching' or 'hard', got {config.loss!r}"
    )


class seeded:
    """Context manager: torch's global RNG seeded inside, restored outside.

    Covers weight initialization and dropout masks, which draw from the global
    generator, so the same seed gives bit-identical weights on CPU.
    """

    def __init__(self, seed: int, device: torch.device | None = None):
        self.seed = int(seed)
        self.cuda = device is not None and device.type == "cuda"
        self._fork: Any = None

    def __enter__(self) -> Self:
        devices = [torch.cuda.current_device()] if self.cuda else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc: object) -> None:
        self._fork.__exit__(*exc)


def split_validation(
    rows: np.ndarray, fraction: float, rng: np.random.Generator, y: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train, validation); stratified on labeled rows when possible."""
    rows = np.asarray(rows)
    n_val = round(fraction * len(rows))
    if not 0 < n_val < len(rows):
        raise ValueError(
            f"validation_fraction={fraction} leaves no rows for training or validation "
            f"with {len(rows)} rows"
        )
    if y is None:
        order = rng.permutation(len(rows))
        return np.sort(rows[order[n_val:]]), np.sort(rows[order[:n_val]])
    val: list[np.ndarray] = []
    labels = y[rows]
    for code in np.unique(labels):
        members = rows[labels == code]
        take = round(fraction * len(members))
        val.append(rng.permutation(members)[:take])
    val_rows = np.concatenate(val)
    if len(val_rows) == 0:  # every group too small: fall back to a plain split
        return split_validation(rows, fraction, rng, None)
    return np.setdiff1d(rows, val_rows), np.sort(val_rows)


def _row_batches(
    rows: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None,
    window: int | None = None,
) -> Iterator[np.ndarray]:
    if rng is None:
        order = rows
    elif window is None or window >= len(rows):
        order = rows[rng.permutation(len(rows))]
    else:  # shuffle within windows of consecutive rows, windows in random order
        starts = rng.permutation(np.arange(0, len(rows), window))
        order = np.concatenate([rng.permutation(rows[s : s + window]) for s in starts])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def check_codes(y: np.ndarray | None, n_classes: int) -> bool:
    """Raise unless the label codes ``y`` (on the CPU) lie in ``[-1, n_classes)``.

    Returns whether any row is labeled: the ``labels_checked`` promise of
    :func:`kdpipe.losses.hard_label_loss`.
    """
    if y is None or not len(y):
        return False
    low, high = y.min(), y.max()
    if low < -1 or high >= n_classes:
        bad = np.unique(y[(y < -1) | (y >= n_classes)]).tolist()
        raise ValueError(
            f"labels must be class codes in [-1, {n_classes}) (-1 = unlabeled), got {bad}"
        )
    return bool(high >= 0)


def _to_device(
    batch: Batch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | SparseTargets | None]:
    pin = device.type == "cuda"

    def move(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if device.type == "cpu":
            return t  # .to() of a CPU tensor still costs a dispatch per call
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    y = None if batch.y is None else move(batch.y)
    v = batch.teacher_logits
    if isinstance(v, (TopKTargets, SampledTargets)):
        return move(batch.X), y, v.to_torch(device)
    return move(batch.X), y, None if v is None else move(v)


def _set_epoch(source: RowSource, epoch: int) -> None:
    set_epoch = getattr(source, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


def _make_optimizer(module: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = module.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {config.optimizer!r}")


def _evaluate(
    module: torch.nn.Module,
    source: RowSource,
    rows: np.ndarray,
    config: TrainingConfig,
    device: torch.device,
) -> tuple[float, float]:
    """Mean loss and accuracy on labeled rows (nan when there are none) of ``rows``."""
    module.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total_rows, labeled = 0, 0
    with torch.no_grad():
        for batch in prefetched(source, _row_batches(rows, config.batch_size, None)):
            X, y, v = _to_device(batch, device)
            z = module(X)
            checked = check_codes(batch.y, z.shape[1])
            total_loss += batch_loss(z, y, v, config, labels_checked=checked) * len(batch.X)
            total_rows += len(batch.X)
            if y is not None and batch.y is not None:
                correct += ((z.argmax(dim=1) == y) & (y >= 0)).sum()
                labeled += int(np.count_nonzero(batch.y >= 0))
    accuracy = int(correct) / labeled if labeled else float("nan")  # one sync per evaluation
    return float(total_loss) / max(total_rows, 1), accuracy


def train_student(
    module: torch.nn.Module,
    source: RowSource,
    rows: np.ndarray,
    config: TrainingConfig,
    *,
    seed: int,
    validation_rows: np.ndarray | None = None,
    verbose: int = 0,
) -> list[dict[str, float]]:
    """Train ``module`` in place on ``source``'s ``rows``; return the per-epoch history.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a float32 batch ``(b, ...)`` to logits ``(b, C)``. Moved to the device.
    source : RowSource
        Where minibatches come from.
    rows : ndarray of int
        Training rows of ``source``.
    config : TrainingConfig
    seed : int
        Seeds shuffling and dropout: the same seed gives the same weights on CPU.
    validation_rows : ndarray of int, optional
        Rows scored after each epoch; required for early stopping, after which the
        weights of the best epoch are restored.
    verbose : int, default=0
        0: silent; 1: a progress bar over epochs (loss, rows/s); 2: a line per epoch.

    Returns
    -------
    list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``val_loss``,
        ``val_accuracy`` (nan without validation rows or labels), ``rows_per_s``,
        ``seconds``.
    """
    if config.early_stopping and (validation_rows is None or len(validation_rows) == 0):
        raise ValueError("early stopping needs validation rows")
    rows = np.asarray(rows, dtype=np.intp)
    if len(rows) == 0:
        raise ValueError("no training rows")
    device = resolve_device(config.device)
    module.to(device)
    optimizer = _make_optimizer(module, config)
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    best_loss, best_state, stale = np.inf, None, 0

    # one CPU thread for a small model (kdpipe.devices: the thread rule)
    with (
        seeded(seed, device),
        small_model_threads(module, device),
        tqdm(
            total=config.max_epochs, desc="student", unit="epoch", disable=verbose != 1, leave=False
        ) as bar,
    ):
        for epoch in range(1, config.max_epochs + 1):
            start = time.perf_counter()
            module.train()
            # summed on the device: reading a loss back each step would sync a GPU
            epoch_loss = torch.zeros((), device=device)
            _set_epoch(source, epoch)  # a cache of views: each row's view for this epoch
            batches = _row_batches(rows, config.batch_size, rng, config.shuffle_window)
            for batch in prefetched(source, batches):
                X, y, v = _to_device(batch, device)
                optimizer.zero_grad(set_to_none=True)
                z = module(X)  # (batch, classes)
                checked = check_codes(batch.y, z.shape[1])  # numpy, on the CPU: no sync
                loss = batch_loss(z, y, v, config, labels_checked=checked)
                loss.backward()
                optimizer.step()
                epoch_loss += loss.detach() * len(batch.X)
            train_loss = float(epoch_loss) / len(rows)  # the one sync of the epoch
            if not np.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss became {train_loss} in epoch {epoch}: lower "
                    "learning_rate or check the inputs and teacher logits"
                )
            seconds = time.perf_counter() - start
            record = {
                "epoch": float(epoch),
                "train_loss": train_loss,
                "val_loss": float("nan"),
                "val_accuracy": float("nan"),
                "rows_per_s": len(rows) / seconds if seconds > 0 else float("inf"),
                "seconds": seconds,
            }
            if validation_rows is not None and len(validation_rows):
                _set_epoch(source, 0)  # validation scores the same view of each row every epoch
                record["val_loss"], record["val_accuracy"] = _evaluate(
                    module, source, np.asarray(validation_rows), config, device
                )
            history.append(record)
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['train_loss']:.4f}", rows_s=f"{record['rows_per_s']:.0f}"
            )
            if verbose >= 2:
                print(
                    f"epoch {epoch:3d}  train_loss {record['train_loss']:.4f}  "
                    f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}  "
                    f"{record['rows_per_s']:.0f} rows/s",
                    flush=True,
                )
            if config.early_stopping:
                if record["val_loss"] < best_loss - config.tol:
                    best_loss, stale = record["val_loss"], 0
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    stale += 1
                    if stale >= config.n_iter_no_change:
                        break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history


def predict_logits(
    module: torch.nn.Module,
    X: Any,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Student logits ``(n, C)`` for every row of ``X`` (numpy or on-disk), streamed.

    Batches keep the sample shape of ``X`` and go through
    :func:`kdpipe.rows.to_model_dtype` (the uint8 rule), as in training.

    The module runs on ``device`` for this call only: it goes back where it was.
    """
    device = resolve_device(device)
    home = next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device
    n = X.shape[0]
    out: list[np.ndarray] = []
    try:
        module.to(device)
        module.eval()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                rows = np.arange(start, min(start + batch_size, n))
                block = to_model_dtype(take_rows(X, rows))  # (b, *sample_shape) float32
                x = torch.from_numpy(np.ascontiguousarray(block)).to(device)
                out.append(module(x).cpu().numpy())
    finally:
        module.to(home)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
