"""Training the MLP teachers that the quickstart and the pipelines distill from.

A teacher is just a student trained longer, wider and with regularization (dropout,
jittered inputs), so this reuses the engine with hard labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from kdpipe.engine import TrainingConfig, seeded, train_student
from kdpipe.rows import MinibatchSource
from kdpipe.students import MLP

if TYPE_CHECKING:
    from kdpipe.augment import Augmentation

__all__ = ["train_mlp_ensemble", "jitter_images", "train_on_views"]


def jitter_images(
    X: np.ndarray, rng: np.random.Generator, *, image_shape: tuple[int, int], max_shift: int
) -> np.ndarray:
    """Shift each flattened image by up to ``max_shift`` pixels in each direction.

    The paper's MNIST teacher saw inputs "jittered by up to two pixels"; pixels shifted
    in from outside are zero. The shifts ``(dy, dx)`` of the rows are drawn from ``rng`` at
    once, ``rng.integers(-max_shift, max_shift + 1, size=(n, 2))``, and applied by the
    crop that :class:`kdpipe.augment.Shift` uses for the views of a cache.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(9, dtype=np.float32).reshape(1, 9)  # one 3x3 image
    >>> rng = np.random.default_rng(0)
    >>> jitter_images(X, rng, image_shape=(3, 3), max_shift=1).reshape(3, 3)
    array([[0., 0., 0.],
           [0., 1., 2.],
           [3., 4., 5.]], dtype=float32)
    """
    from kdpipe.augment import padded_crops

    n = len(X)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    h, w = image_shape
    images = np.asarray(X).reshape(n, h, w)
    if n == 0 or max_shift == 0:
        return images.reshape(n, -1).copy()
    if not images.flags.writeable or not images.dtype.isnative:  # torch takes neither as is
        images = images.astype(images.dtype.newbyteorder("="))
    tops, lefts = max_shift - shifts[:, 0], max_shift - shifts[:, 1]  # in the padded image
    moved = padded_crops(torch.from_numpy(images), max_shift, tops, lefts, h, w)
    return moved.numpy().reshape(n, -1)


def train_on_views(
    model: torch.nn.Module,
    images: np.ndarray,
    y: np.ndarray,
    *,
    augment: Augmentation | None,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    view_seed: int | None = None,
    to_input: Callable[[np.ndarray], torch.Tensor] | None = None,
    after_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on hard labels, each epoch on a fresh augmented view of every row.

    Epoch ``e`` (from 0) shows row ``r`` its view ``e``, drawn from the stream
    ``(view_seed, r, e)`` by :func:`kdpipe.augment.apply_views`: a rerun, in this
    process or another, sees the same views. Each epoch splits a permutation of the rows
    from ``numpy.random.default_rng(seed)`` into ``len(images) // batch_size`` minibatches
    (sizes differ by at most one), each a cross-entropy step of Adam.

    Parameters
    ----------
    model : torch.nn.Module
        Takes what ``to_input`` makes of a batch of views; in train mode during each
        epoch (``after_epoch`` may switch it to eval mode), left in train mode.
    images : ndarray of shape ``(n, *sample_shape)``
        The rows in their stored dtype (views only move pixels).
    y : ndarray of shape (n,)
        Class codes.
    augment : Augmentation or None
        None trains on the rows themselves.
    epochs, batch_size, learning_rate
        Adam training settings.
    seed : int
        Seeds the order of the rows.
    view_seed : int, optional
        Seeds the views (default: ``seed``).
    to_input : callable, optional
        ``to_input(views) -> Tensor``, the model's input; default: float32 as stored.
    after_epoch : callable, optional
        Called as ``after_epoch(epoch, mean_loss)`` after each epoch (from 0).

    Returns
    -------
    list of float
        The mean training loss of each epoch, over its minibatches.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from kdpipe.augment import Shift
    >>> from kdpipe.teacher_training import train_on_views
    >>> images = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> y = np.arange(64) % 2
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    >>> losses = train_on_views(
    ...     model, images, y, augment=Shift(1), epochs=2, batch_size=16, learning_rate=1e-2, seed=0
    ... )
    >>> len(losses)
    2
    """
    from kdpipe.augment import apply_views

    view_seed = seed if view_seed is None else view_seed
    prepare = to_input or (lambda views: torch.from_numpy(views).float())
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    means: list[float] = []
    for epoch in range(epochs):
        model.train()  # after_epoch may have evaluated it
        total, steps = 0.0, 0
        for idx in np.array_split(rng.permutation(len(images)), max(1, len(images) // batch_size)):
            idx = np.sort(idx)
            views = apply_views(augment, images[idx], idx, epoch, view_seed)
            loss = F.cross_entropy(model(prepare(views)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        means.append(total / steps)
        if after_epoch is not None:
            after_epoch(epoch, means[-1])
    return means


@overload
def train_mlp_ensemble(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    n_members: int = 3,
    hidden_layer_sizes: Sequence[int] = (256, 256),
    dropout: float = 0.3,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    n_augmented_copies: int = 0,
    random_state: int = 0,
    device: str = "auto",
    verbose: int = 0,
    return_seconds: Literal[False] = False,
) -> list[torch.nn.Module]: ...


@overload
def train_mlp_ensemble(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    n_members: int = 3,
    hidden_layer_sizes: Sequence[int] = (256, 256),
    dropout: float = 0.3,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    n_augmented_copies: int = 0,
    random_state: int = 0,
    device: str = "auto",
    verbose: int = 0,
    return_seconds: Literal[True],
) -> tuple[list[torch.nn.Module], list[float]]: ...


def train_mlp_ensemble(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    n_members: int = 3,
    hidden_layer_sizes: Sequence[int] = (256, 256),
    dropout: float = 0.3,
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    n_augmented_copies: int = 0,
    random_state: int = 0,
    device: str = "auto",
    verbose: int = 0,
    return_seconds: bool = False,
) -> list[torch.nn.Module] | tuple[list[torch.nn.Module], list[float]]:
    """Train ``n_members`` MLPs that differ only in their random initialization.

    The paper's speech ensemble used identical architectures with different seeds
    (data subsets added no useful diversity), which is what this does.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
        Class codes in ``[0, n_classes)``.
    n_classes : int
    n_members : int, default=3
    hidden_layer_sizes, dropout
        Architecture of every member, see :class:`kdpipe.students.MLP`.
    epochs, batch_size, learning_rate
        Adam training settings.
    augment : callable, optional
        ``augment(X, rng)`` returns a perturbed copy of ``X`` (e.g. :func:`jitter_images`).
    n_augmented_copies : int, default=0
        How many augmented copies of ``X`` are added to the training set.
    random_state : int, default=0
    device : str, default="auto"
    verbose : int, default=0
    return_seconds : bool, default=False
        Also return the wall time of each member's training.

    Returns
    -------
    members : list of torch.nn.Module
        Trained members, in eval mode.
    seconds : list of float
        Wall seconds of each member's training, each from its own timer (the augmented
        copies, made once for all members, are not in any of them). Only with
        ``return_seconds=True``.
    """
    rng = np.random.default_rng(random_state)
    X_train, y_train = X, y
    if augment is not None and n_augmented_copies > 0:
        X_train = np.concatenate([X] + [augment(X, rng) for _ in range(n_augmented_copies)])
        y_train = np.tile(y, n_augmented_copies + 1)
    source = MinibatchSource(X_train.astype(np.float32, copy=False), y_train)
    config = TrainingConfig(
        loss="hard",
        max_epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        device=device,
    )
    members: list[torch.nn.Module] = []
    seconds: list[float] = []
    for m in range(n_members):
        start = time.perf_counter()
        seed = int(rng.integers(2**31))
        with seeded(seed):
            member = MLP(X.shape[1], n_classes, hidden_layer_sizes, dropout=dropout)
        train_student(member, source, np.arange(len(X_train)), config, seed=seed, verbose=verbose)
        members.append(member.cpu().eval())
        seconds.append(time.perf_counter() - start)
    return (members, seconds) if return_seconds else members
