"""Content hashes of teachers and data blocks.

Fingerprints say *what* produced a cache. They are content hashes (sha256) except for
plain callables, whose code and state cannot be hashed reliably: those are identified by
their qualified name only (a weak fingerprint; give the callable a ``kdpipe_fingerprint``
string attribute to make it strong).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "hash_block",
    "combine_hashes",
    "fingerprint_file",
    "fingerprint_torch_module",
    "fingerprint_sklearn",
    "fingerprint_callable",
]


def hash_block(block: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (C order)."""
    block = np.ascontiguousarray(block)
    h = hashlib.sha256(f"{block.dtype.str}{block.shape}".encode())
    if block.dtype.hasobject:
        h.update(repr(block.tolist()).encode())
    else:
        h.update(memoryview(block).cast("B"))
    return h.hexdigest()


def combine_hashes(parts: Iterable[str]) -> str:
    """One sha256 over an ordered sequence of strings."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def fingerprint_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def fingerprint_torch_module(module: Any) -> str:
    """sha256 of a module's class name and every state_dict tensor (name, dtype, shape, bytes)."""
    import torch

    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def fingerprint_sklearn(estimator: Any) -> str:
    """``joblib.hash`` of a fitted estimator (parameters and learned attributes)."""
    import joblib

    return f"joblib:{joblib.hash(estimator)}"


def fingerprint_callable(func: Any) -> str:
    """Weak fingerprint of a plain callable: its ``kdpipe_fingerprint`` or qualified name."""
    explicit = getattr(func, "kdpipe_fingerprint", None)
    if isinstance(explicit, str):
        return f"user:{explicit}"
    target = func if hasattr(func, "__qualname__") else type(func)
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"
    return "weak:" + hashlib.sha256(name.encode()).hexdigest()
