"""Pick the chunk store of a backend, and check a chunk against its record."""

from __future__ import annotations

from typing import Any

import google_crc32c
import numpy as np

from kdpipe.cache.hdf5_store import Hdf5ChunkStore
from kdpipe.cache.location import is_remote
from kdpipe.cache.manifest import ChunkRecord, Manifest
from kdpipe.cache.zarr_store import ZarrChunkStore
from kdpipe.errors import CacheCorruptError, InputError

__all__ = [
    "ChunkStore",
    "open_store",
    "hdf5_url_message",
    "checksum",
    "read_checked",
    "chunk_parts",
]

ChunkStore = ZarrChunkStore | Hdf5ChunkStore
_STORES: dict[str, type[ZarrChunkStore | Hdf5ChunkStore]] = {
    "zarr": ZarrChunkStore,
    "hdf5": Hdf5ChunkStore,
}


def open_store(root: Any, manifest: Manifest, *, writable: bool = False) -> ChunkStore:
    """The chunk store of the cache at ``root`` (a path, or a URL's ``RemotePath``)."""
    if is_remote(root) and manifest.backend != "zarr":
        raise InputError(hdf5_url_message(root))
    return _STORES[manifest.backend](root, manifest, writable=writable)


def hdf5_url_message(root: Any) -> str:
    """Why an HDF5 cache cannot live at the URL ``root``."""
    return (
        f"an HDF5 cache cannot live in object storage ({root}): HDF5 needs a local file system. "
        "Use backend='zarr' (--backend zarr) for a cache at a URL"
    )


def checksum(block: np.ndarray) -> int:
    """crc32c of an array's bytes (C order)."""
    return google_crc32c.value(np.ascontiguousarray(block).tobytes())


def read_checked(store: ChunkStore, record: ChunkRecord, what: str = "logits") -> np.ndarray:
    """Read one chunk's ``"logits"``, ``"labels"``, ``"digests"`` or ``"views"`` (the view
    digests of a views cache) and compare it with its recorded crc32c.

    A chunk written before row digests existed (format 1) has none: its ``"digests"``
    read is an empty array, not an error.

    Raises
    ------
    CacheChunkMissingError
        The chunk's data is absent.
    CacheCorruptError
        It cannot be decoded, has the wrong shape, or its checksum differs from the record.
    """
    if what == "digests" and record.digests_crc32c is None:
        return np.zeros(0, dtype=np.uint64)
    if what == "views" and record.views_crc32c is None:
        raise CacheCorruptError(
            f"chunk {record.index} has no record of view digests: it was written without views"
        )
    names = {
        "logits": "logits",
        "labels": "labels",
        "digests": "row_digests",
        "views": "view_digests",
    }
    block = store.read(names[what], record.index)
    expected = {
        "logits": record.logits_crc32c,
        "labels": record.labels_crc32c,
        "digests": record.digests_crc32c,
        "views": record.views_crc32c,
    }[what]
    rows = record.stop - record.start
    if block.shape[0] != rows or checksum(block) != expected:
        raise CacheCorruptError(
            f"chunk {record.index} (rows {record.start}-{record.stop - 1}) of {what} does not "
            f"match its recorded checksum"
        )
    return block


def chunk_parts(manifest: Manifest) -> tuple[str, ...]:
    """What :func:`read_checked` reads of every chunk of this cache to check it whole."""
    return (
        ("logits", "labels", "digests")
        if manifest.views is None
        else ("logits", "labels", "digests", "views")
    )
