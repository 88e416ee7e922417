"""Augmented views (issue 17): streams, augmentations, views in the cache, training on views.

References are written independently of kdpipe.augment: numpy's own SeedSequence per
row-view, and per-image numpy padding and slicing for the pixel moves.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from view_streams import below, shift_reference, words_of

import kdpipe
from kdpipe import DistilledClassifier, Views
from kdpipe.augment import (
    Compose,
    Crop,
    GlobalRandom,
    HFlip,
    Shift,
    apply_views,
    augmentation_from_dict,
    stream_words,
)
from kdpipe.cache import LogitCache, TopK, build_cache
from kdpipe.cache.fingerprint import row_digests
from kdpipe.cache.sparse import reduce_logits
from kdpipe.errors import CacheMismatchError, InputError, RowMismatchError
from kdpipe.rows import MinibatchSource, choose_views

N, C = 24, 3


def images(n=N, seed=0):
    return np.random.default_rng(seed).integers(1, 256, (n, 1, 6, 6)).astype(np.uint8)


def linear_teacher(seed=1, width=36):
    W = np.random.default_rng(seed).normal(size=(width, C)).astype(np.float32)

    def teacher(batch):
        return np.asarray(batch).reshape(len(batch), -1).astype(np.float32) @ W

    teacher.kdpipe_fingerprint = f"linear-{seed}"
    return teacher


def build(tmp_path, name, X, views, **kw):
    kw = {"chunk_rows": 10, "progress": False, "batch_size": 7, **kw}
    return build_cache(
        linear_teacher(width=int(np.prod(X.shape[1:]))), X, tmp_path / name, views=views, **kw
    )


# -- streams and augmentations ----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 17, 2**32 - 1])
def test_stream_words_are_numpys_seed_sequence_for_every_row_and_view(seed):
    rows = np.array([0, 1, 5, 2**31, 2**32 - 1])
    for view in (0, 7):
        words = stream_words([seed, rows, view], 6)
        for i, r in enumerate(rows):
            assert (
                words[i].tolist()
                == np.random.SeedSequence([seed, int(r), view]).generate_state(6).tolist()
            )
    many = [3, 1, 4, 1, 5, 9]  # more entropy words than SeedSequence's pool of 4
    assert stream_words(many, 9).tolist() == np.random.SeedSequence(many).generate_state(9).tolist()


def test_shift_matches_per_image_padding_and_keeps_uint8():
    x = images(8)
    rows, views = np.arange(8) + 100, np.arange(8) % 3
    out = apply_views(Shift(2), x, rows, views, seed=9)
    assert out.dtype == np.uint8 and out.shape == x.shape
    for i in range(8):
        assert np.array_equal(out[i], shift_reference(x[i], 2, 9, rows[i], views[i]))
    assert not all(np.array_equal(out[i], x[i]) for i in range(8))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_jitter_images_moves_each_image_by_its_drawn_shift_with_zeros_coming_in(dtype):
    from kdpipe.teacher_training import jitter_images

    rng = np.random.default_rng(7)
    h, w, k = 6, 5, 2
    X = rng.integers(1, 255, size=(40, h * w)).astype(dtype)
    out = jitter_images(X, np.random.default_rng(3), image_shape=(h, w), max_shift=k)
    # the draws the function documents, applied one image at a time by plain slicing
    shifts = np.random.default_rng(3).integers(-k, k + 1, size=(len(X), 2))
    for image, moved, (dy, dx) in zip(X.reshape(-1, h, w), out.reshape(-1, h, w), shifts):
        expected = np.zeros_like(image)
        expected[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
            max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
        ]
        np.testing.assert_array_equal(moved, expected)
    assert out.dtype == X.dtype and out.shape == X.shape
    assert len(np.unique(shifts, axis=0)) > 10  # the images did move in many ways
    # a read-only (memory-mapped) or big-endian X, and rows given as images, move alike
    frozen = X.copy()
    frozen.flags.writeable = False
    for other in (frozen, X.astype(X.dtype.newbyteorder(">")), X.reshape(-1, h, w)):
        again = jitter_images(other, np.random.default_rng(3), image_shape=(h, w), max_shift=k)
        np.testing.assert_array_equal(again, out)
        assert again.shape == X.shape
    # no shift: the rows themselves, flattened, and the generator moved on as with a shift
    rng = np.random.default_rng(3)
    still = jitter_images(X.reshape(-1, h, w), rng, image_shape=(h, w), max_shift=0)
    np.testing.assert_array_equal(still, X)
    drawn = np.random.default_rng(3)
    drawn.integers(0, 1, size=(len(X), 2))
    assert rng.integers(1 << 30) == drawn.integers(1 << 30)


def test_shift_with_p_leaves_the_row_itself_where_its_coin_says_and_records_p():
    x = images(400)
    rows, views = np.arange(400), np.arange(400) % 3
    out = apply_views(Shift(2, p=0.25), x, rows, views, seed=9)
    kept = 0
    for i in range(400):
        w = words_of(9, rows[i], views[i], 3)
        if w[2] / 2**32 < 0.25:  # shifted: the same offsets Shift(2) draws from words 0-1
            assert np.array_equal(out[i], shift_reference(x[i], 2, 9, rows[i], views[i]))
        else:
            assert np.array_equal(out[i], x[i])
            kept += 1
    assert 240 < kept < 360  # about 300 of 400 rows unshifted (binomial sd 8.7)
    assert Shift(2, p=0.25).to_dict() == {"kind": "shift", "pixels": 2, "p": 0.25}
    assert Shift(2).to_dict() == {"kind": "shift", "pixels": 2}  # old caches' records unchanged
    assert augmentation_from_dict(Shift(2, p=0.25).to_dict()) == Shift(2, p=0.25)
    with pytest.raises(ValueError, match="p must lie in"):
        Shift(2, p=1.5)


def test_crop_and_hflip_match_per_image_references():
    x = images(6)
    rows, views = np.arange(6), np.full(6, 2)
    out = apply_views(Crop(4, padding=1), x, rows, views, seed=3)
    assert out.shape == (6, 1, 4, 4) and out.dtype == np.uint8
    for i in range(6):
        w = words_of(3, rows[i], 2, 2)
        top, left = below(w[0], 6 + 2 - 4 + 1), below(w[1], 6 + 2 - 4 + 1)
        assert np.array_equal(
            out[i], np.pad(x[i], [(0, 0), (1, 1), (1, 1)])[:, top : top + 4, left : left + 4]
        )
    flipped = apply_views(HFlip(), x, rows, views, seed=3)
    for i in range(6):
        flip = words_of(3, rows[i], 2, 1)[0] / 2**32 < 0.5
        assert np.array_equal(flipped[i], x[i][..., ::-1] if flip else x[i])


def test_compose_gives_each_step_its_own_words_and_batches_do_not_matter():
    x = images(10)
    rows, views = np.arange(10), np.arange(10) % 4
    both = Compose([Shift(1), HFlip()])
    whole = apply_views(both, x, rows, views, seed=5)
    for i in range(10):  # one row at a time: the same view as in a batch of ten
        alone = apply_views(both, x[i : i + 1], rows[i : i + 1], views[i : i + 1], seed=5)
        assert np.array_equal(alone[0], whole[i])
        w = words_of(5, rows[i], views[i], 3)
        dy, dx = below(w[0], 3), below(w[1], 3)
        shifted = np.pad(x[i], [(0, 0), (1, 1), (1, 1)])[:, dy : dy + 6, dx : dx + 6]
        assert np.array_equal(whole[i], shifted[..., ::-1] if w[2] / 2**32 < 0.5 else shifted)


def global_shift(x):
    """A torchvision-v2-style transform: draws from torch's global RNG."""
    k = int(torch.randint(-2, 3, (1,)))
    return torch.roll(x, k, dims=-1)


