"""Typed errors, so callers can tell *why* kdpipe refused something.

Every error kdpipe raises on purpose derives from :class:`KdpipeError`. Errors about
caller input also derive from :class:`ValueError`, so generic ``except ValueError``
handlers (and scikit-learn's own checks) keep working.
"""

from __future__ import annotations

__all__ = [
    "KdpipeError",
    "MissingDependencyError",
    "InputError",
    "TeacherOutputError",
    "ClassMismatchError",
    "CacheError",
    "CacheMismatchError",
    "CacheIncompleteError",
    "CacheCorruptError",
    "CacheChunkMissingError",
    "CacheNotFoundError",
    "CacheLockedError",
    "UnsafeCacheLinkError",
    "RowMismatchError",
    "UsageError",
    "SparseFormatError",
    "SparseSizeError",
]


class KdpipeError(Exception):
    """Base class of every error kdpipe raises on purpose."""


class InputError(KdpipeError, ValueError):
    """Bad caller input: wrong shape, NaN values, unknown label, bad parameter."""


class TeacherOutputError(InputError):
    """A teacher returned unusable logits (NaN/inf, wrong shape, wrong class set)."""


class ClassMismatchError(InputError):
    """Class lists that must agree (labels, cache, ensemble members) do not."""


class RowMismatchError(InputError):
    """The rows (or labels) given do not line up with the rows a logit cache was built from."""


class CacheError(KdpipeError):
    """Base class of logit-cache problems."""


class CacheMismatchError(CacheError, ValueError):
    """The cache was built from another teacher, other data or other settings."""


class CacheIncompleteError(CacheError):
    """The cache is not finished: some chunks were never written."""


class CacheCorruptError(CacheError):
    """A chunk or the manifest does not match its checksum, or cannot be decoded."""


class CacheChunkMissingError(CacheIncompleteError, CacheCorruptError):
    """A chunk's data is absent: never written, or deleted after it was recorded."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """There is no kdpipe logit cache at the path: it is missing, a plain file, or a folder without one."""


class CacheLockedError(CacheError):
    """Another build holds the cache's path (see :mod:`kdpipe.cache.lock`); the message names it and since when."""


class UnsafeCacheLinkError(CacheCorruptError):
    """A symbolic link inside a cache folder: kdpipe never writes or deletes through one."""


class UsageError(InputError):
    """The command line is wrong (an option missing or not usable); ``kdpipe`` exits with 2."""


class MissingDependencyError(KdpipeError, ImportError):
    """An optional package that the request needs (``s3fs`` for an ``s3://`` URL) is not installed."""


class SparseSizeError(InputError):
    """A sparse format keeps as many values a row as the teacher has classes (``TopK(k)``
    with ``k >= C``, ``LowRank(rank)`` with ``rank >= C``): a dense cache stores the
    same in fewer bytes. ``kdpipe build-cache --sparse`` exits with 2 for it."""


class SparseFormatError(InputError):
    """A sparse logit cache was asked for what its format cannot give (dense logits,
    another temperature than a sampled cache was drawn at, logit matching)."""
