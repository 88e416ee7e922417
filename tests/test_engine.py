"""The training engine: determinism, early stopping, losses dispatch, row sources."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
import torch
import zarr

from kdpipe import losses
from kdpipe.devices import resolve_device
from kdpipe.engine import (
    TrainingConfig,
    _evaluate,
    batch_loss,
    check_codes,
    predict_logits,
    seeded,
    split_validation,
    train_student,
)
from kdpipe.rows import Batch, LazyRows, MinibatchSource, prefetched, take_rows
from kdpipe.students import MLP


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(4, 6))
    y = rng.integers(0, 4, size=400)
    X = (centers[y] + rng.normal(size=(400, 6))).astype(np.float32)
    return X, y


def _train(X, y, seed, teacher_logits=None, **config) -> tuple[MLP, list]:
    with seeded(seed):
        module = MLP(X.shape[1], 4, (16,), dropout=0.1)
    settings = dict(loss="hard", max_epochs=5, batch_size=32, device="cpu") | config
    history = train_student(
        module,
        MinibatchSource(X, y, teacher_logits),
        np.arange(X.shape[0]),
        TrainingConfig(**settings),
        seed=seed,
    )
    return module, history


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.state_dict().values()]


def test_same_seed_gives_bit_identical_weights(blobs):
    X, y = blobs
    a, _ = _train(X, y, seed=3)
    b, _ = _train(X, y, seed=3)
    c, _ = _train(X, y, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(b)))
    assert not all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(c)))


def test_seeded_restores_the_global_generator():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        torch.rand(10)
    assert torch.equal(torch.rand(3), expected)


def test_training_learns_and_records_one_entry_per_epoch(blobs):
    X, y = blobs
    module, history = _train(X, y, seed=0, max_epochs=8, learning_rate=1e-2)
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["rows_per_s"] > 0 for h in history)
    accuracy = np.mean(predict_logits(module, X, device="cpu").argmax(1) == y)
    assert accuracy > 0.9


def test_early_stopping_stops_and_restores_the_best_epoch(blobs):
    X, y = blobs
    rng = np.random.default_rng(0)
    train, val = split_validation(np.arange(len(X)), 0.25, rng, y)
    with seeded(0):
        module = MLP(X.shape[1], 4, (16,))
    config = TrainingConfig(
        loss="hard",
        max_epochs=200,
        batch_size=32,
        learning_rate=5e-2,
        early_stopping=True,
        n_iter_no_change=3,
        device="cpu",
    )
    history = train_student(
        module, MinibatchSource(X, y), train, config, seed=0, validation_rows=val
    )
    assert len(history) < 200
    best = min(h["val_loss"] for h in history)
    restored = _evaluate(module, MinibatchSource(X, y), val, config, torch.device("cpu"))[0]
    assert restored == pytest.approx(best, rel=1e-5)


def test_early_stopping_without_validation_rows_is_an_error(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="validation rows"):
        _train(X, y, seed=0, early_stopping=True)


def test_split_validation_is_stratified_and_disjoint(blobs):
    _, y = blobs
    rows = np.arange(len(y))
    train, val = split_validation(rows, 0.2, np.random.default_rng(1), y)
    assert len(np.intersect1d(train, val)) == 0
    assert len(train) + len(val) == len(rows)
    for code in range(4):
        share = np.mean(y[val] == code)
        assert share == pytest.approx(np.mean(y == code), abs=0.03)


def test_batch_loss_dispatches_to_the_paper_losses():
    rng = np.random.default_rng(0)
    z = torch.tensor(rng.normal(size=(5, 3)), dtype=torch.float32)
    v = torch.tensor(rng.normal(size=(5, 2, 3)), dtype=torch.float32)
    y = torch.tensor([0, 1, -1, 2, 0])
    distill = TrainingConfig(loss="distillation", temperature=3.0, alpha=0.2)
    assert torch.equal(
        batch_loss(z, y, v, distill),
        losses.distillation_loss(z, v, y, temperature=3.0, alpha=0.2),
    )
    matching = TrainingConfig(loss="logit_matching", alpha=0.0)
    assert torch.equal(batch_loss(z, y, v, matching), losses.logit_matching_loss(z, v))
    hard = TrainingConfig(loss="hard")
    assert torch.equal(batch_loss(z, y, v, hard), losses.hard_label_loss(z, y))
    assert torch.equal(batch_loss(z, y, None, distill), losses.hard_label_loss(z, y))
    with pytest.raises(ValueError, match="needs labels"):
        batch_loss(z, None, None, distill)


def test_distilled_training_with_unlabeled_rows(blobs):
    X, y = blobs
    teacher = np.eye(4, dtype=np.float32)[y] * 5.0  # confident, correct teacher
    unlabeled = y.copy()
    unlabeled[::2] = -1
    module, history = _train(
        X,
        unlabeled,
        seed=0,
        teacher_logits=teacher,
        loss="distillation",
        temperature=2.0,
        alpha=0.5,
        max_epochs=10,
        learning_rate=1e-2,
    )
    assert np.isfinite(history[-1]["train_loss"])
    assert np.mean(predict_logits(module, X, device="cpu").argmax(1) == y) > 0.9


def test_non_finite_loss_stops_training_with_a_clear_error(blobs):
    X, y = blobs
    teacher = np.full((len(X), 4), np.nan, dtype=np.float32)
    with pytest.raises(FloatingPointError, match="epoch 1"):
        _train(X, y, seed=0, teacher_logits=teacher, loss="distillation")


def test_sgd_and_unknown_optimizer(blobs):
    X, y = blobs
    _, history = _train(X, y, seed=0, optimizer="sgd", learning_rate=5e-2, momentum=0.9)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    with pytest.raises(ValueError, match="optimizer"):
        _train(X, y, seed=0, optimizer="rmsprop")


@pytest.mark.parametrize("kind", ["zarr", "h5py"])
def test_take_rows_reads_storage_arrays_in_the_asked_order(tmp_path, kind):
    data = np.arange(60, dtype=np.float32).reshape(20, 3)
    if kind == "zarr":
        array = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(4, 3), dtype="f4")
        array[:] = data
    else:
        f = h5py.File(tmp_path / "a.h5", "w")
        array = f.create_dataset("a", data=data, chunks=(4, 3))
    rows = np.array([7, 2, 2, 19, 0, 7])
    np.testing.assert_array_equal(take_rows(array, rows), data[rows])


def test_training_from_zarr_equals_training_from_memory(tmp_path, blobs):
    X, y = blobs
    stored = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(64, 6), dtype="f4")
    stored[:] = X
    a, _ = _train(X, y, seed=5)
    b, _ = _train(stored, y, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(b)))


def test_minibatch_source_rejects_misaligned_arrays():
    with pytest.raises(ValueError, match="aligned"):
        MinibatchSource(np.zeros((5, 2)), np.zeros(4, dtype=int))


class _Recorder:
    def __init__(self, fail_at: int | None = None):
        self.fetched: list[int] = []
        self.fail_at = fail_at

    def __len__(self) -> int:
        return 100

    def fetch(self, rows: np.ndarray) -> Batch:
        if self.fail_at is not None and int(rows[0]) == self.fail_at:
            raise OSError(f"unreadable rows starting at {self.fail_at}")
        self.fetched.append(int(rows[0]))
        return Batch(X=rows.astype(np.float32)[:, None], y=None, teacher_logits=None)


def test_prefetched_yields_every_batch_in_order():
    batches = [np.arange(i, i + 10) for i in range(0, 100, 10)]
    got = [int(b.X[0, 0]) for b in prefetched(_Recorder(), iter(batches))]
    assert got == list(range(0, 100, 10))


def test_prefetched_raises_a_read_error_after_the_good_batches():
    batches = [np.arange(i, i + 10) for i in range(0, 100, 10)]
    got = []
    with pytest.raises(OSError, match="starting at 30"):
        for b in prefetched(_Recorder(fail_at=30), iter(batches)):
            got.append(int(b.X[0, 0]))
    assert got == [0, 10, 20]


def test_prefetched_stops_reading_when_the_consumer_stops():
    source = _Recorder()
    batches = [np.arange(i, i + 1) for i in range(100)]
    for b in prefetched(source, iter(batches), depth=2):
        break
    assert len(source.fetched) <= 5


class _Resident(_Recorder):
    """A source whose rows are all in memory: read where it is asked."""

    resident = True

    def __init__(self):
        super().__init__()
        self.threads: set[str] = set()

    def fetch(self, rows: np.ndarray) -> Batch:
        self.threads.add(threading.current_thread().name)
        return super().fetch(rows)


def test_prefetched_reads_a_resident_source_inline_and_others_in_a_thread():
    batches = [np.arange(i, i + 10) for i in range(0, 100, 10)]
    resident = _Resident()
    got = [int(b.X[0, 0]) for b in prefetched(resident, iter(batches))]
    assert got == list(range(0, 100, 10))
    assert resident.threads == {threading.current_thread().name}
    on_disk = _Resident()
    on_disk.resident = False
    assert len(list(prefetched(on_disk, iter(batches)))) == 10
    assert on_disk.threads == {"kdpipe-prefetch"}


def test_a_source_is_resident_when_every_array_is_in_memory(tmp_path):
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    assert MinibatchSource(X, np.zeros(20, dtype=np.int64), X[:, :, None]).resident
    z = zarr.open_array(
        str(tmp_path / "x.zarr"), mode="w", shape=X.shape, chunks=(8, 2), dtype="f4"
    )
    z[:] = X
    source = MinibatchSource(LazyRows(z), None, X)
    assert not source.resident
    source.fetch(np.arange(16))  # chunks 0 and 1 of 3
    assert not source.resident
    source.fetch(np.array([19]))
    assert source.resident  # every chunk in chunk memory: later epochs read inline


def test_check_codes_says_whether_a_row_is_labeled():
    assert check_codes(np.array([2, -1, 0]), 3) is True
    assert check_codes(np.array([-1, -1]), 3) is False
    assert check_codes(None, 3) is False
    with pytest.raises(ValueError, match=r"got \[3\]"):
        check_codes(np.array([3, -1]), 3)


def test_a_minibatch_without_labeled_rows_trains_on_the_soft_term_alone():
    rng = np.random.default_rng(0)
    z = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32)
    v = torch.tensor(rng.normal(size=(6, 2, 3)), dtype=torch.float32)
    y = np.full(6, -1)
    config = TrainingConfig(loss="distillation", temperature=2.0, alpha=0.5)
    loss = batch_loss(z, torch.from_numpy(y), v, config, labels_checked=check_codes(y, 3))
    soft_only = losses.distillation_loss(z, v, None, temperature=2.0, alpha=0.5)
    assert torch.isfinite(loss) and float(loss) == pytest.approx(float(soft_only), rel=1e-6)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_training_on_cuda_matches_cpu_accuracy(blobs):
    X, y = blobs
    module, _ = _train(X, y, seed=0, device="cuda", max_epochs=8, learning_rate=1e-2)
    assert next(module.parameters()).device.type == "cuda"
    accuracy = np.mean(predict_logits(module, X, device="cuda").argmax(1) == y)
    assert accuracy > 0.9
