"""The shared block memory and row gathering behind on-disk reads."""

from __future__ import annotations

import numpy as np

from kdpipe._block_memory import BlockMemory, gather_rows


def test_block_memory_loads_once_and_evicts_the_least_recent():
    loads: list[int] = []

    def load(i: int) -> np.ndarray:
        loads.append(i)
        return np.full(10, i, dtype=np.float32)  # 40 bytes

    memory = BlockMemory(max_bytes=80)
    for i in (0, 1, 0, 2, 0, 1):
        assert memory.get(i, load)[0] == i
    # 0 stays (used last before 2 came), 1 was evicted by 2 and loaded again
    assert loads == [0, 1, 2, 1]
    assert len(memory) == 2 and memory.nbytes == 80


def test_block_memory_never_keeps_a_block_larger_than_its_budget():
    memory = BlockMemory(max_bytes=8)
    block = memory.get(0, lambda i: np.zeros(4, dtype=np.float64))
    assert block.shape == (4,) and len(memory) == 0 and memory.nbytes == 0


def test_gather_rows_reads_each_touched_block_once_in_any_row_order():
    data = np.arange(50, dtype=np.int64).reshape(25, 2)
    touched: list[int] = []

    def block(b: int) -> np.ndarray:
        touched.append(b)
        return data[b * 4 : b * 4 + 4]

    rows = np.array([24, 3, 3, 9, 0, 8, 23])
    out = gather_rows(rows, 4, block, np.empty((len(rows), 2), dtype=np.int64))
    np.testing.assert_array_equal(out, data[rows])
    assert sorted(touched) == [0, 2, 5, 6] and len(touched) == len(set(touched))
