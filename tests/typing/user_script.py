"""A user's script, checked by ``mypy --strict`` (``.ci/run``): kdpipe's public API is
typed well enough that a strict checker reports nothing about the calls below."""

from __future__ import annotations

import tempfile

import numpy as np
import numpy.typing as npt
import torch

import kdpipe
from kdpipe import DistilledClassifier, LogitCache, build_cache
from kdpipe.errors import CacheMismatchError
from kdpipe.losses import distillation_loss, soft_targets


def teacher(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return batch[:, :3] * 2.0


def main() -> float:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.arange(60) % 3
    folder = tempfile.mkdtemp()
    cache: LogitCache = build_cache(
        teacher,
        X,
        f"{folder}/cache.zarr",
        y=y,
        chunk_rows=32,
        progress=False,
        teacher_versions="v1",
    )
    report = cache.verify()
    ok: bool = report.ok
    reopened = LogitCache.open(f"{folder}/cache.zarr")
    shape: tuple[int, int, int] = reopened.shape
    try:
        build_cache(
            teacher,
            X[::-1].copy(),
            f"{folder}/cache.zarr",
            y=y,
            chunk_rows=32,
            progress=False,
            teacher_versions="v1",
        )
    except CacheMismatchError as error:
        print(error)
    student = DistilledClassifier(hidden_layer_sizes=(8,), temperature=2.0, max_epochs=2)
    fitted: DistilledClassifier = student.fit(X, y, teacher_logits=cache)
    module: torch.nn.Module = fitted.module_
    p: torch.Tensor = soft_targets(torch.from_numpy(np.asarray(cache)), 2.0)
    loss: torch.Tensor = distillation_loss(
        torch.zeros(60, 3), torch.from_numpy(np.asarray(cache)), temperature=2.0, alpha=0.1
    )
    print(ok, shape, module, p.shape, float(loss), kdpipe.__version__)
    accuracy: float = fitted.score(X, y)
    return accuracy


if __name__ == "__main__":
    main()
