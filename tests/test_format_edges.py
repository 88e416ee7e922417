"""Edges of the cache formats a mutation audit found untested: low-rank errors of a row
subset, class indices past int16, fresh draws per chunk and per view, how
``LowRank.for_error`` fits and judges, and multi-channel crops.

Every reference is numpy written here: the teacher's logits recomputed and rounded, SVDs,
top-k by sorting, per-image padding and slicing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdpipe
from kdpipe import LowRank, Sampled, TopK, TopKSampledTail, Views, build_cache
from kdpipe.augment import Shift, apply_views, padded_crops

# -- 1. reconstruction errors of a row subset ----------------------------------------------


def _lowrank_teachers(W: np.ndarray) -> list:
    def linear(batch):  # centred logits of rank 6
        return batch @ W

    def curved(batch):  # of full rank
        return np.tanh(batch) @ W + 0.5 * np.sin(3 * batch @ W)

    linear.kdpipe_fingerprint, curved.kdpipe_fingerprint = "edges-linear", "edges-curved"
    return [linear, curved]


def test_reconstruction_errors_of_a_row_subset_are_those_rows_errors_and_the_largest_logit_error(
    tmp_path,
):
    rng = np.random.default_rng(0)
    N, D, C = 50, 6, 20
    X = rng.normal(size=(N, D)).astype(np.float32)
    W = (3 * rng.normal(size=(D, C))).astype(np.float32)
    teachers = _lowrank_teachers(W)
    cache = build_cache(
        teachers,
        X,
        tmp_path / "lr",
        sparse=LowRank(2),
        dtype="float16",
        chunk_rows=16,
        progress=False,
    )
    rows = np.array([37, 3, 49, 3, 20, 0, 37, 16])  # unsorted, repeated, across chunks
    subset = cache[rows].reconstruction_errors()
    whole = cache.reconstruction_errors()
    assert subset.shape == (len(rows), 2) and whole.shape == (N, 2)
    np.testing.assert_array_equal(subset, whole[rows])
    # the reference: the teacher's logits as a float16 dense cache holds them, against the decode
    z = np.stack([t(X[rows]) for t in teachers], axis=1).astype(np.float16).astype(np.float64)
    decoded = np.asarray(cache[rows]).astype(np.float64)
    expected = np.abs(z - decoded).max(axis=2)
    assert expected.min() > 1e-2  # rank 2 of 6 (and of full rank): real errors, row by row
    assert len(np.unique(expected[:, 0].round(4))) >= 5  # they differ between the rows
    # the build's decode and the reader's agree up to float32 rounding of the logits
    tolerance = 1e-5 * np.abs(z).max()
    np.testing.assert_allclose(subset, expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(whole[rows], expected, rtol=0, atol=tolerance)


# -- 2. class indices past int16 ------------------------------------------------------------


def test_topk_indices_of_classes_past_int16_are_not_wrapped(tmp_path):
    C, N, D, spike = 40_000, 6, 3, 39_000
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, D)).astype(np.float32)
    X[:, 0] = [1, -1, 1, 1, -1, 1]  # rows 0, 2, 3, 5: the spike class is their largest logit
    W = rng.normal(size=(D, C)).astype(np.float32)
    W[:, spike] = [50.0, 0.0, 0.0]
    W[:, 40] = [-20.0, 0.0, 0.0]  # the others' largest: class 40

    def teacher(batch):
        return batch @ W

    teacher.kdpipe_fingerprint = "edges-40000-classes"
    cache = build_cache(
        teacher,
        X,
        tmp_path / "top",
        sparse=TopK(3, temperatures=(1.0,)),
        chunk_rows=4,
        progress=False,
    )
    got = cache.read_rows(np.arange(N)).indices[:, 0]  # (N, 3)
    z = (X @ W).astype(np.float32)
    expected = np.argsort(-z, axis=1, kind="stable")[:, :3]
    assert expected[[0, 2, 3, 5], 0].tolist() == [spike] * 4
    assert got[[0, 2, 3, 5], 0].tolist() == [spike] * 4
    np.testing.assert_array_equal(got, expected)
    assert got.max() >= 32_768 and got.min() >= 0


# -- 3. fresh draws per chunk and per view -------------------------------------------------

DRAW_C, DRAWS, DRAW_T = 200, 16, 1000.0


def _collision_bound(z: np.ndarray, temperature: float, n_classes: int, draws: int) -> float:
    """An upper bound on the chance that two independent draws of ``draws`` classes from
    ``softmax(z / T)`` give the same multiset: sum_m P(m)^2 <= max_m P(m) <= draws! p_max^draws."""
    a = z / temperature
    p_max = math.exp(a.max() - a.min()) / n_classes  # no class above e^spread / C
    return math.exp(math.lgamma(draws + 1) + draws * math.log(p_max))


def _draw_teacher():
    W = np.random.default_rng(2).normal(size=(16, DRAW_C)).astype(np.float32)

    def teacher(batch):
        return np.asarray(batch).reshape(len(batch), -1).astype(np.float32) @ W

    teacher.kdpipe_fingerprint = "edges-draws"
    return teacher


def _sampled_records(targets) -> np.ndarray:
    """Each row's drawn classes and counts (sampled tail or sampled classes), (n, E, 2 s)."""
    if hasattr(targets, "tail_indices"):
        return np.concatenate([targets.tail_indices, targets.tail_counts], axis=-1)
    return np.concatenate([targets.indices, targets.counts], axis=-1)


