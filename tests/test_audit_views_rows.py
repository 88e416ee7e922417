"""Tests the mutation audit of views, augmentations, rows, the engine and labels found missing.

Each test checks documented behaviour against a reference written here (numpy's own
SeedSequence, per-image numpy slicing, numpy losses), never against the module's own
outputs recombined.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from view_streams import below, shift_reference, words_of

from kdpipe import Views
from kdpipe.augment import Crop, HFlip, Shift, apply_views
from kdpipe.cache import build_cache
from kdpipe.cache.views import parse_views, views_differences
from kdpipe.engine import TrainingConfig, train_student
from kdpipe.rows import Batch

C = 3


def images(n, h=6, w=6, seed=0):
    return np.random.default_rng(seed).integers(1, 256, (n, 1, h, w)).astype(np.uint8)


def linear_teacher(width, seed=1):
    W = np.random.default_rng(seed).normal(size=(width, C)).astype(np.float32)

    def teacher(batch):
        return np.asarray(batch).reshape(len(batch), -1).astype(np.float32) @ W

    teacher.kdpipe_fingerprint = f"audit-linear-{seed}-{width}"
    return teacher, W


# -- Views settings -------------------------------------------------------------------------


def test_views_refuse_a_zero_count_a_seed_past_32_bits_and_identical_views():
    with pytest.raises(ValueError, match="positive integer"):
        Views(count=0, augment=Shift(1))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        Views(count=2, augment=Shift(1), seed=2**32)
    assert Views(count=2, augment=Shift(1), seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValueError, match="identical views"):
        Views(count=2)


def test_one_augmented_view_is_a_views_cache_not_a_plain_one(tmp_path):
    # "None with count=1: no views": with an augmentation, one view is still a view
    one = Views(count=1, augment=HFlip(p=1.0))
    assert not one.trivial and parse_views(one) is one
    X = images(8)
    teacher, W = linear_teacher(36)
    cache = build_cache(teacher, X, tmp_path / "c", views=one, progress=False, chunk_rows=4)
    assert cache.n_views == 1
    flipped = X[..., ::-1].reshape(8, -1).astype(np.float32)
    np.testing.assert_allclose(cache.read_views(np.arange(8), 0)[:, 0], flipped @ W, rtol=1e-5)


def test_a_resume_compares_user_augmentations_by_fingerprint_not_by_name():
    def record(name, fingerprint):
        augment = {"kind": "callable", "name": name, "fingerprint": fingerprint}
        return {"count": 2, "seed": 0, "augment": augment}

    # the same function defined elsewhere is the same augmentation
    assert views_differences(record("a.f", "code:1"), record("b.g", "code:1")) == []
    differs = views_differences(record("a.f", "code:1"), record("a.f", "code:2"))
    assert len(differs) == 1 and differs[0].startswith("views augment")


# -- built-in augmentations -----------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(5, 9), (9, 5)])
def test_crop_of_non_square_images_draws_top_and_left_over_their_own_ranges(h, w):
    x = images(40, h, w)
    rows, views = np.arange(40), np.arange(40) % 3
    size, pad = 4, 1
    out = apply_views(Crop(size, padding=pad), x, rows, views, seed=6)
    lefts = set()
    for i in range(40):
        wd = words_of(6, rows[i], views[i], 2)
        top = below(wd[0], h + 2 * pad - size + 1)
        left = below(wd[1], w + 2 * pad - size + 1)
        lefts.add(left)
        padded = np.pad(x[i], [(0, 0), (pad, pad), (pad, pad)])
        np.testing.assert_array_equal(out[i], padded[:, top : top + size, left : left + size])
    assert len(lefts) > 2


def test_stream_words_refuse_an_entropy_word_of_2_to_the_32():
    from kdpipe.augment import stream_words

    top = stream_words([2**32 - 1, 0, 0], 2)  # the largest word is SeedSequence's
    assert top.tolist() == np.random.SeedSequence([2**32 - 1, 0, 0]).generate_state(2).tolist()
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        stream_words([2**32, 0, 0], 2)  # would wrap to the stream of 0


# -- ViewDataset ----------------------------------------------------------------------------


def epoch_views(seed, epoch, rows, n_views):
    """The documented choice: uniform in [0, n_views) from SeedSequence([seed, epoch, row])."""
    return np.array(
        [
            below(np.random.SeedSequence([seed, epoch, int(r)]).generate_state(1)[0], n_views)
            for r in rows
        ]
    )


def test_view_dataset_follows_set_epoch_its_seed_and_the_labels_given(tmp_path):
    from kdpipe.errors import InputError
    from kdpipe.view_dataset import ViewDataset

    n, V = 12, 4
    X = images(n)
    teacher, W = linear_teacher(36)
    cache = build_cache(
        teacher,
        X,
        tmp_path / "c",
        y=np.arange(n) % C,
        views=Views(V, Shift(1), seed=4),
        progress=False,
        chunk_rows=5,
    )
    y = (np.arange(n) + 1) % C  # the caller's labels, not the cache's
    data = ViewDataset(X, cache, y, seed=7)
    rows = np.arange(n)
    chosen = []
    for epoch in (1, 2, 3):  # set_epoch after items were read still changes the views
        data.set_epoch(epoch)
        items = data.__getitems__(rows.tolist())
        views = epoch_views(7, epoch, rows, V)
        seen = np.stack([shift_reference(X[r], 1, 4, r, v) for r, v in zip(rows, views)])
        got_x = np.stack([it[0].numpy() for it in items])
        np.testing.assert_array_equal(got_x, seen.astype(np.float32) / 255)
        got_logits = np.stack([it[1].numpy() for it in items])[:, 0]
        np.testing.assert_allclose(
            got_logits, seen.reshape(n, -1).astype(np.float32) @ W, rtol=1e-5
        )
        assert [int(it[2]) for it in items] == y.tolist()
        x5, _, y5 = data[5]
        np.testing.assert_array_equal(x5.numpy(), got_x[5])
        assert int(y5) == y[5]
        chosen.append(views)
    assert not np.array_equal(chosen[0], chosen[1])
    with pytest.raises(InputError, match="aligned"):
        ViewDataset(X[:-1], cache)


# -- the training loop ----------------------------------------------------------------------


class _Scripted:
    """A row source that records what the engine asks: rows per fetch, the epoch set."""

    resident = True  # read inline: the order of calls is the engine's

    def __init__(self, n=200, val_logits=None):
        self.n = n
        self.epoch = None
        self.fetches: list[tuple[object, np.ndarray]] = []
        self.val_logits = list(val_logits or [])
        self.evaluations = 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def fetch(self, rows):
        rows = np.asarray(rows)
        self.fetches.append((self.epoch, rows.copy()))
        X = np.zeros((len(rows), 2), dtype=np.float32)
        if rows.min() >= 100:  # validation rows: logits [a, 0] for the class 0
            a = self.val_logits[min(self.evaluations, len(self.val_logits) - 1)]
            self.evaluations += 1
            X[:, 0] = a
        return Batch(X=X, y=np.zeros(len(rows), dtype=np.int64), teacher_logits=None)


class _Identity(torch.nn.Module):
    """Logits are the inputs (one parameter, for the optimizer; lr=0 keeps it at 1)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


