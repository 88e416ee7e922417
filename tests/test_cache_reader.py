"""Logit cache reads: lazy subsets, chunk-read counts, sklearn indexing, pickling, processes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from kdpipe.cache import LogitCache, build_cache
from kdpipe.cache.zarr_store import ZarrChunkStore
from kdpipe.rows import take_rows

N, D, C, ROWS = 250, 4, 5, 50  # 5 chunks


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[LogitCache, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(-1, C, N)
    torch.manual_seed(0)
    members = [torch.nn.Linear(D, C), torch.nn.Linear(D, C)]
    path = tmp_path_factory.mktemp("reader") / "c"
    cache = build_cache(members, X, path, y=y, chunk_rows=ROWS, batch_size=25, progress=False)
    return cache, np.asarray(cache)


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """Chunk indices of the logits read from the store, in order."""
    seen: list[int] = []
    original = ZarrChunkStore.read

    def counting(self, name, index):
        if name == "logits":
            seen.append(index)
        return original(self, name, index)

    monkeypatch.setattr(ZarrChunkStore, "read", counting)
    return seen


def test_subsets_compose_and_read_only_touched_chunks(built, reads):
    cache, full = built
    cache = LogitCache.open(cache.path, chunk_cache_bytes=0)
    sub = cache[np.arange(40, 160)]  # chunks 0..3
    subsub = sub[np.array([70, 5, 71, 5])]  # rows 110, 45, 111, 45: chunks 2 and 0
    assert reads == []  # lazy so far
    assert subsub.shape == (4, 2, C) and len(subsub) == 4
    np.testing.assert_array_equal(np.asarray(subsub), full[[110, 45, 111, 45]])
    assert sorted(reads) == [0, 2]  # each touched chunk once
    reads.clear()
    np.testing.assert_array_equal(
        take_rows(cache, np.array([249, 3, 3, 201])), full[[249, 3, 3, 201]]
    )
    assert sorted(reads) == [0, 4]
    np.testing.assert_array_equal(subsub.labels, cache.labels[[110, 45, 111, 45]])


def test_chunk_memory_avoids_rereads(built, reads):
    cache, full = built
    cache = LogitCache.open(cache.path)
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(cache[np.arange(0, 250, 10)]), full[::10])
    assert sorted(reads) == [0, 1, 2, 3, 4]


def test_a_cache_is_resident_once_chunk_memory_holds_every_chunk(built, reads):
    cache, full = built
    cache = LogitCache.open(cache.path)
    view = cache[np.arange(0, 100)]
    assert not cache.resident and not view.resident
    np.asarray(view)  # chunks 0 and 1
    assert not cache.resident
    np.asarray(cache[np.arange(100, 250)])
    assert cache.resident and view.resident  # views share the chunk memory
    reads.clear()
    np.testing.assert_array_equal(np.asarray(view[::7]), full[:100:7])
    assert reads == []
    without_memory = LogitCache.open(cache.path, chunk_cache_bytes=0)
    np.asarray(without_memory)
    assert not without_memory.resident  # nothing is held: every epoch reads storage


@pytest.mark.parametrize(
    "key",
    [
        slice(10, 200, 3),
        np.arange(250) % 3 == 0,
        [5, 1, 249],
        np.array([-1, -250]),
        (np.array([7, 8]), Ellipsis),
    ],
    ids=["slice", "mask", "list", "negative", "tuple-ellipsis"],
)
def test_indexing_forms(built, key):
    cache, full = built
    sub = cache[key]
    assert isinstance(sub, LogitCache) and sub.ndim == 3 and sub.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(sub), full[key])
    np.testing.assert_array_equal(cache[3], full[3])
    np.testing.assert_array_equal(cache[np.array([1, 2]), 1], full[[1, 2], 1])
    with pytest.raises(IndexError):
        cache[np.array([250])]


def test_sklearn_safe_indexing(built):
    from sklearn.model_selection import KFold
    from sklearn.utils import _safe_indexing

    cache, full = built
    for train, test in KFold(3).split(np.zeros(N)):
        part = _safe_indexing(cache, test)
        assert isinstance(part, LogitCache)
        np.testing.assert_array_equal(np.asarray(part), full[test])
    np.testing.assert_array_equal(np.asarray(_safe_indexing(cache, [3, 1])), full[[3, 1]])
    np.testing.assert_array_equal(np.asarray(_safe_indexing(cache, np.arange(N) < 4)), full[:4])


def test_soft_targets_follow_the_papers_formulas(built):
    def softmax64(z: np.ndarray) -> np.ndarray:  # the paper's q_i = exp(z_i) / sum_j exp(z_j)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    cache, full = built
    rows, T = [0, 60, 249], 4.0
    v = full[rows].astype(np.float64)  # (3, M, C) raw member logits
    expected = {
        "arithmetic": softmax64(v / T).mean(axis=1),  # mean_m softmax(v_m / T)
        "geometric": softmax64(v.mean(axis=1) / T),  # softmax(mean_m v_m / T)
    }
    sub = cache[np.array(rows)]
    for combine in ("arithmetic", "geometric"):
        got = sub.soft_targets(T, combine=combine).compute()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected[combine], rtol=1e-5, atol=1e-7)
    assert not np.allclose(expected["arithmetic"], expected["geometric"], atol=1e-4)
    with pytest.raises(ValueError, match="combine"):
        cache.soft_targets(2.0, combine="harmonic")
    with pytest.raises(ValueError, match="temperature"):
        cache.soft_targets(0)


def test_pickled_subset_is_small_and_reopens(built):
    cache, full = built
    sub = cache[np.arange(100, 120)]
    data = pickle.dumps(sub)
    assert len(data) < 2000
    np.testing.assert_array_equal(np.asarray(pickle.loads(data)), full[100:120])


def test_parallel_readers_in_processes(built):
    from joblib import Parallel, delayed

    cache, full = built
    parts = [cache[np.arange(i, N, 4)] for i in range(4)]
    results = Parallel(n_jobs=2, backend="loky")(delayed(np.asarray)(p) for p in parts)
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, full[i::4])