@pytest.mark.parametrize(
    "spec",
    [Sampled(DRAWS, DRAW_T), TopKSampledTail(2, DRAWS, DRAW_T, temperatures=(1.0,))],
    ids=["sampled", "topk-sampled-tail"],
)
def test_identical_rows_in_two_chunks_get_their_own_draws(tmp_path, spec):
    rng = np.random.default_rng(3)
    block = rng.normal(size=(4, 1, 4, 4)).astype(np.float32)
    X = np.concatenate([block, block])  # row i and row i + 4: the same input, chunks 0 and 1
    teacher = _draw_teacher()
    z = teacher(X)
    assert np.array_equal(z[:4], z[4:])
    # near-uniform draws over 200 classes: one row's coincidence is below the bound, all 4 rows'
    # below its 4th power
    bound = _collision_bound(z, DRAW_T, DRAW_C, DRAWS)
    assert bound < 1e-9, bound
    cache = build_cache(teacher, X, tmp_path / "s", sparse=spec, chunk_rows=4, progress=False)
    got = _sampled_records(cache.read_rows(np.arange(8)))
    assert got[:, 0, DRAWS:].sum(axis=1).tolist() == [DRAWS] * 8  # every draw counted
    same = [np.array_equal(got[i], got[i + 4]) for i in range(4)]
    assert not any(same), same


@pytest.mark.parametrize(
    "spec",
    [Sampled(DRAWS, DRAW_T), TopKSampledTail(2, DRAWS, DRAW_T, temperatures=(1.0,))],
    ids=["sampled", "topk-sampled-tail"],
)
def test_views_that_leave_the_row_unchanged_get_their_own_draws(tmp_path, spec):
    X = np.random.default_rng(4).normal(size=(4, 1, 4, 4)).astype(np.float32)
    teacher = _draw_teacher()
    z = teacher(X)
    bound = _collision_bound(z, DRAW_T, DRAW_C, DRAWS)
    assert bound < 1e-9, bound
    views = Views(count=2, augment=Shift(0), seed=0)  # a shift by 0 pixels: the row itself
    for v in (0, 1):
        assert np.array_equal(apply_views(views.augment, X, np.arange(4), v, seed=0), X)
    cache = build_cache(
        teacher, X, tmp_path / "v", sparse=spec, views=views, chunk_rows=4, progress=False
    )
    rows = np.arange(4)
    first = _sampled_records(cache.read_views(rows, np.zeros(4, dtype=np.int64)))
    second = _sampled_records(cache.read_views(rows, np.ones(4, dtype=np.int64)))
    assert first[:, 0, DRAWS:].sum(axis=1).tolist() == [DRAWS] * 4
    same = [np.array_equal(first[i], second[i]) for i in range(4)]
    assert not any(same), same


