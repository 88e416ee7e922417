"""Row reads of an on-disk array through a small cache of whole row blocks.

zarr and h5py decompress a whole chunk to return any row of it, so reading a shuffled
minibatch row by row decompresses the same chunks again and again. :class:`BlockReader`
reads chunk-aligned row blocks with one slice each, keeps the most recent ones (LRU,
bounded in bytes) and gathers the requested rows from them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

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
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def _block(self, index: int) -> np.ndarray:
        with self._lock:
            block = self._lru.get(index)
            if block is not None:
                self._lru.move_to_end(index)
                return block
        start = index * self.block_rows
        block = np.asarray(self.array[start : start + self.block_rows])
        with self._lock:
            if index not in self._lru and block.nbytes <= self.cache_bytes:
                self._lru[index] = block
                self._bytes += block.nbytes
                while self._bytes > self.cache_bytes:
                    self._bytes -= self._lru.popitem(last=False)[1].nbytes
        return block

    def __getitem__(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.intp)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        blocks = rows // self.block_rows
        for b in np.unique(blocks):
            where = np.flatnonzero(blocks == b)
            out[where] = self._block(int(b))[rows[where] - b * self.block_rows]
        return out

    def __getstate__(self) -> dict[str, Any]:  # the cache stays behind
        return {"array": self.array, "block_rows": self.block_rows, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        BlockReader.__init__(self, state["array"], state["block_rows"], state["cache_bytes"])