def _config(**kw):
    settings = dict(loss="hard", optimizer="sgd", learning_rate=0.0, device="cpu", batch_size=7)
    return TrainingConfig(**(settings | kw))


def test_each_epoch_visits_every_row_once_in_a_seeded_shuffle():
    rows = np.arange(0, 60, 2)  # 30 rows: four batches of 7 and one of 2
    orders = {}
    for seed in (0, 1):
        source = _Scripted()
        train_student(_Identity(), source, rows, _config(max_epochs=2), seed=seed)
        per_epoch = {}
        for epoch, got in source.fetches:
            per_epoch.setdefault(epoch, []).append(got)
        assert sorted(per_epoch) == [1, 2]
        for batches in per_epoch.values():
            assert [len(b) for b in batches] == [7, 7, 7, 7, 2]
            order = np.concatenate(batches)
            assert sorted(order.tolist()) == rows.tolist()  # each row once, none dropped
            assert not np.array_equal(order, rows)  # shuffled
        assert not np.array_equal(np.concatenate(per_epoch[1]), np.concatenate(per_epoch[2]))
        orders[seed] = np.concatenate(per_epoch[1])
    assert not np.array_equal(orders[0], orders[1])  # the seed seeds the shuffle


def test_a_shuffle_window_keeps_windows_whole_and_visits_them_in_random_order():
    rows = np.arange(60)  # six windows of 10 rows
    windows = [set(range(s, s + 10)) for s in range(0, 60, 10)]
    window_orders = []
    for seed in range(3):
        source = _Scripted(n=200)
        config = _config(max_epochs=2, batch_size=10, shuffle_window=10)
        train_student(_Identity(), source, rows, config, seed=seed)
        for _, got in source.fetches:  # batches of 10 aligned with windows of 10
            assert set(got.tolist()) in windows
        order = np.concatenate([got for _, got in source.fetches])
        assert sorted(order.tolist()) == sorted(2 * rows.tolist())  # two epochs, every row
        window_orders.append([int(b[0]) // 10 for _, b in source.fetches])
        assert any(not np.array_equal(b, np.sort(b)) for _, b in source.fetches)
    assert any(w != sorted(w[:6]) + sorted(w[6:]) for w in window_orders)


def test_validation_scores_one_view_per_row_while_each_epoch_trains_on_its_own():
    source = _Scripted(val_logits=[0.0])
    train_student(
        _Identity(),
        source,
        np.arange(10),
        _config(max_epochs=3),
        seed=0,
        validation_rows=np.arange(100, 104),
    )
    train_epochs = [e for e, rows in source.fetches if rows.min() < 100]
    val_epochs = {e for e, rows in source.fetches if rows.min() >= 100}
    assert train_epochs == [1, 1, 2, 2, 3, 3]
    assert len(val_epochs) == 1  # the same view of each validation row every epoch


def _expected_stop(losses_, patience, tol):
    """Epochs run by the documented rule: stop after `patience` epochs without a
    validation-loss decrease of more than `tol` below the best so far."""
    best, stale = np.inf, 0
    for epoch, loss in enumerate(losses_, start=1):
        if loss < best - tol:
            best, stale = loss, 0
        else:
            stale += 1
            if stale >= patience:
                return epoch
    return len(losses_)


def test_early_stopping_counts_epochs_without_an_improvement_larger_than_tol():
    # val loss of logits [a, 0] for class 0: log(1 + exp(-a))
    targets = [1.0, 0.99995, 0.5, 0.49995, 0.4999, 0.49985, 0.4998, 0.49975, 0.4997]
    a = [-np.log(np.expm1(t)) for t in targets]
    for patience in (2, 3):
        source = _Scripted(val_logits=a)
        history = train_student(
            _Identity(),
            source,
            np.arange(10),
            _config(
                max_epochs=len(targets), early_stopping=True, n_iter_no_change=patience, tol=1e-4
            ),
            seed=0,
            validation_rows=np.arange(100, 104),
        )
        val = [h["val_loss"] for h in history]
        np.testing.assert_allclose(val, targets[: len(val)], rtol=1e-5)
        assert len(history) == _expected_stop(targets, patience, 1e-4)


def _cross_entropy(z, y):
    """Mean cross-entropy over rows labeled >= 0, in float64 numpy."""
    z = np.asarray(z, dtype=np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    keep = y >= 0
    return float(-logp[np.flatnonzero(keep), y[keep]].mean())


def test_history_losses_are_means_over_rows_and_validation_runs_in_eval_mode():
    from kdpipe.rows import MinibatchSource

    rng = np.random.default_rng(3)
    X = rng.normal(size=(45, 5)).astype(np.float32)
    y = rng.integers(0, C, 45)
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, C)
    # dropout after the layer: active in training, identity when scoring validation rows
    module = torch.nn.Sequential(linear, torch.nn.Dropout(0.5))
    W, b = linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()
    train, val = np.arange(30), np.arange(30, 45)  # batches of 7: uneven last batches
    history = train_student(
        module, MinibatchSource(X, y), train, _config(max_epochs=2), seed=0, validation_rows=val
    )
    expected_val = _cross_entropy(X[val] @ W.T + b, y[val])
    for record in history:
        assert record["val_loss"] == pytest.approx(expected_val, rel=1e-5)
    # without dropout, the training loss (weights frozen by lr=0) is the mean over rows too
    torch.manual_seed(0)
    plain = torch.nn.Linear(5, C)
    history = train_student(plain, MinibatchSource(X, y), train, _config(max_epochs=1), seed=0)
    expected = _cross_entropy(X[train] @ W.T + b, y[train])
    assert history[0]["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_validation_accuracy_counts_labeled_rows_only():
    from kdpipe.rows import MinibatchSource

    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, C, 40)
    y[[21, 25, 26, 30, 33, 38]] = -1  # unlabeled validation rows
    teacher = rng.normal(size=(40, C)).astype(np.float32)
    torch.manual_seed(1)
    linear = torch.nn.Linear(5, C)
    W, b = linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()
    val = np.arange(20, 40)
    history = train_student(
        linear,
        MinibatchSource(X, y, teacher),
        np.arange(20),
        _config(loss="distillation", max_epochs=1),
        seed=0,
        validation_rows=val,
    )
    labeled = val[y[val] >= 0]
    predicted = np.argmax(X[labeled] @ W.T + b, axis=1)
    assert history[0]["val_accuracy"] == pytest.approx(np.mean(predicted == y[labeled]))


def test_split_validation_without_labels_is_a_random_partition_of_the_rows():
    from kdpipe.engine import split_validation

    rows = np.arange(10, 60)
    firsts = set()
    for seed in range(4):
        train, val = split_validation(rows, 0.3, np.random.default_rng(seed))
        assert len(val) == 15 and len(train) == 35
        assert sorted(np.concatenate([train, val]).tolist()) == rows.tolist()  # disjoint, whole
        firsts.add(tuple(val.tolist()))
    assert len(firsts) > 1


def test_split_validation_draws_each_class_share_at_random():
    from kdpipe.engine import split_validation

    rows = np.arange(60)
    y = np.repeat([0, 1, 2], 20)
    picks = set()
    for seed in range(4):
        train, val = split_validation(rows, 0.25, np.random.default_rng(seed), y)
        assert np.bincount(y[val]).tolist() == [5, 5, 5]
        assert sorted(np.concatenate([train, val]).tolist()) == rows.tolist()
        picks.add(tuple(val.tolist()))
    # not the first rows of each class every time
    assert len(picks) > 1


# -- rows -----------------------------------------------------------------------------------


def test_lazy_rows_index_like_numpy_with_negative_rows_and_masks():
    import zarr

    from kdpipe.rows import LazyRows, positions

    X = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    z = zarr.create_array(store={}, shape=X.shape, chunks=(3, 3), dtype="f4")
    z[:] = X
    view = LazyRows(z)
    for key in ([-1, 0, -7, 3], np.array([-2, -2, 5]), X[:, 0] % 2 == 0, slice(1, None, 2)):
        np.testing.assert_array_equal(np.asarray(view[key]), X[key])
        assert positions(key, 7).tolist() == np.arange(7)[key].tolist()
    np.testing.assert_array_equal(view[-1], X[-1])
    for bad in (np.ones(6, dtype=bool), np.ones(8, dtype=bool)):
        with pytest.raises(IndexError, match="boolean index"):
            positions(bad, 7)


def test_a_row_with_one_nan_among_finite_values_is_named():
    from kdpipe.errors import InputError, TeacherOutputError
    from kdpipe.rows import check_finite_rows

    block = np.ones((4, 3, 2), dtype=np.float32)
    block[2, 1, 0] = np.nan  # one value of row 2 of 6
    with pytest.raises(InputError, match=r"rows \[12\]"):
        check_finite_rows(block, np.array([10, 11, 12, 13]), "X")
    logits = np.zeros((3, 4), dtype=np.float32)
    logits[0, 3] = np.inf
    with pytest.raises(TeacherOutputError, match=r"rows \[5\]"):
        check_finite_rows(logits, np.array([5, 6, 7]), "teacher_logits")
    check_finite_rows(np.ones((2, 3), dtype=np.float32), np.arange(2), "X")  # finite: no error


def test_minibatches_of_an_on_disk_x_are_checked_for_nan_per_read():
    import zarr

    from kdpipe.errors import InputError
    from kdpipe.rows import MinibatchSource

    X = np.ones((12, 4), dtype=np.float32)
    X[9, 3] = np.nan
    z = zarr.create_array(store={}, shape=X.shape, chunks=(5, 4), dtype="f4")
    z[:] = X
    source = MinibatchSource(z, np.zeros(12, dtype=np.int64))
    assert np.array_equal(source.fetch(np.array([4, 0, 2])).X, X[[4, 0, 2]])
    with pytest.raises(InputError, match=r"rows \[9\]"):
        source.fetch(np.array([1, 9, 3]))  # the NaN row is not the first of its minibatch


# -- labels ---------------------------------------------------------------------------------


def test_class_columns_reorder_a_teachers_logits_into_the_ensembles_order():
    from kdpipe.errors import ClassMismatchError
    from kdpipe.labels import class_columns

    own = np.array(["a", "b", "c", "d"])
    order = np.array(["c", "a", "d", "b"])  # not an involution: a permutation's inverse differs
    logits = np.array([[10.0, 20.0, 30.0, 40.0]])  # the teacher's columns a, b, c, d
    columns = class_columns(own, order, "member 0")
    assert logits[:, columns].tolist() == [[30.0, 10.0, 40.0, 20.0]]
    assert class_columns(np.array([0, 1]), np.array(["0", "1"]), "m") is None  # same classes
    assert class_columns(np.array([1, 0]), np.array([0, 1]), "m").tolist() == [1, 0]
    with pytest.raises(ClassMismatchError, match="member 0"):
        class_columns(own, np.array(["a", "b", "c", "e"]), "member 0")


def test_labels_encode_as_positions_in_the_class_list_with_minus_one_unlabeled():
    from kdpipe.errors import ClassMismatchError, InputError
    from kdpipe.labels import class_list, encode_labels, resolve_classes

    classes = np.array(["cat", "ant", "bee"])  # not sorted: codes are positions in this list
    y = np.asarray(["bee", "cat", -1, "ant", "bee"])  # numpy makes -1 the string "-1"
    assert encode_labels(y, classes).tolist() == [2, 0, -1, 1, 2]
    with pytest.raises(ClassMismatchError, match="-1"):
        encode_labels(np.array([0, -1, 1]), np.array([-1, 0, 1]))  # -1 cannot also be a class
    with pytest.raises(InputError, match="repeat"):
        class_list([0, 1, 1], "classes")
    # the cache's list is the order of its logits: a declared list in another order is refused
    with pytest.raises(ClassMismatchError, match="order of its logits"):
        resolve_classes(np.array([0, 1, 2]), [0, 1, 2], [2, 0, 1], has_teacher=True)
    assert resolve_classes(np.array([0, 1]), None, [2, 0, 1], has_teacher=True).tolist() == [
        2,
        0,
        1,
    ]
    with pytest.raises(ClassMismatchError, match="contain -1"):
        resolve_classes(np.array([0, 1]), [-1, 0, 1], None, has_teacher=True)
    assert resolve_classes(np.array([0, 1]), [-1, 0, 1], None, has_teacher=False).tolist() == [
        -1,
        0,
        1,
    ]


def test_every_row_of_the_first_four_minibatches_is_checked_against_its_digest(tmp_path):
    from kdpipe.errors import RowMismatchError
    from kdpipe.rows import CHECKED_BATCHES, MinibatchSource

    assert CHECKED_BATCHES == 4  # documented: every row of the first CHECKED_BATCHES minibatches
    n = 160
    X = images(n)
    teacher, _ = linear_teacher(36)
    cache = build_cache(
        teacher, X, tmp_path / "c", views=Views(2, Shift(1), seed=4), progress=False, chunk_rows=64
    )
    altered = X.copy()
    bad = np.array([123, 126, 129, 133])  # rows of the fourth minibatch of 40
    altered[bad, 0, 2, 2] ^= 1  # pixels no shift by 1 moves out of the image
    source = MinibatchSource(altered, None, cache)
    source.set_epoch(1)
    for start in (0, 40, 80):
        source.fetch(np.arange(start, start + 40))
    with pytest.raises(RowMismatchError, match=r"row 1(23|26|29|33) "):
        source.fetch(np.arange(120, 160))