# -- 4. LowRank.for_error -------------------------------------------------------------------

FIT, LATER, FC = 40, 10, 8
SCALES = np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125])  # spectrum of the fit rows


def _spectrum_logits(later: bool) -> np.ndarray:
    """``FIT`` rows whose centred logits have exactly the singular values ``SCALES`` along
    orthonormal directions ``u_1..u_7`` of R^8 (centred rank ``C - 1 = 7``), then, if
    ``later``, ``LATER`` rows at the mean plus ``3 u_7``: a direction the fit rows barely have."""
    rng = np.random.default_rng(5)
    U = np.linalg.qr(rng.normal(size=(FC, FC)))[0][:, : len(SCALES)].T  # (7, 8) orthonormal rows
    A = rng.normal(size=(FIT, len(SCALES)))
    A = np.linalg.qr(A - A.mean(axis=0))[0]  # orthonormal columns, each of mean 0
    mu = rng.normal(size=FC)
    fit = mu + (A * SCALES) @ U
    if not later:
        return fit
    return np.concatenate([fit, np.tile(mu + 3.0 * U[-1], (LATER, 1))])


def _rank_errors(z: np.ndarray, fit_rows: int, dtype: str) -> np.ndarray:
    """The largest error of every row at ranks 1..C-1 of a basis fitted on the first
    ``fit_rows`` rows, as the docstrings say it is judged: logits rounded to ``dtype``, a
    float64 SVD of the fit rows' centred logits stored as float32, float32 coefficients
    rounded to ``dtype``, the decode and its error in float32."""
    zr = z.astype(dtype).astype(np.float32)
    fitted = zr[:fit_rows].astype(np.float64)
    centre = fitted.mean(axis=0)
    _, _, vt = np.linalg.svd(fitted - centre, full_matrices=False)
    mean = centre.astype(np.float32)
    out = []
    for r in range(1, z.shape[1]):
        V = vt[:r].astype(np.float32)
        c = ((zr - mean) @ V.T).astype(dtype).astype(np.float32)
        decoded = c @ V
        decoded += mean
        out.append(float(np.abs(decoded - zr).max()))
    return np.array(out)  # out[r - 1]: rank r


def test_for_error_fits_on_the_first_rows_and_judges_every_row():
    fit_only = _spectrum_logits(later=False)
    z = _spectrum_logits(later=True)
    errors = _rank_errors(fit_only, FIT, "float32")
    assert np.all(np.diff(errors) < 0)  # the fit rows' error falls with every rank
    max_error = float(np.sqrt(errors[2] * errors[3]))  # met at rank 4, not at rank 3
    assert LowRank.for_error(fit_only, max_error, fit_rows=FIT).rank == 4
    # the later rows are 3 u_7 from the mean: only rank 7 (all of the fit rows' directions)
    # stores them, whatever the fit rows need
    later = _rank_errors(z, FIT, "float32")
    assert later[:-1].min() > 1.0 and later[-1] < 1e-4 < max_error
    assert LowRank.for_error(z, max_error, fit_rows=FIT) == LowRank(FC - 1, fit_rows=FIT)
    # a basis fitted on every row puts u_7 first and meets the error at a lower rank
    assert int(np.argmax(_rank_errors(z, len(z), "float32") <= max_error)) + 1 < FC - 1


def test_for_error_returns_rank_c_minus_1_when_only_it_meets_the_error():
    z = _spectrum_logits(later=False)  # centred rank C - 1: rank C - 1 is exact
    errors = _rank_errors(z, FIT, "float32")
    max_error = 1e-4
    assert errors[-2] > 1e-2 and errors[-1] < max_error / 10
    assert LowRank.for_error(z, max_error, fit_rows=FIT).rank == FC - 1
    with pytest.raises(kdpipe.errors.InputError, match="no rank below"):
        LowRank.for_error(z, errors[-2] / 100, fit_rows=FIT, dtype="float16")


