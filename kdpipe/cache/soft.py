"""Soft targets from cached logits, in numpy (float32), for lazy dask evaluation.

Same math as :func:`kdpipe.losses.soft_targets`: ``arithmetic`` is the mean over members
of ``softmax(v_m / T)``; ``geometric`` is ``softmax(mean_m(v_m) / T)``, the normalized
geometric mean of the members' distributions (Hinton et al. 2015, section 2).
"""

from __future__ import annotations

import numpy as np

__all__ = ["softmax", "soft_targets_block"]


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def soft_targets_block(logits: np.ndarray, temperature: float, combine: str) -> np.ndarray:
    """``(rows, members, classes)`` logits -> ``(rows, classes)`` float32 soft targets."""
    v = np.asarray(logits, dtype=np.float32)
    if combine == "geometric":
        return softmax(v.mean(axis=1) / np.float32(temperature)).astype(np.float32, copy=False)
    return softmax(v / np.float32(temperature)).mean(axis=1).astype(np.float32, copy=False)
