"""``Views``: how many augmented views of each row a cache holds, and how they are made.

``build_cache(..., views=Views(count=V, augment=Shift(2), seed=0))`` scores view ``v`` of
row ``r`` as the teacher sees ``augment(x_r)`` drawn from the stream of
``SeedSequence([seed, r, v])`` (see :mod:`kdpipe.augment`), and stores every member's
logits per view plus an 8-byte digest of each augmented input. ``Views()`` (one view,
no augmentation) is no views at all: the cache is today's, bit for bit.

The settings are recorded in the manifest (``Manifest.views``, format version 4, which
kdpipe before views refuses by its version) and a resume with another count, seed or
augmentation is refused, saying what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdpipe.augment import (
    Augmentation,
    apply_views,
    augmentation_from_dict,
    parse_augment,
)

__all__ = ["Views", "comparable", "parse_views", "views_differences"]


@dataclass(frozen=True)
class Views:
    """Augmented views of every row of a logit cache.

    Parameters
    ----------
    count : int, default=1
        Views per row, ``V``. Each is scored by every member and stored.
    augment : Augmentation, callable or None, default=None
        How a view is made from its row: a :mod:`kdpipe.augment` built-in
        (``Shift(2)``, ``Crop(28, 2)``, ``HFlip()``, ``Compose([...])``), a function
        ``augment(batch, generator)`` (wrapped in :class:`kdpipe.augment.Function`) or a
        :class:`kdpipe.augment.GlobalRandom` adapter of a ``torchvision.transforms.v2``
        transform. ``None`` with ``count=1``: no views (a plain cache).
    seed : int in [0, 2**32), default=0
        Row ``r``, view ``v`` uses the stream ``SeedSequence([seed, r, v])``.

    Examples
    --------
    >>> from kdpipe import Views
    >>> from kdpipe.augment import Shift
    >>> Views(count=8, augment=Shift(2), seed=3).to_dict()
    {'count': 8, 'seed': 3, 'augment': {'kind': 'shift', 'pixels': 2}}
    >>> Views().trivial
    True
    """

    count: int = 1
    augment: Any = None
    seed: int = 0

    def __post_init__(self) -> None:
        count = self.count
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"views count must be a positive integer, got {count!r}")
        seed = self.seed
        if (
            isinstance(seed, bool)
            or not isinstance(seed, (int, np.integer))
            or not 0 <= seed < 2**32
        ):
            raise ValueError(f"views seed must be an integer in [0, 2**32), got {seed!r}")
        augment = parse_augment(self.augment)
        if augment is None and count > 1:
            raise ValueError(
                f"Views(count={count}) without an augmentation would store {count} identical views; "
                "give augment=... (e.g. kdpipe.augment.Shift(2)) or count=1"
            )
        object.__setattr__(self, "count", int(count))
        object.__setattr__(self, "seed", int(seed))
        object.__setattr__(self, "augment", augment)

    @property
    def trivial(self) -> bool:
        """One view without augmentation: the plain cache."""
        return self.count == 1 and self.augment is None

    def to_dict(self) -> dict[str, Any]:
        augment: Augmentation | None = self.augment
        return {
            "count": self.count,
            "seed": self.seed,
            "augment": None if augment is None else augment.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Views:
        """Views from :meth:`to_dict`; a user augmentation comes back as its record only
        (:class:`kdpipe.augment.RecordedAugment`: kdpipe never runs code it reads)."""
        try:
            return cls(
                count=data["count"],
                augment=augmentation_from_dict(data.get("augment")),
                seed=data["seed"],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad views settings {data!r}: {exc}") from None

    def apply(self, x: np.ndarray, rows: Any, views: Any) -> np.ndarray:
        """The views ``views[i]`` of rows ``rows[i]`` (absolute row numbers; content ``x[i]``)."""
        return apply_views(self.augment, x, rows, views, self.seed)


def parse_views(value: Any) -> Views | None:
    """None (no views), a :class:`Views`, an int count (with no augmentation: only 1), or a dict."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = Views.from_dict(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = Views(count=int(value))
    if not isinstance(value, Views):
        # parse_* helpers raise ValueError, as in kdpipe.cache.config
        raise ValueError(  # noqa: TRY004
            f"views must be None or kdpipe.Views(count=..., augment=..., seed=...), got {value!r:.80}"
        )
    return None if value.trivial else value


def comparable(record: Any) -> Any:
    """A recorded augmentation without the names of user callables: like teachers, they are
    compared by fingerprint, so the same function defined elsewhere is the same augmentation."""
    if isinstance(record, dict):
        return {k: comparable(v) for k, v in record.items() if k != "name"}
    if isinstance(record, list):
        return [comparable(v) for v in record]
    return record


def views_differences(have: dict[str, Any] | None, wanted: dict[str, Any] | None) -> list[str]:
    """What differs between two recorded views settings (for a refused resume)."""
    if comparable(have) == comparable(wanted):
        return []
    if have is None or wanted is None:
        return [f"views: cache has {have or 'no views'}, this build has {wanted or 'no views'}"]
    out = []
    for key in ("count", "seed", "augment"):
        if comparable(have.get(key)) != comparable(wanted.get(key)):
            out.append(
                f"views {key}: cache has {have.get(key)!r}, this build has {wanted.get(key)!r}"
            )
    return out
