"""The chunk memory behind every on-disk row read (kdpipe.rows.ChunkMemory)."""

from __future__ import annotations

import threading

import numpy as np

from kdpipe.rows import ChunkMemory


def _chunked(n_rows: int, chunk_rows: int) -> tuple[np.ndarray, list[int], object]:
    data = np.arange(n_rows * 2, dtype=np.int64).reshape(n_rows, 2)
    loads: list[int] = []

    def load(c: int) -> np.ndarray:
        loads.append(c)
        return data[c * chunk_rows : (c + 1) * chunk_rows].copy()

    return data, loads, load


def _gather(memory: ChunkMemory, rows, load) -> np.ndarray:
    rows = np.asarray(rows)
    return memory.gather(rows, load, np.empty((len(rows), 2), dtype=np.int64))


def test_gather_reads_each_touched_chunk_once_in_any_row_order():
    data, loads, load = _chunked(25, 4)  # 7 chunks, the last one short
    memory = ChunkMemory(4, (2,), np.int64, max_bytes=10**6, n_chunks=7)
    rows = np.array([24, 3, 3, 9, 0, 8, 23])
    np.testing.assert_array_equal(_gather(memory, rows, load), data[rows])
    assert sorted(loads) == [0, 2, 5, 6] and len(loads) == len(set(loads))
    np.testing.assert_array_equal(_gather(memory, rows[::-1], load), data[rows[::-1]])
    assert len(loads) == 4  # all held now: nothing loaded again


def test_memory_evicts_the_least_recently_used_chunk():
    data, loads, load = _chunked(12, 4)  # 3 chunks of 4 rows x 2 int64 = 64 bytes each
    memory = ChunkMemory(4, (2,), np.int64, max_bytes=128, n_chunks=3)
    for c in (0, 1, 0, 2, 0, 1):
        np.testing.assert_array_equal(_gather(memory, [4 * c + 1], load), data[[4 * c + 1]])
    # 0 stays (used last before 2 came), 1 was evicted by 2 and loaded again
    assert loads == [0, 1, 2, 1]
    assert len(memory) == 2 and memory.nbytes == 128


def test_a_batch_wider_than_the_memory_is_still_read_right():
    data, loads, load = _chunked(40, 4)
    memory = ChunkMemory(4, (2,), np.int64, max_bytes=64, n_chunks=10)  # one chunk fits
    rows = np.random.default_rng(0).permutation(40)
    np.testing.assert_array_equal(_gather(memory, rows, load), data[rows])
    assert sorted(loads) == list(range(10)) and len(memory) == 1


def test_memory_is_complete_once_every_chunk_is_held():
    _data, _loads, load = _chunked(12, 4)
    memory = ChunkMemory(4, (2,), np.int64, max_bytes=192, n_chunks=3)
    _gather(memory, [0, 5], load)
    assert not memory.complete  # chunk 2 never read
    _gather(memory, [11], load)
    assert memory.complete
    small = ChunkMemory(4, (2,), np.int64, max_bytes=128, n_chunks=3)  # two of three fit
    _gather(small, np.arange(12), load)
    assert not small.complete


def test_no_memory_holds_nothing():
    data, loads, load = _chunked(8, 4)
    memory = ChunkMemory(4, (2,), np.int64, max_bytes=0, n_chunks=2)
    for _ in range(2):
        np.testing.assert_array_equal(_gather(memory, [1, 5], load), data[[1, 5]])
    assert loads == [0, 1, 0, 1] and len(memory) == 0 and memory.nbytes == 0


def test_threads_reading_at_once_get_their_own_rows():
    data, _, load = _chunked(400, 16)
    memory = ChunkMemory(16, (2,), np.int64, max_bytes=3 * 16 * 2 * 8, n_chunks=25)  # tight
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                rows = rng.integers(0, 400, size=20)
                np.testing.assert_array_equal(_gather(memory, rows, load), data[rows])
        except BaseException as exc:  # noqa: BLE001 (reported in the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