def test_global_random_adapter_replays_each_view_and_leaves_the_callers_rng_alone():
    x = images(12)
    adapter = GlobalRandom(global_shift, version="roll-v1")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = apply_views(adapter, x, np.arange(12), np.zeros(12), seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator untouched
    again = apply_views(adapter, x[::-1].copy(), np.arange(12)[::-1], np.zeros(12), seed=1)[::-1]
    assert np.array_equal(first, again)  # per row-view, whatever the batch order
    other = apply_views(adapter, x, np.arange(12), np.ones(12), seed=1)
    assert not np.array_equal(first, other)
    assert adapter.to_dict()["fingerprint"] == "user:roll-v1"
    assert GlobalRandom(global_shift).to_dict()["fingerprint"].startswith("code:")


# -- views in the cache ---------------------------------------------------------------------


def test_views_cache_stores_the_teachers_logits_of_each_view_and_its_digest(tmp_path):
    X = images()
    cache = build(tmp_path, "v", X, Views(count=3, augment=Shift(1), seed=4), y=np.arange(N) % C)
    teacher = linear_teacher()
    rows = np.repeat(np.arange(N), 3)
    views = np.tile(np.arange(3), N)
    seen = np.stack([shift_reference(X[r], 1, 4, r, v) for r, v in zip(rows, views)])
    assert np.array_equal(
        cache.replay(X, rows, views), seen
    )  # bitwise: the inputs the teacher scored
    np.testing.assert_array_equal(cache.read_views(rows, views)[:, 0], teacher(seen))
    assert cache.view_digests.reshape(-1).tolist() == row_digests(seen).tolist()
    assert (
        cache.row_digests.tolist() == row_digests(X).tolist()
    )  # the stored rows, for fit's alignment check
    assert cache.manifest.format_version == 4 and cache.verify().ok
    with pytest.raises(InputError, match="3 views"):
        np.asarray(cache)
    sub = cache[[20, 3]]  # a lazy subset reads the same views
    assert np.array_equal(sub.read_views([0, 1], [2, 0]), cache.read_views([20, 3], [2, 0]))
    assert np.array_equal(sub.replay(X[[20, 3]], [0, 1], [2, 0]), cache.replay(X, [20, 3], [2, 0]))


def test_one_view_without_augmentation_is_todays_cache_byte_for_byte(tmp_path, backend):
    X = images()
    plain = build(tmp_path, "plain", X, None, backend=backend)
    same = build(tmp_path, "same", X, Views(), backend=backend)
    files = sorted(p.relative_to(plain.path) for p in plain.path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(same.path) for p in same.path.rglob("*") if p.is_file())
    for name in files:
        a, b = (plain.path / name).read_bytes(), (same.path / name).read_bytes()
        if name.name in (
            "manifest.json",
            "manifest.initial.json",
        ):  # timestamps may differ by a second
            a, b = (json.loads(t) for t in (a, b))
            assert "views" not in a and all("views_crc32c" not in c for c in a["chunks"])
            assert a["format_version"] == 2
            for m in (a, b):
                m.pop("created"), m.pop("finished")
        elif name.suffix == ".h5":  # HDF5 files carry their creation time: compare what they hold
            import h5py

            with h5py.File(plain.path / name) as fa, h5py.File(same.path / name) as fb:
                assert sorted(fa) == sorted(fb) == ["labels", "logits", "row_digests"]
                assert all(np.array_equal(fa[k][...], fb[k][...]) for k in fa)
            continue
        assert a == b, name


def test_resume_with_other_views_is_refused_naming_what_differs(tmp_path):
    X = images()
    build(tmp_path, "v", X, Views(count=2, augment=Shift(1), seed=4))
    for other, what in [
        (Views(count=2, augment=Shift(2), seed=4), "views augment"),
        (Views(count=2, augment=Shift(1), seed=5), "views seed"),
        (Views(count=3, augment=Shift(1), seed=4), "views count"),
        (None, "no views"),
    ]:
        with pytest.raises(CacheMismatchError, match=what):
            build(tmp_path, "v", X, other)
    resumed = build(tmp_path, "v", X, Views(count=2, augment=Shift(1), seed=4))  # the same: resumes
    assert resumed.verify().ok


def test_a_views_manifest_is_readable_only_with_its_own_format_version(tmp_path):
    from kdpipe.cache.manifest import READABLE_VERSIONS, VIEWS_FORMAT_VERSION
    from kdpipe.errors import CacheCorruptError

    cache = build(tmp_path, "v", images(), Views(count=2, augment=Shift(1), seed=0))
    assert (
        cache.manifest.format_version == VIEWS_FORMAT_VERSION == 4
    )  # kdpipe before views reads versions 1-3
    assert VIEWS_FORMAT_VERSION in READABLE_VERSIONS
    path = cache.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2  # views claimed by a version that has none
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError, match="views"):
        LogitCache.open(cache.path)


