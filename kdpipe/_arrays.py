"""Row access that works the same on numpy, zarr, h5py, dask and logit-cache arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["take_rows", "n_rows"]


def n_rows(array: Any) -> int:
    """Number of rows (length of the first axis) of an array-like."""
    shape = getattr(array, "shape", None)
    if shape is not None:
        return int(shape[0])
    return len(array)


def take_rows(array: Any, rows: np.ndarray) -> np.ndarray:
    """Read ``array[rows]`` into memory, in the order of ``rows``.

    Storage-backed arrays are read with sorted, unique indices (h5py demands that, and
    it lets zarr, dask and the logit cache touch each chunk once), then reordered.

    Parameters
    ----------
    array : array-like
        A numpy array or anything indexable along its first axis by an integer array
        whose result ``np.asarray`` accepts (zarr, h5py, dask, :class:`kdpipe.LogitCache`).
    rows : ndarray of int
        Row indices; may repeat and come in any order.

    Returns
    -------
    ndarray
        ``array[rows]`` as a numpy array.
    """
    rows = np.asarray(rows, dtype=np.intp)
    if rows.ndim != 1:
        raise ValueError(f"row indices must be one-dimensional, got shape {rows.shape}")
    if isinstance(array, np.ndarray):
        return array[rows]
    unique, inverse = np.unique(rows, return_inverse=True)
    block = np.asarray(array[unique])
    return block[inverse]
