"""Chunk storage in a zarr v3 group: arrays ``logits`` (n, M, C), ``labels`` (n,) and
``row_digests`` (n,) (uint64 digests of the input rows; absent in format-1 caches). A
views cache stores ``logits`` (n, V, M, C) and also ``view_digests`` (n, V), the digests
of the augmented inputs the teacher scored.

Every chunk carries a crc32c checksum (``Crc32cCodec``). ``write_empty_chunks`` is on,
so a chunk that happens to equal the fill value is still written: an absent chunk file
always means "not written", which :meth:`ZarrChunkStore.read` reports instead of
letting zarr return fill values.

zarr writes each chunk file under a temp name and renames it into place, but does not
fsync; :meth:`ZarrChunkStore.write_chunk` fsyncs every chunk file and its folder before
it returns, so a completion record written afterwards never points at data a power cut
could still lose.

In object storage (a :class:`~kdpipe.cache.location.RemotePath` root) the group is
opened through zarr's own ``FsspecStore``; each chunk is one object written by one PUT,
which is atomic and durable when it returns, so there is nothing to fsync. Chunks are
never sharded: a partial write into a shard is a read-modify-write that concurrent
writers would lose (zarr issue 3682), and here one task owns one whole chunk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from kdpipe.cache.durable import fsync_dir, fsync_file, write_step
from kdpipe.cache.location import Location, as_location, is_remote
from kdpipe.cache.manifest import Manifest, chunk_bounds
from kdpipe.errors import CacheChunkMissingError, CacheCorruptError

if TYPE_CHECKING:  # zarr is imported where a store is opened
    import zarr
    from zarr.core.array_spec import ArrayConfigParams

__all__ = ["ZarrChunkStore"]


class ZarrChunkStore:
    """Whole-chunk reads and writes of one cache's zarr group."""

    dirname = "logits.zarr"
    _config: ClassVar[ArrayConfigParams] = {"write_empty_chunks": True}
    _names = ("logits", "labels", "row_digests", "view_digests")

    def __init__(
        self, root: str | Path | Location, manifest: Manifest, *, writable: bool = False
    ) -> None:
        self.path = as_location(root) / self.dirname
        self.manifest = manifest
        self.writable = writable
        self._arrays: dict[str, Any] | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None, "_pid": -1}

    def create(self) -> None:
        """Create the empty arrays (metadata only), durably."""
        write_step("create-store", self.path)
        import zarr
        from zarr.codecs import Crc32cCodec, ZstdCodec

        m = self.manifest
        group = zarr.open_group(self._zarr_store(read_only=False), mode="w")
        config = self._config
        group.create_array(
            "logits",
            shape=(m.n_rows, *m.row_shape),
            chunks=(m.chunk_rows, *m.row_shape),
            dtype=m.stored_dtype,
            compressors=[Crc32cCodec()],  # logits hardly compress; checksum only
            fill_value=np.nan if m.sparse is None else 0,  # sparse: uint8 records
            config=config,
        )
        group.create_array(
            "labels",
            shape=(m.n_rows,),
            chunks=(m.chunk_rows,),
            dtype="int64",
            compressors=[ZstdCodec(level=1), Crc32cCodec()],
            fill_value=-1,
            config=config,
        )
        group.create_array(
            "row_digests",
            shape=(m.n_rows,),
            chunks=(m.chunk_rows,),
            dtype="uint64",
            compressors=[Crc32cCodec()],  # hashes do not compress
            fill_value=0,
            config=config,
        )
        if m.views is not None:
            group.create_array(
                "view_digests",
                shape=(m.n_rows, m.n_views),
                chunks=(m.chunk_rows, m.n_views),
                dtype="uint64",
                compressors=[Crc32cCodec()],
                fill_value=0,
                config=config,
            )
        if is_remote(self.path):
            return
        for folder, _, files in os.walk(
            self.path
        ):  # the metadata, durable before the manifest says "initialized"
            for name in files:
                fsync_file(Path(folder) / name)
            fsync_dir(Path(folder))
        fsync_dir(self.path.parent)

    def _zarr_store(self, *, read_only: bool) -> Any:
        path = self.path
        return path.zarr_store(read_only=read_only) if is_remote(path) else path

    def _array_names(self) -> tuple[str, ...]:
        if self.manifest.views is not None:
            return self._names
        return self._names[:3] if self.manifest.has_row_digests else self._names[:2]

    def _open(self) -> dict[str, Any]:
        if self._arrays is None or self._pid != os.getpid():
            import zarr

            try:
                store = self._zarr_store(read_only=not self.writable)
                group = zarr.open_group(store, mode="r+" if self.writable else "r")
                # write_empty_chunks is a runtime setting, not stored with the array
                self._arrays = {
                    k: cast("zarr.Array[Any]", group[k]).with_config(self._config)
                    for k in self._array_names()
                }
            except Exception as exc:  # zarr raises several types for a damaged group
                raise CacheCorruptError(f"cannot open the zarr store {self.path}: {exc}") from exc
            self._pid = os.getpid()
        return self._arrays

    def check_layout(self) -> None:
        """Check the manifest's fields against the stored arrays' shapes, chunks and dtypes.

        Raises
        ------
        CacheCorruptError
            Naming the manifest field that disagrees with the store.
        """
        arrays = self._open()
        m = self.manifest
        logits = arrays["logits"]
        dense = m.sparse is None
        expected = [
            ("n_rows", logits.shape[0], m.n_rows),
            ("chunk_rows", logits.chunks[0], m.chunk_rows),
            ("dtype", str(logits.dtype), m.stored_dtype),
        ]
        row = tuple(logits.shape[1:])  # (views,) + one view's shape in a views cache
        if m.views is not None:
            expected.append(("views", row[:1], (m.n_views,)))
            row = row[1:]
        if dense:
            expected += [
                ("teachers", row[:1], (m.n_members,)),
                ("classes", row[1:], (m.n_classes,)),
            ]
        else:
            expected.append(("sparse", row, tuple(m.view_shape)))
        for name in self._array_names()[1:]:
            expected += [
                ("n_rows", arrays[name].shape[0], m.n_rows),
                ("chunk_rows", arrays[name].chunks[0], m.chunk_rows),
            ]
        for field_name, stored, claimed in expected:
            if stored != claimed:
                what = {"teachers": "members", "classes": "classes", "sparse": "record shape"}.get(
                    field_name, field_name
                )
                raise CacheCorruptError(
                    f"the manifest of {self.path.parent} is corrupt: field {field_name!r} says {what} {claimed!r}, "
                    f"but the zarr store holds {stored!r}"
                )

    def chunk_paths(self, index: int) -> list[Location]:
        """Files that hold chunk ``index`` (logits, labels, row digests, view digests)."""
        return [self._chunk_path(name, index) for name in self._array_names()]

    def _chunk_path(self, name: str, index: int) -> Location:
        array = self._open()[name]
        coords = (index,) + (0,) * (array.ndim - 1)
        return self.path / name / array.metadata.encode_chunk_key(coords)

    def write_chunk(
        self,
        index: int,
        logits: np.ndarray,
        labels: np.ndarray,
        digests: np.ndarray,
        view_digests: np.ndarray | None = None,
    ) -> None:
        """Write chunk ``index`` whole and durably: logits ``(rows, M, C)`` (``(rows, V, M, C)``
        with views), labels and row digests ``(rows,)``, and view digests ``(rows, V)``."""
        arrays = self._open()
        start, stop = chunk_bounds(index, self.manifest.chunk_rows, self.manifest.n_rows)
        blocks = (
            (logits, labels, digests)
            if view_digests is None
            else (logits, labels, digests, view_digests)
        )
        for name, block in zip(self._names, blocks):
            path = self._chunk_path(name, index)
            if is_remote(path):  # one PUT per chunk object: atomic, durable once it returns
                write_step("put", path)
                arrays[name][start:stop] = block
                continue
            existing = path.parent
            while not existing.exists():  # zarr creates the missing folders of the chunk key
                existing = existing.parent
            write_step("write", path)
            arrays[name][start:stop] = block
            write_step("fsync", path)
            fsync_file(path)
            folder = path.parent
            while True:  # new entries: the file, and every folder zarr created on the way
                write_step("fsync-dir", folder)
                fsync_dir(folder)
                if folder == existing:
                    break
                folder = folder.parent

    def read(self, name: str, index: int) -> np.ndarray:
        """Chunk ``index`` of array ``name`` (``"logits"``, ``"labels"``, ``"row_digests"``, ``"view_digests"``), as stored."""
        path = self._chunk_path(name, index)
        if not path.exists():
            raise CacheChunkMissingError(
                f"chunk {index} of {name} is missing: {path} does not exist"
            )
        start, stop = chunk_bounds(index, self.manifest.chunk_rows, self.manifest.n_rows)
        try:
            return np.asarray(self._open()[name][start:stop])
        except Exception as exc:  # checksum or decode failure inside zarr's codec pipeline
            raise CacheCorruptError(
                f"chunk {index} of {name} ({path}) cannot be read: {exc}"
            ) from exc