def test_verify_finds_a_damaged_view_digest_chunk(tmp_path):
    cache = build(tmp_path, "v", images(), Views(count=2, augment=HFlip(), seed=0))
    chunk = next((cache.path / "logits.zarr" / "view_digests").rglob("c/1/*"))
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = LogitCache.open(cache.path).verify()
    assert report.status == "FAILED" and report.corrupt == (1,)


def test_sparse_views_hold_each_views_top_k(tmp_path):
    X = images()
    views = Views(count=3, augment=Shift(1), seed=2)
    dense = build(tmp_path, "dense", X, views)
    sparse = build(tmp_path, "sparse", X, views, sparse=TopK(k=2, temperatures=(2.0,)))
    rows, chosen = np.arange(N), np.arange(N) % 3
    got = sparse.read_views(rows, chosen)
    expected = reduce_logits(dense.read_views(rows, chosen), TopK(k=2, temperatures=(2.0,)))
    assert np.array_equal(got.indices, expected.indices) and np.array_equal(
        got.values, expected.values
    )
    assert (
        sparse.verify().ok
        and sparse.manifest.sparse is not None
        and sparse.manifest.views is not None
    )


def jitter(batch, generator):
    return torch.roll(batch, int(torch.randint(0, 3, (1,), generator=generator)), dims=-1)


