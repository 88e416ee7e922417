"""Row reads through whole storage blocks, with a small shared memory of recent blocks.

zarr, h5py and the logit cache decompress (and check) a whole chunk to return any row
of it, so reading shuffled minibatches row by row would decode the same chunks again and
again. Readers here load whole row blocks, keep the most recent ones in a byte-bounded
LRU, and gather the requested rows from them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

__all__ = ["BlockMemory", "gather_rows"]


class BlockMemory:
    """Thread-safe LRU of numpy blocks keyed by block index, bounded in bytes.

    Parameters
    ----------
    max_bytes : int
        Memory for recently used blocks; a block larger than this is never kept.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks held now."""
        return self._bytes

    def get(self, index: int, load: Callable[[int], np.ndarray]) -> np.ndarray:
        """Block ``index`` from memory, or ``load(index)`` (outside the lock) and keep it."""
        with self._lock:
            block = self._blocks.get(index)
            if block is not None:
                self._blocks.move_to_end(index)
                return block
        block = load(index)
        with self._lock:
            if index not in self._blocks and block.nbytes <= self.max_bytes:
                self._blocks[index] = block
                self._bytes += block.nbytes
                while self._bytes > self.max_bytes:
                    self._bytes -= self._blocks.popitem(last=False)[1].nbytes
        return block


def gather_rows(
    rows: np.ndarray, block_rows: int, block: Callable[[int], np.ndarray], out: np.ndarray
) -> np.ndarray:
    """Fill ``out[i] = row rows[i]``, fetching each touched block once via ``block(b)``."""
    blocks = rows // block_rows
    if len(rows) > 1 and np.any(blocks[1:] < blocks[:-1]):
        order = np.argsort(blocks, kind="stable")
        for where in np.split(order, np.flatnonzero(np.diff(blocks[order])) + 1):
            b = int(blocks[where[0]])
            out[where] = block(b)[rows[where] - b * block_rows]
        return out
    # rows grouped by block already (sorted reads): contiguous slices, no index arrays
    bounds = [0, *(np.flatnonzero(np.diff(blocks)) + 1).tolist(), len(rows)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if start == stop:
            continue
        b = int(blocks[start])
        out[start:stop] = block(b)[rows[start:stop] - b * block_rows]
    return out
