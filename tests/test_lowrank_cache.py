"""Low-rank logit caches: the basis, the decoded logits and their error bound, resume,
damage, refusals, views and training (the command line: ``test_cli_sparse``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.special import softmax

from kdpipe import DistilledClassifier, Views
from kdpipe.augment import Shift
from kdpipe.cache import LogitCache, LowRank, LowRankLogitCache, build_cache
from kdpipe.cache.lowrank import BASIS_NAME, fit_basis
from kdpipe.cache.sparse import SparseLayout
from kdpipe.cache.storage import open_store
from kdpipe.errors import (
    CacheChunkMissingError,
    CacheCorruptError,
    CacheMismatchError,
    InputError,
    TeacherOutputError,
)

N, D, C, ROWS = 60, 5, 40, 16  # 4 chunks
FIT = 32  # rows the basis is fitted on: the first two chunks


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    W = (3 * rng.normal(size=(D, C))).astype(np.float32)
    return X, rng.integers(0, 5, N), W  # few labels: sklearn warns when most rows have their own


def _teachers(W: np.ndarray) -> list:
    def linear(batch: np.ndarray) -> np.ndarray:  # logits of rank D
        return batch @ W

    def curved(batch: np.ndarray) -> np.ndarray:  # logits of full rank
        return np.tanh(batch) @ W + 0.5 * np.sin(3 * batch @ W)

    linear.kdpipe_fingerprint, curved.kdpipe_fingerprint = "linear", "curved"
    return [linear, curved]


def _build(path, data, sparse, **kw):
    X, y, W = data
    kw = {"y": y, "chunk_rows": ROWS, "progress": False, **kw}
    return build_cache(_teachers(W), X, path, sparse=sparse, **kw)


def test_a_teacher_of_rank_at_most_r_is_stored_exactly_up_to_rounding(tmp_path, data, backend):
    X, _, W = data
    cache = _build(tmp_path / "c", data, LowRank(D, fit_rows=FIT), backend=backend)
    assert isinstance(cache, LowRankLogitCache) and cache.shape == (N, 2, C)
    # float32 coefficients of a rank-D member: the decode is the teacher's logits
    np.testing.assert_allclose(np.asarray(cache)[:, 0], X @ W, atol=1e-4)
    assert cache.info()["format"] == "lowrank" and cache.verify().ok


def test_decoded_logits_are_the_projection_on_the_top_singular_directions(tmp_path, data):
    dense = np.asarray(_build(tmp_path / "dense", data, None, dtype="float16"))
    cache = _build(tmp_path / "lr", data, LowRank(3, fit_rows=FIT), dtype="float16")
    got = np.asarray(cache)
    for m in range(2):  # an independent SVD (scipy's LAPACK driver) of the first FIT rows
        z = dense[:FIT, m].astype(np.float64)
        mean = z.mean(axis=0)
        _, _, vt = scipy.linalg.svd(z - mean, full_matrices=False, lapack_driver="gesvd")
        projector = vt[:3].T @ vt[:3]  # sign-free
        expected = mean + (dense[:, m] - mean) @ projector
        # float16 coefficients: their rounding, relative 2**-11, of logits of size ~10
        np.testing.assert_allclose(got[:, m], expected, atol=0.05)
    assert np.abs(got[:, 1] - dense[:, 1]).max() > 0.5  # the curved member is not rank 3


def test_the_stored_error_is_the_largest_logit_error_and_bounds_the_soft_targets(tmp_path, data):
    X, y, W = data
    W2 = np.random.default_rng(3).normal(size=(D, C)).astype(np.float32)

    def nearly_linear(batch: np.ndarray) -> np.ndarray:  # rank D plus a small full-rank part
        return batch @ W + 0.05 * np.sin(batch @ W2)

    nearly_linear.kdpipe_fingerprint = "nearly-linear"  # type: ignore[attr-defined]
    kw = dict(y=y, chunk_rows=ROWS, progress=False, dtype="float16")
    dense = np.asarray(build_cache(nearly_linear, X, tmp_path / "dense", **kw))
    cache = build_cache(nearly_linear, X, tmp_path / "lr", sparse=LowRank(D, fit_rows=FIT), **kw)
    got = np.asarray(cache).astype(np.float64)
    error = cache.reconstruction_errors()  # (N, 1)
    np.testing.assert_allclose(error[:, 0], np.abs(got - dense).max(axis=2)[:, 0], atol=1e-5)
    assert 0 < error.max() < 0.5  # lossy, but close: the bound below is informative
    for t in (1.0, 2.0, 8.0):  # the documented bound on the soft targets, row by row
        gap = np.abs(softmax(got / t, axis=2) - softmax(dense / t, axis=2)).sum(axis=2)
        bound = np.expm1(2 * error / t)
        assert (gap <= bound + 1e-6).all() and bound.max() < 1


def test_a_resumed_build_reuses_the_basis_and_recomputes_a_lost_chunk_to_the_same_bytes(
    tmp_path, data, backend
):
    spec = LowRank(4, fit_rows=FIT)
    full = _build(tmp_path / "full", data, spec, backend=backend, dtype="float16")
    part = _build(tmp_path / "part", data, spec, backend=backend, dtype="float16")
    basis = (part.path / BASIS_NAME).read_bytes()
    assert basis == (full.path / BASIS_NAME).read_bytes()  # fitted deterministically
    for path in open_store(part.path, part.manifest).chunk_paths(2):
        path.unlink()
    assert not part.verify().ok
    resumed = _build(tmp_path / "part", data, spec, backend=backend, dtype="float16")
    assert resumed.verify().ok and (resumed.path / BASIS_NAME).read_bytes() == basis
    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(full))


def test_a_damaged_or_missing_basis_fails_reads_verify_and_a_resume(tmp_path, data):
    cache = _build(tmp_path / "c", data, LowRank(3, fit_rows=FIT))
    path = cache.path / BASIS_NAME
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match="fails its checksum"):
        np.asarray(LogitCache.open(cache.path))
    report = LogitCache.open(cache.path).verify()
    assert report.status == "FAILED" and report.corrupt == (0, 1, 2, 3)
    assert {p.kind for p in report.problems} == {"corrupt"}
    with pytest.raises(CacheCorruptError, match="overwrite=True"):
        _build(tmp_path / "c", data, LowRank(3, fit_rows=FIT))
    path.unlink()
    with pytest.raises(CacheChunkMissingError, match="is missing"):
        LogitCache.open(cache.path).read_rows(np.array([0]))
    assert {p.kind for p in LogitCache.open(cache.path).verify().problems} == {"missing"}
    path.mkdir()  # a folder in its place: unreadable, an error of kdpipe's, not the OS's
    with pytest.raises(CacheCorruptError, match="cannot be read"):
        LogitCache.open(cache.path).read_rows(np.array([0]))
    assert {p.kind for p in LogitCache.open(cache.path).verify().problems} == {"corrupt"}
    rebuilt = _build(tmp_path / "c", data, LowRank(3, fit_rows=FIT), overwrite=True)
    assert rebuilt.verify().ok


def test_a_resume_refuses_other_rows_to_fit_the_basis_on_even_before_their_chunks_exist(
    tmp_path, data
):
    X, y, W = data
    cache = _build(tmp_path / "c", data, LowRank(3, fit_rows=FIT))
    # as a crash before chunks 0 and 1 (the fit rows) were recorded leaves it
    (cache.path / "manifest.json").write_bytes((cache.path / "manifest.initial.json").read_bytes())
    for record in ("000000", "000001"):
        next((cache.path / "done").glob(f"{record}*")).unlink()
    other = X.copy()
    other[:FIT] = other[:FIT][::-1]
    with pytest.raises(CacheMismatchError, match="fitted on other rows 0-31"):
        _build(tmp_path / "c", (other, y, W), LowRank(3, fit_rows=FIT))
    assert _build(tmp_path / "c", data, LowRank(3, fit_rows=FIT)).verify().ok


def test_other_low_rank_settings_are_refused_with_the_reason(tmp_path, data):
    _build(tmp_path / "c", data, LowRank(3, fit_rows=FIT))
    for other in (LowRank(4, fit_rows=FIT), LowRank(3, fit_rows=FIT + 1), None):
        with pytest.raises(CacheMismatchError, match="sparse format"):
            _build(tmp_path / "c", data, other)


def test_settings_the_cache_cannot_hold_are_refused_before_anything_is_written(tmp_path, data):
    with pytest.raises(InputError, match="rank < 40"):
        _build(tmp_path / "a", data, LowRank(C))
    X, _, W = data
    with pytest.raises(InputError, match="X has 20 rows"):  # fewer rows than directions
        build_cache(_teachers(W), X[:20], tmp_path / "b", sparse=LowRank(30), progress=False)
    with pytest.raises(ValueError, match="more than rank"):
        LowRank(8, fit_rows=8)
    with pytest.raises(InputError, match="same logits for each of the first"):
        build_cache(
            lambda b: np.zeros((len(b), C)), X, tmp_path / "d", sparse=LowRank(3), progress=False
        )
    with pytest.raises(ValueError, match="rank"):
        LowRank(0)
    assert not [p for p in "abd" if (tmp_path / p).exists()]


def test_the_bytes_of_a_row_are_rank_values_and_an_error_per_member():
    layout = SparseLayout(LowRank(248), "float16", 5000, 2)
    assert layout.row_shape == (2, 500)  # 248 float16 coefficients + one float32 error
    assert layout.bytes_per_row / (2 * 5000 * 2) == 0.05


def test_training_from_a_low_rank_cache_is_training_from_its_decoded_logits(tmp_path, data):
    X, y, _ = data
    cache = _build(tmp_path / "c", data, LowRank(4, fit_rows=FIT), dtype="float16")
    for kw in (
        {"temperature": 3.0, "combine": "geometric"},
        {"loss": "logit_matching"},  # needs every logit: a top-k cache refuses it
    ):
        est = DistilledClassifier(
            max_epochs=2, random_state=0, batch_size=16, classes=np.arange(C), **kw
        )
        from_cache = est.fit(X, y, teacher_logits=cache).predict_proba(X)
        in_memory = est.fit(X, y, teacher_logits=np.asarray(cache)).predict_proba(X)
        np.testing.assert_array_equal(from_cache, in_memory)


def test_a_views_cache_stores_every_view_in_the_basis(tmp_path, data):
    y = data[1]
    images = np.random.default_rng(1).normal(size=(N, 1, 4, 4)).astype(np.float32)
    Wi = np.random.default_rng(2).normal(size=(16, C)).astype(np.float32)

    def teacher(batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch).reshape(len(batch), -1) @ Wi

    teacher.kdpipe_fingerprint = "images"  # type: ignore[attr-defined]
    views = Views(count=3, augment=Shift(1), seed=0)
    kw = dict(y=y, chunk_rows=ROWS, progress=False, views=views)
    dense = build_cache(teacher, images, tmp_path / "dense", **kw)
    cache = build_cache(teacher, images, tmp_path / "lr", sparse=LowRank(16, fit_rows=FIT), **kw)
    rows, which = np.array([0, 59, 20, 20]), np.array([0, 2, 1, 2])
    # a linear teacher on 16 pixels: rank 16, so every view decodes exactly
    np.testing.assert_allclose(
        cache.read_views(rows, which), dense.read_views(rows, which), atol=1e-4
    )
    np.testing.assert_array_equal(cache.view_digests, dense.view_digests)


def test_fit_basis_refuses_as_few_rows_as_directions():
    with pytest.raises(InputError, match="X has 4 rows"):
        fit_basis(np.ones((4, 1, 10)), rank=4, dtype="float32")


def test_the_basis_keeps_a_low_rank_matrix_and_drops_exactly_the_energy_beyond_its_rank():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 300)) + rng.normal(size=300)
    basis = fit_basis(exact[:, None, :], rank=5, dtype="float32")
    coefficients, error = basis.encode(exact[:, None, :])
    np.testing.assert_allclose(basis.decode(coefficients)[:, 0], exact, atol=1e-3)
    assert error.max() < 1e-3
    noisy = exact + rng.normal(size=exact.shape)
    basis = fit_basis(noisy[:, None, :], rank=5, dtype="float64")
    coefficients, error = basis.encode(noisy[:, None, :])
    residual = basis.decode(coefficients)[:, 0] - noisy
    # Eckart-Young: the best rank-5 fit of the centred rows is their truncated SVD, and it
    # loses exactly the dropped singular values
    centred = noisy - noisy.mean(0)
    u, sigma, vt = np.linalg.svd(centred, full_matrices=False)
    best = centred - (u[:, :5] * sigma[:5]) @ vt[:5]
    np.testing.assert_allclose(error[:, 0], np.abs(best).max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(residual, -best, atol=1e-5)  # the basis is stored in float32
    assert np.linalg.norm(residual) == pytest.approx(np.sqrt((sigma[5:] ** 2).sum()), rel=1e-4)


def test_specialists_train_from_a_low_rank_cache_as_from_its_decoded_logits(tmp_path, data):
    from kdpipe import SpecialistEnsembleClassifier

    X, y, _ = data
    cache = _build(tmp_path / "c", data, LowRank(4, fit_rows=FIT))
    est = SpecialistEnsembleClassifier(
        generalist=DistilledClassifier(max_epochs=2, random_state=0, classes=np.arange(C)),
        n_specialists=2,
        specialist_max_epochs=2,
        random_state=0,
    )
    from_cache = est.fit(X, y, teacher_logits=cache).predict_proba(X)
    in_memory = est.fit(X, y, teacher_logits=np.asarray(cache)).predict_proba(X)
    np.testing.assert_array_equal(from_cache, in_memory)


def test_coefficients_beyond_float16_are_refused_though_the_logits_fit():
    rng = np.random.default_rng(0)
    z = np.zeros((40, 1, 3000))
    z[:, 0, :] = rng.choice([-1.0, 1.0], size=(40, 1)) * 2000.0  # rows of 2000s: in float16
    basis = fit_basis(z, rank=2, dtype="float16")
    # one direction ~ 1/sqrt(C) per class: its coefficient is 2000 sqrt(3000) ~ 110,000
    with pytest.raises(TeacherOutputError, match="member 0 for rows 100, 101, 102"):
        basis.encode(z, first_row=100)


def test_reads_are_never_resident_so_training_decodes_in_the_reader_thread(tmp_path, data):
    from kdpipe.rows import is_resident

    cache = _build(tmp_path / "c", data, LowRank(3, fit_rows=FIT))
    np.asarray(cache)  # every chunk's records now in chunk memory
    assert cache._handle.memory.complete and not is_resident(cache)


def test_for_error_finds_the_rank_of_each_member_and_keeps_the_largest():
    rng = np.random.default_rng(5)
    n, c = 300, 50
    members = [
        rng.normal(size=(n, r)) @ rng.normal(size=(r, c)) + rng.normal(size=c) for r in (3, 7)
    ]
    logits = np.stack(members, axis=1)  # (n, 2, C)
    ranks = [np.linalg.matrix_rank(m - m.mean(axis=0)) for m in members]  # independent: 3, 7
    assert LowRank.for_error(logits, 1e-3, dtype="float32") == LowRank(max(ranks))
    assert LowRank.for_error(members[0], 1e-3, dtype="float32", fit_rows=200) == LowRank(
        ranks[0], fit_rows=200
    )


def test_for_errors_rank_meets_the_error_in_a_build_and_one_rank_less_does_not(tmp_path, data):
    X, y, W = data
    W2 = np.random.default_rng(3).normal(size=(D, C)).astype(np.float32)

    def curved(batch: np.ndarray) -> np.ndarray:  # full rank, its energy falling off
        return batch @ W + 0.3 * np.sin(batch @ W2)

    curved.kdpipe_fingerprint = "curved-for-error"  # type: ignore[attr-defined]
    max_error = 0.25
    sample = curved(X[:FIT])  # the rows the build fits its basis on
    chosen = LowRank.for_error(sample, max_error, fit_rows=FIT, dtype="float16")
    assert D <= chosen.rank < C - 1  # beyond the linear part, short of every class
    kw = dict(y=y[:FIT], chunk_rows=ROWS, progress=False, dtype="float16")
    built = build_cache(curved, X[:FIT], tmp_path / "chosen", sparse=chosen, **kw)
    assert built.reconstruction_errors().max() <= max_error
    one_less = LowRank(chosen.rank - 1, fit_rows=FIT)
    smaller = build_cache(curved, X[:FIT], tmp_path / "one-less", sparse=one_less, **kw)
    assert smaller.reconstruction_errors().max() > max_error


def test_for_error_refuses_an_error_no_rank_meets_and_a_bad_max_error():
    noise = np.random.default_rng(6).normal(size=(20, 30))  # 20 rows: rank 19 at most
    with pytest.raises(InputError, match="no rank below 20 stores these logits.* at rank 19, is"):
        LowRank.for_error(noise, 1e-9)  # beyond float32 rounding
    for bad in (0, -1.0, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="max_error must be a positive number"):
            LowRank.for_error(noise, bad)
    assert LowRank.for_error(noise, np.int64(100)) == LowRank(1)  # any logit within 100
    for fit_rows in (0, -5, True):
        with pytest.raises(ValueError, match="fit_rows must be a positive integer"):
            LowRank.for_error(noise, 0.1, fit_rows=fit_rows)
    with pytest.raises(ValueError, match="dtype must be 'float16' or 'float32'"):
        LowRank.for_error(noise, 0.1, dtype="int8")
    with pytest.raises(InputError, match="must be finite"):
        LowRank.for_error(np.where(noise > 2, np.inf, noise), 0.1)


def test_for_error_takes_the_builds_default_dtype_and_names_float16_rounding_as_the_limit():
    """Coefficients of order 10 rounded to float16 carry errors of order 1e-2: no rank
    meets 1e-3 there, and the message says why; float32 (build_cache's default) does."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 80)) + rng.normal(size=80)
    assert LowRank.for_error(logits, 1e-3) == LowRank.for_error(logits, 1e-3, dtype="float32")
    assert LowRank.for_error(logits, 1e-3).rank == 6
    with pytest.raises(InputError, match="float16 mostly the coefficients' own rounding"):
        LowRank.for_error(logits, 1e-3, dtype="float16")
