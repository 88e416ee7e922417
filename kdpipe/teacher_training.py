"""Training the MLP teachers that the quickstart and the pipelines distill from.

A teacher is just a student trained longer, wider and with regularization (dropout,
jittered inputs), so this reuses the engine with hard labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal, overload

import numpy as np
import torch

from kdpipe.engine import TrainingConfig, seeded, train_student
from kdpipe.rows import MinibatchSource
from kdpipe.students import MLP

__all__ = ["train_mlp_ensemble", "jitter_images"]


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