def test_a_user_augmentation_is_never_run_from_the_cache_and_must_match(tmp_path):
    X = images()
    build(tmp_path, "u", X, Views(count=2, augment=jitter, seed=1))
    opened = LogitCache.open(tmp_path / "u")
    with pytest.raises(InputError, match="with_augment"):
        opened.replay(X, [0], [1])
    with pytest.raises(CacheMismatchError):
        opened.with_augment(Shift(1))
    bound = opened.with_augment(jitter)
    assert pickle.loads(pickle.dumps(bound[[3, 4]])).replay(X[[3, 4]], [0, 1], [1, 1]).tolist() == (
        bound.replay(X, [3, 4], [1, 1]).tolist()
    )


# -- training on views ------------------------------------------------------------------------


def test_minibatches_pair_each_rows_view_of_the_epoch_with_its_logits(tmp_path):
    X = images()
    cache = build(tmp_path, "v", X, Views(count=4, augment=Shift(1), seed=4), y=np.arange(N) % C)
    source = MinibatchSource(X, cache.labels, cache, view_seed=11)
    rows = np.arange(N)[::-1].copy()
    seen = []
    for epoch in (1, 2):
        source.set_epoch(epoch)
        batch = source.fetch(rows)
        views = np.array(
            [below(np.random.SeedSequence([11, epoch, r]).generate_state(1)[0], 4) for r in rows]
        )
        assert np.array_equal(choose_views(11, epoch, rows, 4), views)
        inputs = np.stack([shift_reference(X[r], 1, 4, r, v) for r, v in zip(rows, views)])
        assert np.array_equal(batch.X, inputs.astype(np.float32) / 255)  # the uint8 rule
        np.testing.assert_array_equal(batch.teacher_logits, cache.read_views(rows, views))
        seen.append(views)
    assert not np.array_equal(*seen)  # another epoch, other views


