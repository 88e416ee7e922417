"""Choosing the torch device, the CPU thread rule for small models, and the record of the
machine that results files carry.

The thread rule: a model with fewer than :data:`SMALL_MODEL_PARAMETERS` parameters
(a 2x30 or 2x256 MLP; not a 2x800 one) runs on the CPU with one torch thread while
kdpipe trains it (``engine.train_student``: students and the quickstart's teachers) or
runs it as a teacher in ``build_cache``. Its matrix products are too small to gain from a
second thread, and on a busy machine torch's thread pool waits for cores other processes
hold: a 2x30 training step was 9x slower at 2 threads than at 1 on a loaded 2-core
machine, 20x with one more busy process (``benchmarks/results/threads.md``). Larger
models keep torch's setting.

The user's choice wins: nothing changes when ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``
is set, when ``torch.set_num_threads`` was called with another value since kdpipe was
imported, or with ``kdpipe.devices.SMALL_MODEL_PARAMETERS = 0``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from kdpipe.errors import InputError

__all__ = ["describe_machine", "resolve_device", "small_model_threads", "SMALL_MODEL_PARAMETERS"]

#: models with fewer parameters than this run with one CPU thread (see the module's notes)
SMALL_MODEL_PARAMETERS = 1_000_000
_THREADS_AT_IMPORT = torch.get_num_threads()


def _user_chose_threads() -> bool:
    if any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return True
    return torch.get_num_threads() != _THREADS_AT_IMPORT


@contextlib.contextmanager
def small_model_threads(
    modules: torch.nn.Module | list[torch.nn.Module], device: torch.device
) -> Iterator[None]:
    """One torch thread inside this block when every module is small and on the CPU.

    Restores the previous thread count on exit. Does nothing on a GPU, for a module of
    :data:`SMALL_MODEL_PARAMETERS` parameters or more, or when the user chose the number
    of threads (see the module's notes).

    Examples
    --------
    >>> import torch
    >>> from kdpipe.devices import small_model_threads
    >>> with small_model_threads(torch.nn.Linear(4, 2), torch.device("cpu")):
    ...     pass
    """
    items = modules if isinstance(modules, list) else [modules]
    largest = max((sum(p.numel() for p in m.parameters()) for m in items), default=0)
    if device.type != "cpu" or largest >= SMALL_MODEL_PARAMETERS or _user_chose_threads():
        yield
        return
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) into a torch device.

    ``"auto"`` picks CUDA when it is available. Asking for CUDA on a machine without
    it is an error (an :class:`~kdpipe.errors.InputError`, a ``ValueError``) rather than
    a silent fallback.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but CUDA is not available")
    return resolved


def describe_machine() -> dict[str, object]:
    """Where numbers were measured: platform, CPU model, numpy and torch, torch's threads.

    Two runs of one commit on one machine give the same numbers; on another machine the
    same kernels may round floats differently and timings differ, so every results file
    (``kdpipe reproduce``'s, the benchmarks') records this beside its figures.

    Examples
    --------
    >>> sorted(describe_machine())
    ['cpu', 'numpy', 'platform', 'torch', 'torch_threads']
    """
    import platform

    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
        if names:
            cpu = f"{names[0]} ({len(names)} logical CPUs)"
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
