"""Chunk storage as one small HDF5 file per chunk: ``hdf5/000012.h5``, holding datasets
``logits`` (rows, M, C), ``labels`` (rows,) and ``row_digests`` (rows,; format 2); a
views cache holds ``logits`` (rows, V, M, C) and ``view_digests`` (rows, V) too.

A file per chunk makes parallel writers safe without a lock (no two tasks touch the
same file) and makes a killed build harmless: each file is written under a temporary
name and renamed into place, so a crash leaves either a whole chunk or none, never a
damaged shared file (see :meth:`Hdf5ChunkStore.write_chunk`). Datasets use the
fletcher32 checksum filter. Files are opened for each read and closed again, so no
handle is ever shared across a fork.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdpipe.cache.durable import atomic_write, write_step
from kdpipe.cache.manifest import Manifest
from kdpipe.errors import CacheChunkMissingError, CacheCorruptError

__all__ = ["Hdf5ChunkStore"]


class Hdf5ChunkStore:
    """Whole-chunk reads and writes of one cache's per-chunk HDF5 files."""

    dirname = "hdf5"

    def __init__(self, root: str | Path, manifest: Manifest, *, writable: bool = False) -> None:
        # ``writable`` is accepted so both stores open alike; each HDF5 read or write opens
        # its own file in its own mode, so there is nothing to remember
        self.path = Path(root) / self.dirname
        self.manifest = manifest

    def create(self) -> None:
        """Create the (empty) chunk directory."""
        write_step("create-store", self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def chunk_paths(self, index: int) -> list[Path]:
        """Files that hold chunk ``index``."""
        return [self.path / f"{index:06d}.h5"]

    def write_chunk(
        self, index: int, logits: np.ndarray, labels: np.ndarray, digests: np.ndarray,
        view_digests: np.ndarray | None = None,
    ) -> None:
        """Write chunk ``index`` whole and durably: logits ``(rows, M, C)`` (``(rows, V, M, C)``
        with views), labels and row digests ``(rows,)``, view digests ``(rows, V)``.

        The file is written under a temp name beside its target, fsynced, renamed into
        place, and the folder fsynced: a crash leaves the old file or the new one.
        """
        import h5py

        def write(tmp: Path) -> None:
            # "w-": h5py creates the file (mode 0o666 & ~umask); the random name is new
            with h5py.File(tmp, "w-") as f:
                f.create_dataset("logits", data=logits, chunks=logits.shape, fletcher32=True)
                f.create_dataset("labels", data=labels, chunks=labels.shape, fletcher32=True)
                f.create_dataset("row_digests", data=digests, chunks=digests.shape, fletcher32=True)
                if view_digests is not None:
                    f.create_dataset("view_digests", data=view_digests, chunks=view_digests.shape, fletcher32=True)

        atomic_write(self.chunk_paths(index)[0], write)

    def read(self, name: str, index: int) -> np.ndarray:
        """Chunk ``index`` of array ``name`` (``"logits"``, ``"labels"`` or ``"row_digests"``), as stored."""
        import h5py

        path = self.chunk_paths(index)[0]
        if not path.exists():
            raise CacheChunkMissingError(f"chunk {index} is missing: {path} does not exist")
        try:
            with h5py.File(path, "r") as f:
                return f[name][...]
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise CacheCorruptError(f"chunk {index} ({path}) cannot be read: {exc}") from exc
