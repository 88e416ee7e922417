"""The CPU thread rule (kdpipe.devices): small models train and run as teachers with one
torch thread; large ones, and any number of threads the user chose, are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdpipe import devices
from kdpipe.cache import build_cache
from kdpipe.engine import TrainingConfig, train_student
from kdpipe.rows import MinibatchSource


class _Recording(torch.nn.Module):
    """A linear model of ``width`` hidden units that records torch's thread count at each forward."""

    def __init__(self, width: int, seen: list[int]) -> None:
        super().__init__()
        self.hidden, self.out, self.seen = (
            torch.nn.Linear(4, width),
            torch.nn.Linear(width, 3),
            seen,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.out(self.hidden(x))


@pytest.fixture
def default_threads(monkeypatch):
    """torch at 2 threads, as if nobody had chosen a number (no OMP_NUM_THREADS, unchanged since import)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(devices, "_THREADS_AT_IMPORT", 2)
    yield
    torch.set_num_threads(before)


def _train(module: torch.nn.Module) -> None:
    X = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    config = TrainingConfig(loss="hard", max_epochs=1, batch_size=16, device="cpu")
    train_student(module, MinibatchSource(X, np.arange(32) % 3), np.arange(32), config, seed=0)


@pytest.mark.parametrize(
    "width, expected", [(30, 1), (400_000, 2)]
)  # 4x30+30x3 vs ~2.8M parameters
def test_training_uses_one_thread_for_a_small_model_only_and_restores_it(
    default_threads, width, expected
):
    seen: list[int] = []
    _train(_Recording(width, seen))
    assert set(seen) == {expected}
    assert torch.get_num_threads() == 2


def test_a_teacher_pass_of_a_small_model_uses_one_thread(default_threads, tmp_path):
    seen: list[int] = []
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    build_cache(
        _Recording(30, seen).eval(), X, tmp_path / "c", chunk_rows=10, progress=False, device="cpu"
    )
    assert seen[-2:] == [1, 1]  # the two chunks (the first call is the two-row probe)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("how", ["env", "set_num_threads"])
def test_the_users_choice_of_threads_wins(default_threads, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
    else:
        monkeypatch.setattr(
            devices, "_THREADS_AT_IMPORT", 1
        )  # torch.set_num_threads(2) after kdpipe's import
    seen: list[int] = []
    _train(_Recording(30, seen))
    assert set(seen) == {2}