def test_for_error_meets_a_max_error_equal_to_the_error_a_rank_reaches():
    """``max_error`` is met with equality. The error a rank reaches is taken from the
    public basis (:func:`fit_basis`, truncated, :meth:`LowRankBasis.encode` over every
    row: what for_error judges with), so the equality is exact on any BLAS; the numpy
    reference above agrees with it to float32 rounding."""
    from kdpipe.cache.lowrank import LowRankBasis, fit_basis

    z = _spectrum_logits(later=False)
    full = fit_basis(z[:FIT, None, :], FC - 1, "float32")
    reference = _rank_errors(z, FIT, "float32")
    for rank in (2, 4):
        basis = LowRankBasis(full.mean, full.directions[:, :rank].copy(), "float32")
        achieved = float(basis.encode(z[:, None, :])[1].max())
        assert achieved == pytest.approx(reference[rank - 1], rel=1e-4)
        assert reference[rank - 2] > achieved * 1.01  # one rank less does not meet it
        assert LowRank.for_error(z, achieved, fit_rows=FIT).rank == rank


def test_for_error_at_float16_cannot_go_below_the_rounding_of_the_logits():
    # rounding to float16 moves a logit by up to half its ulp: an error no rank removes
    z = _spectrum_logits(later=False) * 40  # logits of tens: float16 steps of 1/64..1/32
    errors16 = _rank_errors(z, FIT, "float16")
    errors32 = _rank_errors(z, FIT, "float32")
    assert errors32[-1] < 1e-3 and errors16[-1] > 1e-3
    with pytest.raises(kdpipe.errors.InputError, match="no rank below"):
        LowRank.for_error(z, 1e-3, fit_rows=FIT, dtype="float16")
    assert LowRank.for_error(z, 1e-3, fit_rows=FIT, dtype="float32").rank == FC - 1


def test_for_error_fits_and_judges_the_logits_as_a_float16_cache_stores_them():
    # logits of centred rank 1 on float16's grid (steps of 1/2 between 512 and 1024), each
    # moved by 0.2: less than half a step, so float16 rounds every one back onto rank 1
    rng = np.random.default_rng(7)
    u = np.array([1.0, -1.0, 0.5, 0.0, 2.0, -0.5, 1.0, 0.0])
    a = rng.integers(-3, 4, size=30).astype(np.float64)
    a[:2] = [-3, 3]
    on_grid = 600.0 + np.arange(FC) + a[:, None] * u
    assert np.array_equal(on_grid.astype(np.float16).astype(np.float64), on_grid)
    moved = on_grid.copy()
    moved[:20, 0] += 0.2  # the fit rows: every one, in class 0 (it moves their mean)
    moved[20:] += 0.2 * rng.choice([-1.0, 1.0], size=(10, FC))  # the later rows: everywhere
    assert np.array_equal(moved.astype(np.float16).astype(np.float64), on_grid)
    errors = _rank_errors(moved, 20, "float16")
    assert errors[0] < 0.01  # rank 1 stores the rounded logits up to the coefficients' rounding
    # the unrounded logits are 0.2 off rank 1 (later rows) and their mean 0.2 off (fit rows)
    assert LowRank.for_error(moved, 0.05, fit_rows=20, dtype="float16").rank == 1
    assert LowRank.for_error(on_grid, 0.05, fit_rows=20, dtype="float16").rank == 1


# -- 5. padded crops of every channel -------------------------------------------------------


def test_padded_crops_crop_every_channel_of_each_image_at_its_own_offset():
    rng = np.random.default_rng(6)
    n, pad, size = 5, 2, 4
    x = rng.integers(1, 256, size=(n, 3, 6, 6)).astype(np.uint8)
    assert not np.array_equal(x[:, 0], x[:, 1]) and not np.array_equal(x[:, 0], x[:, 2])
    top = np.array([0, 4, 2, 6, 1])
    left = np.array([5, 0, 3, 6, 2])
    out = padded_crops(torch.from_numpy(x), pad, top, left, size, size).numpy()
    assert out.shape == (n, 3, size, size) and out.dtype == np.uint8
    for i in range(n):
        padded = np.pad(x[i], [(0, 0), (pad, pad), (pad, pad)])  # zeros around each channel
        expected = padded[:, top[i] : top[i] + size, left[i] : left[i] + size]
        np.testing.assert_array_equal(out[i], expected)
