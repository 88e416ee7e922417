"""Sparse logit caches on disk: what they store, fingerprints, resume, verify, subsets, info."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from scipy.stats import binom

from kdpipe.cache import LogitCache, Sampled, SparseLogitCache, TopK, TopKSampledTail, build_cache
from kdpipe.cache.storage import open_store
from kdpipe.errors import CacheCorruptError, CacheMismatchError, InputError, SparseFormatError
from kdpipe.sparse_targets import SampledTargets, TopKSampledTargets, TopKTargets

N, D, C, ROWS = 60, 5, 40, 16  # 4 chunks


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    W = (3 * rng.normal(size=(D, C))).astype(np.float32)
    return X, rng.integers(0, C, N), W


def _teachers(W: np.ndarray) -> list:
    def first(batch: np.ndarray) -> np.ndarray:
        return batch @ W

    def second(batch: np.ndarray) -> np.ndarray:
        return np.tanh(batch) @ W

    first.kdpipe_fingerprint, second.kdpipe_fingerprint = "first", "second"
    return [first, second]


def _build(path, data, sparse, **kw):
    X, y, W = data
    return build_cache(
        _teachers(W), X, path, y=y, sparse=sparse, chunk_rows=ROWS, progress=False, **kw
    )


def test_topk_cache_stores_the_k_largest_logits_and_the_tail_of_the_dense_cache(
    tmp_path, data, backend
):
    dense = np.asarray(_build(tmp_path / "dense", data, None, backend=backend, dtype="float16"))
    cache = _build(
        tmp_path / "topk", data, TopK(6, temperatures=(4.0, 1.0)), backend=backend, dtype="float16"
    )
    assert isinstance(cache, SparseLogitCache) and cache.shape == (N, 2, C)
    rows = np.array([59, 0, 17, 17, 33])
    got = cache.read_rows(rows)
    assert isinstance(got, TopKTargets) and got.values.shape == (5, 3, 6)
    entries = np.concatenate([dense, dense.astype(np.float64).mean(axis=1, keepdims=True)], axis=1)[
        rows
    ]
    order = np.argsort(-entries, axis=-1, kind="stable")
    np.testing.assert_array_equal(got.indices, order[..., :6])
    np.testing.assert_array_equal(
        got.values, np.take_along_axis(entries, order[..., :6], -1).astype(np.float16)
    )
    tail = np.take_along_axis(entries, order[..., 6:], -1)  # (5, 3, C - 6)
    np.testing.assert_allclose(got.tail_max, tail.max(-1), rtol=1e-6)
    np.testing.assert_allclose(got.tail_mean, tail.mean(-1), rtol=1e-5, atol=1e-5)
    for g, t in enumerate((4.0, 1.0)):
        np.testing.assert_allclose(got.tail_lse[..., g], logsumexp(tail / t, axis=-1), rtol=1e-6)
        np.testing.assert_allclose(
            got.tail_slope[..., g],
            (softmax(tail / t, axis=-1) * tail).sum(-1),
            rtol=1e-5,
            atol=1e-5,
        )


def test_sampled_cache_draws_from_the_teachers_softmax(tmp_path, data):
    X, _y, W = data
    cache = _build(tmp_path / "s", data, Sampled(draws=400, temperature=3.0, seed=1))
    got = cache.read_rows(np.arange(N))
    assert isinstance(got, SampledTargets)
    assert (got.counts.sum(-1) == 400).all()
    dense = np.stack([t(X) for t in _teachers(W)], axis=1).astype(np.float64)
    p = softmax(np.concatenate([dense, dense.mean(axis=1, keepdims=True)], axis=1) / 3.0, axis=-1)
    frequency = np.zeros(p.shape)
    rows, entries = np.indices(got.indices.shape)[:2]
    np.add.at(
        frequency, (rows, entries, got.indices), got.counts / 400
    )  # padding adds 0 to class 0
    count = np.rint(frequency * 400)
    # every count against its Binomial(400, p): two-sided tail, Bonferroni over 7,200 counts
    tails = np.minimum(binom.cdf(count, 400, p), binom.sf(count - 1, 400, p))
    assert (2 * tails).min() > 1e-6
    # distinct classes per row, padding only after them
    filled = got.counts > 0
    for r, e in np.ndindex(*got.counts.shape[:2]):
        drawn = got.indices[r, e][filled[r, e]]
        assert len(np.unique(drawn)) == len(drawn) and filled[r, e][: len(drawn)].all()


def test_sampled_draws_repeat_on_resume_and_do_not_depend_on_batch_size(tmp_path, data):
    a = _build(tmp_path / "a", data, Sampled(32, 2.0), batch_size=7)
    b = _build(tmp_path / "b", data, Sampled(32, 2.0), batch_size=64)
    np.testing.assert_array_equal(
        a.read_rows(np.arange(N)).indices, b.read_rows(np.arange(N)).indices
    )
    c = _build(tmp_path / "c", data, Sampled(32, 2.0, seed=5))
    assert not np.array_equal(a.read_rows(np.arange(N)).indices, c.read_rows(np.arange(N)).indices)


@pytest.mark.parametrize(
    "first, second",
    [
        (None, TopK(4)),
        (TopK(4), None),
        (TopK(4), TopK(8)),
        (TopK(4), Sampled(8, 2.0)),
        (Sampled(8, 2.0), Sampled(8, 3.0)),
        (TopK(4), TopK(4, tail="uniform")),
        (TopK(4), TopK(4, values="uint8")),
        (TopKSampledTail(4, 8, 2.0), TopKSampledTail(4, 8, 3.0)),
        (TopK(4), TopKSampledTail(4, 8, 2.0)),
    ],
)
def test_a_build_with_other_sparse_settings_is_refused_with_the_reason(
    tmp_path, data, first, second
):
    _build(tmp_path / "c", data, first)
    with pytest.raises(CacheMismatchError, match="sparse format"):
        _build(tmp_path / "c", data, second)


def test_a_resumed_sparse_build_recomputes_a_lost_chunk_to_the_same_records(
    tmp_path, data, backend
):
    full = _build(tmp_path / "full", data, TopK(5), backend=backend)
    part = _build(tmp_path / "part", data, TopK(5), backend=backend)
    for path in open_store(part.path, part.manifest).chunk_paths(
        2
    ):  # lost: the resume recomputes it
        path.unlink()
    assert not part.verify().ok
    resumed = _build(tmp_path / "part", data, TopK(5), backend=backend)
    assert resumed.verify().ok
    for name in ("values", "indices", "tail_lse"):
        np.testing.assert_array_equal(
            getattr(resumed.read_rows(np.arange(N)), name),
            getattr(full.read_rows(np.arange(N)), name),
        )


def test_verify_finds_a_corrupt_sparse_chunk(tmp_path, data, backend):
    cache = _build(tmp_path / "c", data, TopK(5), backend=backend)
    assert cache.verify().ok
    path = open_store(cache.path, cache.manifest).chunk_paths(1)[0]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    report = LogitCache.open(cache.path).verify()
    assert report.status == "FAILED" and report.corrupt == (1,)


def test_row_subsets_stay_lazy_sparse_views_and_pickle_small(tmp_path, data):
    cache = _build(tmp_path / "c", data, TopK(5))
    rows = np.array([40, 3, 3, 22, 59])
    view = cache[rows]
    assert isinstance(view, SparseLogitCache) and view.shape == (5, 2, C)
    np.testing.assert_array_equal(view.labels, cache.labels[rows])
    again = pickle.loads(pickle.dumps(view.take([4, 0])))
    assert len(pickle.dumps(view)) < 2000
    np.testing.assert_array_equal(
        again.read_rows(np.arange(2)).values, cache.read_rows(rows[[4, 0]]).values
    )


def test_a_sparse_cache_refuses_dense_reads(tmp_path, data):
    cache = _build(tmp_path / "c", data, TopK(5))
    for read in (np.asarray, lambda c: c.logits, lambda c: c.soft_targets(2.0)):
        with pytest.raises(SparseFormatError, match="holds no dense logits"):
            read(cache)


def test_info_shows_the_format_and_its_bytes_per_row(tmp_path, data):
    dense = _build(tmp_path / "d", data, None, dtype="float16").info()
    info = _build(tmp_path / "s", data, TopK(5, temperatures=(2.0,)), dtype="float16").info()
    assert dense["format"] == "dense" and dense["logit_bytes_per_row"] == 2 * C * 2
    record = 5 * (2 + 2) + 4 + 4 + 2 * 4  # values f2, indices i2, tail max/mean, lse/slope at 1 T
    assert info["format"] == "topk" and info["sparse"]["entries"] == 3
    assert (
        info["format_version"] == 3 and dense["format_version"] == 2
    )  # older kdpipe refuses it by its version
    assert info["logit_bytes_per_row"] == 3 * record == info["sparse"]["record_bytes"] * 3
    assert info["bytes_per_row"] < dense["bytes_per_row"]
    coded = _build(
        tmp_path / "u", data, TopK(5, temperatures=(2.0,), values="uint8"), dtype="float16"
    ).info()
    assert (
        coded["sparse"]["record_bytes"] == 5 * (1 + 2) + 4 + 4 + 4 + 2 * 4
    )  # uint8 codes and the row maximum
    drawn = _build(
        tmp_path / "t", data, TopKSampledTail(5, 3, 2.0, temperatures=(2.0,)), dtype="float16"
    ).info()
    assert drawn["sparse"]["record_bytes"] == record + 3 * (
        2 + 2 + 2
    )  # class, count, logit per draw


def test_examples_in_the_docstrings_run():
    import doctest

    import kdpipe.cache.sparse

    result = doctest.testmod(kdpipe.cache.sparse)
    assert result.attempted >= 5 and result.failed == 0


def test_settings_the_cache_cannot_hold_are_refused_before_anything_is_written(tmp_path, data):
    with pytest.raises(InputError, match="keeps every one of the 40 classes"):
        _build(tmp_path / "c", data, TopK(40))
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="sparse kind"):
        _build(tmp_path / "d", data, {"kind": "topp", "k": 3})


def test_topk_sampled_tail_cache_draws_tail_classes_and_keeps_their_logits(tmp_path, data):
    dense = np.asarray(_build(tmp_path / "dense", data, None, dtype="float16"))
    cache = _build(tmp_path / "c", data, TopKSampledTail(6, 10, 2.0), dtype="float16")
    got = cache.read_rows(np.arange(N))
    assert isinstance(got, TopKSampledTargets) and got.tail_spread == "sampled"
    entries = np.concatenate(
        [dense, dense.astype(np.float64).mean(axis=1, keepdims=True)], axis=1
    )  # (N, 3, C)
    np.testing.assert_array_equal(
        got.indices, np.argsort(-entries, axis=-1, kind="stable")[..., :6]
    )
    used = got.tail_counts > 0
    assert (got.tail_counts.sum(axis=-1) == 10).all()
    for r, e in np.ndindex(N, 3):
        drawn = got.tail_indices[r, e][used[r, e]]
        assert len(set(drawn)) == len(drawn) and not set(drawn) & set(
            got.indices[r, e]
        )  # distinct tail classes
    logits = np.take_along_axis(entries, got.tail_indices, axis=-1).astype(np.float16)
    np.testing.assert_array_equal(got.tail_values[used], logits[used])
    for path in open_store(cache.path, cache.manifest).chunk_paths(
        1
    ):  # lost: the resume draws it again
        path.unlink()
    resumed = _build(tmp_path / "c", data, TopKSampledTail(6, 10, 2.0), dtype="float16").read_rows(
        np.arange(N)
    )
    np.testing.assert_array_equal(resumed.tail_indices, got.tail_indices)
    np.testing.assert_array_equal(resumed.tail_counts, got.tail_counts)


def test_a_topk_cache_recorded_before_issue_21_reads_as_a_bucket_tail_and_resumes(tmp_path, data):
    cache = _build(tmp_path / "c", data, TopK(5, tail="bucket"))
    path = cache.path / "manifest.json"
    manifest = json.loads(path.read_text())
    assert set(manifest["sparse"]) == {
        "kind",
        "k",
        "temperatures",
    }  # recorded as before: older kdpipe reads it
    manifest["sparse"] = {
        "kind": "topk",
        "k": 5,
        "temperatures": manifest["sparse"]["temperatures"],
    }
    path.write_text(json.dumps(manifest))
    old = LogitCache.open(cache.path)
    assert (
        old.sparse == TopK(5, tail="bucket") and old.read_rows(np.arange(3)).tail_spread == "bucket"
    )
    assert old.verify().ok
    _build(
        tmp_path / "c", data, TopK(5, tail="bucket")
    )  # the same settings: resumes, nothing to do
    with pytest.raises(CacheMismatchError, match="sparse format"):
        _build(tmp_path / "c", data, TopK(5, tail="uniform"))  # another format


def _edit(field, value):
    def change(manifest):
        if field == "classes":
            manifest["classes"]["values"] = list(range(C + 10))
        else:
            manifest["sparse"][field] = value

    return change


@pytest.mark.parametrize(
    "sparse, field, value, named",
    [
        (Sampled(10, 2.0), "temperature", 8.0, "sparse.temperature: 8.0 against 2.0"),
        (TopK(5, tail="bucket"), "tail", "uniform", "sparse.tail: 'uniform' against None"),
        (TopK(5, temperatures=(1.0, 4.0)), "temperatures", [1.0, 8.0], "sparse.temperatures"),
        (TopKSampledTail(5, 8, 2.0), "temperature", 4.0, "sparse.temperature: 4.0 against 2.0"),
        (TopK(5), "classes", None, "classes.values"),
    ],
)
def test_a_manifest_setting_that_changes_no_stored_shape_is_caught_and_a_resume_restores_it(
    tmp_path, data, sparse, field, value, named
):
    """Records read the same bytes whatever these settings say, so only the manifest's
    initial copy can tell an edited or damaged one: reads and verify refuse it, naming the
    field; a resume with the cache's settings restores the manifest."""
    cache = _build(tmp_path / "c", data, sparse)
    before = cache.read_rows(np.arange(N))
    path = cache.path / "manifest.json"
    manifest = json.loads(path.read_text())
    _edit(field, value)(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError, match=f"created with.*{named}"):
        LogitCache.open(cache.path)
    resumed = _build(tmp_path / "c", data, sparse, resume=True)
    assert resumed.verify().ok and resumed.sparse == sparse
    after = resumed.read_rows(np.arange(N))
    assert type(after) is type(before) and before._arrays
    for name in before._arrays:  # every stored array, as the build wrote it
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
