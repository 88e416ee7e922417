"""Independent references of the views' documented random streams, shared by the view tests.

A view's random words are ``SeedSequence([seed, row, view]).generate_state(k)``, and a
word maps to ``0..k-1`` as ``(word * k) >> 32`` (see :mod:`kdpipe.augment`); a shift pads
by ``pixels`` with zeros and slices at the two drawn offsets.
"""

from __future__ import annotations

import numpy as np


def words_of(seed, row, view, k):
    return np.random.SeedSequence([seed, int(row), int(view)]).generate_state(k)


def below(word, k):
    return (int(word) * k) >> 32


def shift_reference(x, pixels, seed, row, view):
    """One image (..., H, W): zero-pad by ``pixels``, slice at the drawn offsets."""
    w = words_of(seed, row, view, 2)
    dy, dx = below(w[0], 2 * pixels + 1), below(w[1], 2 * pixels + 1)
    H, W = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(pixels, pixels), (pixels, pixels)]
    return np.pad(x, pad)[..., dy : dy + H, dx : dx + W]
