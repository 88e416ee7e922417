"""Row reads of an on-disk array through a small cache of whole row blocks.

zarr and h5py decompress a whole chunk to return any row of it, so reading a shuffled
minibatch row by row decompresses the same chunks again and again. :class:`BlockReader`
reads chunk-aligned row blocks with one slice each, keeps the most recent ones in a
:class:`~kdpipe._block_memory.BlockMemory` and gathers the requested rows from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdpipe._block_memory import BlockMemory, gather_rows

__all__ = ["BlockReader", "row_chunk"]

DEFAULT_BLOCK_ROWS = 4096
DEFAULT_CACHE_BYTES = 64 * 2**20


def row_chunk(array: Any) -> int:
    """Rows per storage chunk of a zarr, h5py or dask array (a default when unknown)."""
    chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)  # dask first
    if chunks and isinstance(chunks[0], (int, np.integer)) and int(chunks[0]) > 0:
        return int(chunks[0])
    return DEFAULT_BLOCK_ROWS


class BlockReader:
    """``reader[rows]`` = ``np.asarray(array[rows])``, read in cached row blocks.

    Parameters
    ----------
    array : zarr, h5py or dask array
    block_rows : int, optional
        Rows per block; default: the array's chunk rows.
    cache_bytes : int, default=64 MiB
        Memory for recently read blocks.
    """

    def __init__(
        self, array: Any, block_rows: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES
    ):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.block_rows = int(block_rows or row_chunk(array))
        self.cache_bytes = int(cache_bytes)
        self._memory = BlockMemory(self.cache_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    def _load(self, index: int) -> np.ndarray:
        start = index * self.block_rows
        return np.asarray(self.array[start : start + self.block_rows])

    def _block(self, index: int) -> np.ndarray:
        return self._memory.get(index, self._load)

    def __getitem__(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.intp)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        return gather_rows(rows, self.block_rows, self._block, out)

    def __getstate__(self) -> dict[str, Any]:  # the cache stays behind
        return {"array": self.array, "block_rows": self.block_rows, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        BlockReader.__init__(self, state["array"], state["block_rows"], state["cache_bytes"])
