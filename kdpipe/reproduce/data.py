"""The train / validation / test splits the experiments read.

Validation rows are held out of every training set: every choice (temperature,
hard-label weight, bias shift) is made on them, and the test rows are read once per
final model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["Splits", "load_splits", "confusable_splits", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class Splits:
    """Float32 inputs in [0, 1] and int64 labels ``0 .. 9``."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int] | None  # None: not images (no jitter)
    class_names: tuple[str, ...]
    # rows of the data that are in no split: an unlabeled addition to a transfer set
    X_unlabeled: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(len(y))`` whose every prefix has the class mix of ``y``."""
    keys = np.empty(len(y))
    for label in np.unique(y):
        where = np.flatnonzero(y == label)
        keys[where] = (rng.permutation(len(where)) + rng.random()) / len(where)
    return np.argsort(keys, kind="stable")


def load_splits(
    dataset: str,
    *,
    n_train: int | None,
    n_val: int,
    n_test: int | None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> Splits:
    """Load ``dataset`` ("digits" or "fashion-mnist") and split it.

    Fashion-MNIST keeps its own 10,000 test images; validation and training rows come
    from its 60,000 training images. Digits (1,797 images, 8x8) is split 30% test,
    ``n_val`` validation, the rest training.
    """
    rng = np.random.default_rng(seed)
    if dataset == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        y = y.astype(np.int64)
        order = _stratified_order(y, rng)
        n_hold = round(0.3 * len(y))
        test, rest = order[:n_hold], order[n_hold:]
        X_pool, y_pool, X_test, y_test = X[rest], y[rest], X[test], y[test]
        shape, names = (8, 8), tuple(str(d) for d in range(10))
    elif dataset == "fashion-mnist":
        from kdpipe.datasets import load_fashion_mnist

        X_pool, y_pool = load_fashion_mnist(data_dir, kind="train")
        X_test, y_test = load_fashion_mnist(data_dir, kind="test")
        shape, names = (28, 28), FASHION_MNIST_CLASSES
    else:
        raise ValueError(f"dataset must be 'digits' or 'fashion-mnist', got {dataset!r}")
    if n_test is not None:
        X_test, y_test = X_test[:n_test], y_test[:n_test]
    order = _stratified_order(y_pool, rng)
    if n_val >= len(order):
        raise ValueError(f"n_val={n_val} leaves no training rows out of {len(order)}")
    val, train = order[:n_val], order[n_val:]
    unused = np.sort(train[n_train:]) if n_train is not None else train[:0]
    if n_train is not None:
        train = train[:n_train]
    train = np.sort(train)  # the cache rows keep the data's order
    return Splits(
        dataset,
        X_pool[train],
        y_pool[train],
        X_pool[val],
        y_pool[val],
        X_test,
        y_test,
        shape,
        names,
        X_pool[unused],
    )


def confusable_splits(n_samples: int, n_classes: int, group_size: int, *, seed: int = 0) -> Splits:
    """:func:`kdpipe.datasets.make_confusable_classification`, split 25% test, 15% validation.

    Class names are ``g<group>/c<class>``, so the report can show which classes a
    specialist covers, as the paper lists its JFT clusters.
    """
    from kdpipe.datasets import make_confusable_classification

    X, y, groups = make_confusable_classification(
        n_samples, n_classes, group_size=group_size, random_state=seed, return_groups=True
    )
    X, y = X.astype(np.float32), y.astype(np.int64)
    order = _stratified_order(y, np.random.default_rng(seed))
    n_test, n_val = round(0.25 * len(y)), round(0.15 * len(y))
    test, val, train = (
        order[:n_test],
        order[n_test : n_test + n_val],
        np.sort(order[n_test + n_val :]),
    )
    names = tuple(f"g{int(groups[c])}/c{c}" for c in range(n_classes))
    return Splits("confusable", X[train], y[train], X[val], y[val], X[test], y[test], None, names)
