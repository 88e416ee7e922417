"""Settings of a cache build, and the ``parse_*`` helpers that check them (once, here).

The distillation settings of a cache read (temperature, combine) are checked by
:mod:`kdpipe.losses`, where they are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdpipe.errors import InputError

__all__ = [
    "BACKENDS",
    "DTYPES",
    "BuildConfig",
    "parse_backend",
    "parse_dtype",
    "parse_positive_int",
]

BACKENDS = ("zarr", "hdf5")
DTYPES = ("float32", "float16")
_BACKEND_ALIASES = {"zarr": "zarr", "hdf5": "hdf5", "h5": "hdf5", "h5py": "hdf5"}


def parse_backend(value: Any) -> str:
    """Return the canonical backend name (``"zarr"`` or ``"hdf5"``)."""
    key = str(value).lower()
    if key not in _BACKEND_ALIASES:
        raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
    return _BACKEND_ALIASES[key]


def parse_dtype(value: Any) -> str:
    """Return the storage dtype name (``"float32"`` or ``"float16"``)."""
    try:
        name = np.dtype(value).name
    except TypeError:
        raise ValueError(f"dtype must be one of {DTYPES}, got {value!r}") from None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {value!r}")
    return name


def parse_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int >= 1; ``name`` is used in the error message."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BuildConfig:
    """What a build stores and how it is laid out.

    Parameters
    ----------
    backend : {"zarr", "hdf5"}
        Storage format.
    dtype : {"float32", "float16"}
        Storage dtype of the logits (reads always return float32).
    chunk_rows : int
        Rows per storage chunk; one build task owns one whole chunk.
    batch_size : int
        Rows per teacher forward pass. Does not change what is stored (up to
        floating-point rounding), so a resume may use another value.
    """

    backend: str = "zarr"
    dtype: str = "float32"
    chunk_rows: int = 4096
    batch_size: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", parse_backend(self.backend))
        object.__setattr__(self, "dtype", parse_dtype(self.dtype))
        object.__setattr__(self, "chunk_rows", parse_positive_int(self.chunk_rows, "chunk_rows"))
        object.__setattr__(self, "batch_size", parse_positive_int(self.batch_size, "batch_size"))
