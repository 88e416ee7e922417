"""Datasets used by kdpipe's pipelines and examples."""

from __future__ import annotations

import gzip
import os
from numbers import Integral, Real
from pathlib import Path
from typing import Literal, overload

import numpy as np

__all__ = ["load_fashion_mnist", "make_confusable_classification"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# idx type codes (third byte of the magic number) -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (MNIST's format), gzipped or not.

    Parameters
    ----------
    path : path
        The file, e.g. ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``.

    Returns
    -------
    ndarray
        The array, shape and dtype as the header says (native byte order).
    """
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: header promises {expected} bytes of data, found {len(data) - offset}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=offset)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def load_fashion_mnist(
    path: str | os.PathLike[str] | None = None, kind: str = "train", *, images: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from its idx files.

    Parameters
    ----------
    path : path, optional
        Directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        Default: ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
    kind : {"train", "test"}
        The 60,000 training or the 10,000 test images.
    images : bool, default=False
        Return the images as stored, ``uint8`` of shape ``(n, 1, 28, 28)`` (for CNNs;
        kdpipe scales them to ``x / 255`` per minibatch, see :mod:`kdpipe.rows`), instead
        of flat float32 rows.

    Returns
    -------
    X : ndarray of shape (n, 784), float32 in [0, 1], or (n, 1, 28, 28) uint8
        The flat rows are ``images.reshape(n, 784) / 255`` in float32, the values a
        student receives from the ``uint8`` images.
    y : ndarray of shape (n,), int64 in 0..9
    """
    if kind not in ("train", "test"):
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    directory = Path(path if path is not None else FASHION_MNIST_DIR)
    prefix = "train" if kind == "train" else "t10k"

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
        raise FileNotFoundError(
            f"{directory / stem}[.gz] not found; install Debian's dataset-fashion-mnist, or name "
            "the folder that holds the files (path= here, data_dir= or --data-dir of kdpipe reproduce)"
        )

    pixels = _read_idx(find(f"{prefix}-images-idx3-ubyte"))  # (n, 28, 28) uint8
    labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    if len(pixels) != len(labels):
        raise ValueError(f"{len(pixels)} images but {len(labels)} labels in {directory}")
    if images:
        return pixels[:, None], labels.astype(np.int64)  # (n, 1, 28, 28), as stored
    X = pixels.reshape(len(pixels), -1).astype(np.float32) / np.float32(255)
    return X, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------
# Synthetic many-class problems with confusable groups (for specialists, section 5).
# ---------------------------------------------------------------------------------------
def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _non_negative_real(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not np.isfinite(float(value))
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@overload
def make_confusable_classification(
    n_samples: int = 10_000,
    n_classes: int = 200,
    *,
    n_groups: int | None = None,
    group_size: int | None = None,
    n_features: int = 20,
    group_separation: float = 12.0,
    class_separation: float = 2.5,
    random_state: int | np.random.RandomState | None = None,
    return_groups: Literal[False] = False,
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def make_confusable_classification(
    n_samples: int = 10_000,
    n_classes: int = 200,
    *,
    n_groups: int | None = None,
    group_size: int | None = None,
    n_features: int = 20,
    group_separation: float = 12.0,
    class_separation: float = 2.5,
    random_state: int | np.random.RandomState | None = None,
    return_groups: Literal[True],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def make_confusable_classification(
    n_samples: int = 10_000,
    n_classes: int = 200,
    *,
    n_groups: int | None = None,
    group_size: int | None = None,
    n_features: int = 20,
    group_separation: float = 12.0,
    class_separation: float = 2.5,
    random_state: int | np.random.RandomState | None = None,
    return_groups: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many classes in groups of mutually confusable classes, with known groups.

    Every class is an isotropic Gaussian blob (unit variance per feature). Group
    centers lie far apart; the class centers of a group lie close to their group's
    center. A classifier then rarely confuses classes of different groups and often
    confuses classes of the same group: the structure that specialists (Hinton et
    al. 2015, section 5) exploit.

    Parameters
    ----------
    n_samples : int, default=10_000
        Number of rows, spread as evenly as possible over the classes.
    n_classes : int, default=200
        Number of classes; labels are ``0 .. n_classes - 1``.
    n_groups : int, optional
        Number of groups of confusable classes. Give at most one of ``n_groups`` and
        ``group_size``; with neither, ``group_size=10``.
    group_size : int, optional
        Classes per group (some groups get one class fewer when ``n_classes`` is not
        a multiple).
    n_features : int, default=20
        Number of features.
    group_separation : float, default=12.0
        Root-mean-square distance between two group centers, in units of the noise
        standard deviation.
    class_separation : float, default=2.5
        Root-mean-square distance between two class centers of the same group, in the
        same units. Two classes at distance ``d`` are confused with probability about
        ``Phi(-d / 2)`` by the Bayes classifier of the pair.
    random_state : int, RandomState instance or None, default=None
        Seeds the centers, the class-to-group assignment and the noise.
    return_groups : bool, default=False
        Also return the group of every class.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
    y : ndarray of shape (n_samples,), int64
    groups : ndarray of shape (n_classes,), int64
        ``groups[c]`` is the group of class ``c``; only with ``return_groups=True``.

    See Also
    --------
    sklearn.datasets.make_blobs : Gaussian blobs without group structure.
    kdpipe.SpecialistEnsembleClassifier : The model these problems are made for.

    Notes
    -----
    Classes are assigned to groups at random (class ``c`` is not in group
    ``c // group_size``), so nothing can recover the groups from label order. Only
    numpy is used; the same ``random_state`` gives the same data.

    References
    ----------
    G. Hinton, O. Vinyals, J. Dean. Distilling the Knowledge in a Neural Network.
    arXiv:1503.02531, 2015, section 5.

    Examples
    --------
    >>> from kdpipe.datasets import make_confusable_classification
    >>> X, y, groups = make_confusable_classification(
    ...     n_samples=600, n_classes=30, group_size=5, random_state=0, return_groups=True
    ... )
    >>> X.shape, str(X.dtype), int(y.max()), len(set(groups.tolist()))
    ((600, 20), 'float32', 29, 6)
    """
    n_samples = _positive_int(n_samples, "n_samples")
    n_classes = _positive_int(n_classes, "n_classes", minimum=2)
    n_features = _positive_int(n_features, "n_features")
    group_separation = _non_negative_real(group_separation, "group_separation")
    class_separation = _non_negative_real(class_separation, "class_separation")
    if n_groups is not None and group_size is not None:
        raise ValueError(
            f"give n_groups or group_size, not both (got n_groups={n_groups!r}, "
            f"group_size={group_size!r})"
        )
    if n_groups is None:
        size = 10 if group_size is None else _positive_int(group_size, "group_size")
        if size > n_classes:
            raise ValueError(f"group_size={size} is larger than n_classes={n_classes}")
        n_groups = -(-n_classes // size)  # ceil
    n_groups = _positive_int(n_groups, "n_groups")
    if n_groups > n_classes:
        raise ValueError(f"n_groups={n_groups} is larger than n_classes={n_classes}")

    from sklearn.utils import check_random_state

    rng = check_random_state(random_state)
    # groups[c]: sizes differ by at most one, assignment shuffled
    groups = rng.permutation(np.arange(n_classes) % n_groups).astype(np.int64)
    # E||a - b||^2 = 2 d s^2 for a, b ~ N(0, s^2 I_d): s makes the RMS distance the separation
    group_scale = group_separation / np.sqrt(2.0 * n_features)
    class_scale = class_separation / np.sqrt(2.0 * n_features)
    group_centers = rng.normal(0.0, group_scale, size=(n_groups, n_features))  # (G, d)
    class_centers = group_centers[groups] + rng.normal(
        0.0, class_scale, size=(n_classes, n_features)
    )  # (C, d)
    y = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)  # balanced
    X = class_centers[y] + rng.normal(0.0, 1.0, size=(n_samples, n_features))  # (n, d)
    X = X.astype(np.float32)
    if return_groups:
        return X, y, groups
    return X, y
