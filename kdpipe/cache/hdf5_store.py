"""Chunk storage as one small HDF5 file per chunk: ``hdf5/000012.h5``, holding datasets
``logits`` (rows, M, C), ``labels`` (rows,) and ``row_digests`` (rows,; format 2); a
views cache holds ``logits`` (rows, V, M, C) and ``view_digests`` (rows, V) too.

A file per chunk makes parallel writers safe without a lock (no two tasks touch the
same file) and makes a killed build harmless: each file is written under a temporary
name and renamed into place, so a crash leaves either a whole chunk or none, never a
damaged shared file (see :meth:`Hdf5ChunkStore.write_chunk`). The file is built in
memory (h5py's ``core`` driver) and its bytes written by Python: libhdf5 writing to a
full disk itself crashes the process (SIGSEGV after ``errno = 28``), Python's write
raises an ``OSError`` instead. Datasets use the
fletcher32 checksum filter. Files are opened for each read and closed again, so no
handle is ever shared across a fork.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np

from kdpipe.cache.durable import atomic_write_bytes, write_step
from kdpipe.cache.manifest import Manifest, chunk_bounds
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

    def check_layout(self, index: int | None = None) -> None:
        """Check the manifest's fields against the stored chunk ``index`` (the first that exists by default).

        One small file is opened: its datasets' rows, trailing shape and dtype.

        Raises
        ------
        CacheCorruptError
            Naming the manifest field that disagrees with the store.
        """
        import h5py

        m = self.manifest
        if index is None:
            index = next((i for i in range(m.n_chunks) if self.chunk_paths(i)[0].exists()), None)
            if index is None:
                return
        path = self.chunk_paths(index)[0]
        start, stop = chunk_bounds(index, m.chunk_rows, m.n_rows)
        try:
            with h5py.File(path, "r") as f:
                logits = f["logits"]
                stored = [
                    ("n_rows", logits.shape[0], stop - start),
                    ("dtype", str(logits.dtype), m.stored_dtype),
                ]
                row = tuple(logits.shape[1:])  # (views,) + one view's shape in a views cache
                if m.views is not None:
                    stored.append(("views", row[:1], (m.n_views,)))
                    row = row[1:]
                if m.sparse is None:
                    stored += [
                        ("teachers", row[:1], (m.n_members,)),
                        ("classes", row[1:], (m.n_classes,)),
                    ]
                else:
                    stored.append(("sparse", row, tuple(m.view_shape)))
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise CacheCorruptError(f"chunk {index} ({path}) cannot be read: {exc}") from exc
        for field_name, have, claimed in stored:
            if have != claimed:
                what = "rows" if field_name == "n_rows" else field_name
                raise CacheCorruptError(
                    f"the manifest of {self.path.parent} is corrupt: field {field_name!r} gives chunk {index} "
                    f"{what} {claimed!r}, but {path} holds {have!r}"
                )

    def chunk_paths(self, index: int) -> list[Path]:
        """Files that hold chunk ``index``."""
        return [self.path / f"{index:06d}.h5"]

    def write_chunk(
        self,
        index: int,
        logits: np.ndarray,
        labels: np.ndarray,
        digests: np.ndarray,
        view_digests: np.ndarray | None = None,
    ) -> None:
        """Write chunk ``index`` whole and durably: logits ``(rows, M, C)`` (``(rows, V, M, C)``
        with views), labels and row digests ``(rows,)``, view digests ``(rows, V)``.

        The file is built in memory, then its bytes are written under a temp name beside
        the target, fsynced, renamed into place, and the folder fsynced: a crash leaves
        the old file or the new one.

        Raises
        ------
        OSError
            The disk is full (``errno.ENOSPC``, naming the chunk and the cache's folder)
            or cannot be written; the temp file is removed and finished chunks are kept.
        """
        import h5py

        image = io.BytesIO()
        with h5py.File(image, "w") as f:  # a Python file object: h5py never touches the disk
            f.create_dataset("logits", data=logits, chunks=logits.shape, fletcher32=True)
            f.create_dataset("labels", data=labels, chunks=labels.shape, fletcher32=True)
            f.create_dataset("row_digests", data=digests, chunks=digests.shape, fletcher32=True)
            if view_digests is not None:
                f.create_dataset(
                    "view_digests", data=view_digests, chunks=view_digests.shape, fletcher32=True
                )
        target = self.chunk_paths(index)[0]
        try:
            atomic_write_bytes(target, image.getbuffer().tobytes())
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise OSError(
                errno.ENOSPC,
                f"No space left on device (the disk of {self.path.parent}; chunks finished so far are "
                "kept, free space and rerun to resume)",
                str(target),
            ) from exc

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