def test_a_replay_that_differs_is_a_row_mismatch_naming_row_and_view(tmp_path):
    X = images()
    cache = build(tmp_path, "v", X, Views(count=2, augment=Shift(1), seed=4))
    altered = X.copy()
    altered[5, 0, 2, 2] ^= 1  # a pixel no shift by 1 can move out of the image
    source = MinibatchSource(altered, None, cache, view_seed=0)
    source.set_epoch(1)
    view = choose_views(0, 1, np.array([5]), 2)[0]
    with pytest.raises(RowMismatchError, match=f"row 5 \\(row 5 of the cache\\), view {view}"):
        source.fetch(np.arange(N))


def shift_features(batch, generator):
    return torch.roll(batch, int(torch.randint(0, 4, (1,), generator=generator)), dims=1)


def test_distilled_classifier_and_grid_search_train_from_a_views_cache(tmp_path):
    import sklearn
    from sklearn.model_selection import GridSearchCV

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.integers(0, C, 60)
    teacher = linear_teacher(width=6)
    cache = build_cache(
        teacher,
        X,
        tmp_path / "f",
        y=y,
        views=Views(3, shift_features, seed=2),
        chunk_rows=25,
        progress=False,
    )
    est = DistilledClassifier(hidden_layer_sizes=(8,), max_epochs=2, random_state=0, batch_size=16)
    a = est.fit(X, y, teacher_logits=cache).predict_proba(X)
    b = sklearn.clone(est).fit(X, y, teacher_logits=cache).predict_proba(X)
    assert np.array_equal(a, b)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            sklearn.clone(est).set_fit_request(teacher_logits=True),
            {"temperature": [1.0, 4.0], "alpha": [0.5]},
            cv=2,
        )
        search.fit(X, y, teacher_logits=cache)  # each fold: a lazy subset of the views cache
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    with pytest.raises(
        RowMismatchError
    ):  # rows out of order: the alignment check, as without views
        sklearn.clone(est).fit(X[::-1], y[::-1], teacher_logits=cache)


def test_view_dataset_in_a_two_worker_dataloader_gives_the_row_paths_items(tmp_path):
    from torch.utils.data import DataLoader

    from kdpipe.view_dataset import ViewDataset

    X = images()
    cache = build(tmp_path, "v", X, Views(count=4, augment=Shift(1), seed=4), y=np.arange(N) % C)
    data = ViewDataset(kdpipe.LazyRows(X), cache, seed=3)
    data.set_epoch(2)
    loader = DataLoader(data, batch_size=5, num_workers=2, shuffle=False)
    xs, logits, labels = (torch.cat(parts).numpy() for parts in zip(*loader))
    views = choose_views(3, 2, np.arange(N), 4)
    np.testing.assert_array_equal(xs, cache.replay(X, np.arange(N), views).astype(np.float32) / 255)
    np.testing.assert_array_equal(logits, cache.read_views(np.arange(N), views))
    assert labels.tolist() == (np.arange(N) % C).tolist()
    x0, l0, y0 = data[0]
    assert torch.equal(l0, torch.from_numpy(logits[0]))
    assert torch.equal(x0, torch.from_numpy(xs[0])) and int(y0) == 0


def test_a_convnet_student_trains_on_shifted_uint8_images_of_a_views_cache(tmp_path):
    from kdpipe.students import ConvNet

    X = images(40)
    y = np.arange(40) % C
    cache = build(tmp_path, "img", X, Views(count=4, augment=Shift(1), seed=4), y=y)
    est = DistilledClassifier(
        module=ConvNet, module_params={"channels": (4,)}, max_epochs=2, random_state=0, batch_size=8
    )
    est.fit(X, y, teacher_logits=cache)
    assert est.sample_shape_ == (1, 6, 6) and len(est.history_) == 2
    assert est.predict(X).shape == (40,)
    source = MinibatchSource(X, y, cache, view_seed=0)
    source.set_epoch(1)
    batch = source.fetch(np.arange(5))
    views = choose_views(0, 1, np.arange(5), 4)
    # the student receives the view the teacher scored, by the uint8 rule: float32 x / 255
    assert np.array_equal(batch.X, cache.replay(X, np.arange(5), views).astype(np.float32) / 255)
