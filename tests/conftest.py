"""Shared test configuration: GPU tests run only where CUDA is present; ``backend``
parametrizes a test over the cache's storage formats."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=["zarr", "hdf5"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_configure(config: pytest.Config) -> None:
    # The test models are tiny: one thread is faster than two fighting over the cores
    # with loky workers, and it keeps CPU timings of the suite steady.
    torch.set_num_threads(1)
