"""Augmented views: deterministic from ``(seed, row, view)`` alone, applied to a whole batch.

View ``v`` of row ``r`` is ``augment(x_r)`` drawn from the random stream of
``numpy.random.SeedSequence([seed, r, v])``: any process, worker or later session
regenerates it from those three numbers, with no shared state (TinyViT and apple/ml-dr
store a seed or the parameters per view for the same reason). :func:`stream_words`
computes ``SeedSequence([seed, r, v]).generate_state(k)`` for every row of a batch at
once, in numpy, bit for bit what the per-row call returns (about 40 us a row in Python,
too slow for every minibatch).

Built-in augmentations draw every parameter of a batch at once from those words and
apply them with torch operations on the whole batch (a pad and one ``gather``; a
``flip`` and ``where``), never a Python loop over images:

- :class:`Shift` ``(pixels, p)``: translate by up to ``pixels`` in each direction, zeros
  coming in (the 2-pixel jitter of Hinton et al. 2015, section 3), with probability ``p``;
- :class:`Crop` ``(size, padding)``: pad with zeros, then a random ``size x size`` crop;
- :class:`HFlip` ``(p)``: mirror the last axis with probability ``p``;
- :class:`Compose` ``([...])``: one after the other, each with its own words.

They act on the last two axes of a batch ``(b, ..., H, W)`` in the dtype it is stored
in: they only move pixels and pad with zeros, so ``uint8`` stays ``uint8`` and a view is
an exact function of the stored row bytes.

Anything else is wrapped (:func:`parse_augment`):

- :class:`Function` ``(func)``: a function ``func(batch, generator) -> batch``, called
  once per row-view with ``batch`` a torch tensor ``(1, *sample_shape)`` in the stored
  dtype and ``generator`` a ``torch.Generator`` seeded from that view's stream (one call
  per view, so a view does not depend on which rows share its minibatch);
- :class:`GlobalRandom` ``(transform)``: a ``torchvision.transforms.v2``-style transform
  ``transform(x) -> x`` that draws from torch's *global* RNG. It is called once per
  row-view on ``x`` of shape ``sample_shape`` inside ``torch.random.fork_rng``, with the
  global generator seeded from that view's stream (the caller's RNG state is restored
  afterwards). torchvision itself is not a dependency of kdpipe (and is not installed
  where kdpipe's tests run): any object with that calling convention works.

Fingerprints (what a cache records to refuse another augmentation): the parameters of
a built-in; the code and state of a callable, hashed as teacher callables are
(:func:`kdpipe.cache.fingerprint.fingerprint_callable`), or a ``version`` you name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from kdpipe.errors import InputError

__all__ = [
    "Augmentation",
    "Compose",
    "Crop",
    "Function",
    "GlobalRandom",
    "HFlip",
    "Shift",
    "apply_views",
    "augmentation_from_dict",
    "parse_augment",
    "stream_words",
]

# numpy.random.SeedSequence's constants (numpy/random/bit_generator.pyx)
_INIT_A = np.uint32(0x43B0D7E5)
_MULT_A = np.uint32(0x931E8875)
_INIT_B = np.uint32(0x8B51F9DD)
_MULT_B = np.uint32(0x58F38DED)
_MIX_MULT_L = np.uint32(0xCA01F9DD)
_MIX_MULT_R = np.uint32(0x4973F715)
_XSHIFT = np.uint32(16)
_POOL_SIZE = 4


def stream_words(entropy: Sequence[Any], n_words: int) -> np.ndarray:
    """``SeedSequence([e_0, e_1, ...]).generate_state(n_words)`` for many entropies at once.

    Parameters
    ----------
    entropy : sequence of int or int arrays
        Each entry a Python int or an integer array, all broadcast together; every
        value must lie in ``[0, 2**32)`` (one 32-bit word, as SeedSequence reads it).
    n_words : int

    Returns
    -------
    ndarray of uint32, shape ``(*broadcast shape, n_words)``

    Examples
    --------
    >>> import numpy as np
    >>> words = stream_words([7, np.arange(3), 2], 4)
    >>> bool((words[1] == np.random.SeedSequence([7, 1, 2]).generate_state(4)).all())
    True
    """
    columns = np.broadcast_arrays(*[np.asarray(e, dtype=np.int64) for e in entropy])
    for c in columns:
        if c.size and (c.min() < 0 or c.max() >= 2**32):
            raise ValueError(
                f"stream entropy must lie in [0, 2**32), got values {c.min()}..{c.max()}"
            )
    shape = columns[0].shape
    values = [c.astype(np.uint32).ravel() for c in columns]
    n = values[0].size if values else 1
    with np.errstate(over="ignore"):
        hash_const = [_INIT_A]

        def hashmix(value: np.ndarray) -> np.ndarray:
            value = value ^ hash_const[0]
            hash_const[0] = np.uint32(hash_const[0] * _MULT_A)
            value = value * hash_const[0]
            return value ^ (value >> _XSHIFT)

        def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            result: np.ndarray = (_MIX_MULT_L * x - _MIX_MULT_R * y).astype(np.uint32, copy=False)
            return result ^ (result >> _XSHIFT)

        zero = np.zeros(n, dtype=np.uint32)
        pool = [hashmix(values[i] if i < len(values) else zero) for i in range(_POOL_SIZE)]
        for i_src in range(_POOL_SIZE):
            for i_dst in range(_POOL_SIZE):
                if i_src != i_dst:
                    pool[i_dst] = mix(pool[i_dst], hashmix(pool[i_src]))
        for i_src in range(_POOL_SIZE, len(values)):
            for i_dst in range(_POOL_SIZE):
                pool[i_dst] = mix(pool[i_dst], hashmix(values[i_src]))
        out = np.empty((n, int(n_words)), dtype=np.uint32)
        const = _INIT_B
        for i in range(int(n_words)):
            value = pool[i % _POOL_SIZE] ^ const
            const = np.uint32(const * _MULT_B)
            value = value * const
            out[:, i] = value ^ (value >> _XSHIFT)
    return out.reshape(*shape, int(n_words))


def _below(words: np.ndarray, k: int) -> np.ndarray:
    """Integers in ``[0, k)`` from uint32 words: ``floor(word * k / 2**32)`` (int64)."""
    return ((words.astype(np.uint64) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)


def _uniform(words: np.ndarray) -> np.ndarray:
    """Floats in ``[0, 1)`` from uint32 words."""
    return words.astype(np.float64) / 2.0**32


def _parse_probability(value: Any) -> float:
    """``value`` as a float in [0, 1], or a ValueError naming ``p``."""
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {value!r}")
    return p


def _parse_nonnegative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


class Augmentation:
    """What every augmentation offers kdpipe.

    ``n_words`` 32-bit words of the view's stream are given to :meth:`apply` per row;
    :meth:`to_dict` is what the cache records (and compares on resume).
    """

    kind: ClassVar[str] = ""
    n_words: int = 0

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        """The views of ``batch`` (a torch tensor ``(b, *sample_shape)``); ``words`` ``(b, n_words)``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def weak(self) -> bool:
        """True when the fingerprint names the augmentation without hashing what it does."""
        return False


def _image_axes(batch: Any, name: str) -> tuple[int, int]:
    if batch.ndim < 3:
        raise InputError(
            f"{name} moves pixels of images (b, ..., H, W); got a batch of shape {tuple(batch.shape)}. "
            "Give X its sample shape, e.g. (n, 1, 28, 28), or use a callable augmentation"
        )
    return int(batch.shape[-2]), int(batch.shape[-1])


def padded_crops(
    batch: Any, pad: int, top: np.ndarray, left: np.ndarray, height: int, width: int
) -> Any:
    """Crops ``(b, ..., height, width)`` at ``(top, left)`` of ``batch`` zero-padded by ``pad``.

    Every crop position of the padded batch is a strided view (``unfold``, no copy); one
    advanced index then copies each image's own crop: one pass over the output bytes.
    """
    import torch

    b = batch.shape[0]
    lead = batch.shape[1:-2]
    H, W = batch.shape[-2], batch.shape[-1]
    flat = batch.reshape(b, -1, H, W)  # (b, L, H, W)
    padded = (
        torch.nn.functional.pad(flat, (pad, pad, pad, pad)) if pad else flat
    )  # zeros; any dtype
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # (b, L, tops, lefts, height, width)
    at = torch.arange(b, device=batch.device)
    out = windows[at, :, torch.from_numpy(top), torch.from_numpy(left)]  # (b, L, height, width)
    return out.reshape(b, *lead, height, width)


@dataclass(frozen=True)
class Shift(Augmentation):
    """Translate each image by up to ``pixels`` in each direction (zeros come in).

    The vertical and horizontal shifts are drawn independently and uniformly from
    ``{-pixels, ..., pixels}``; the image keeps its size. With ``p < 1`` a view is
    shifted with probability ``p`` and is otherwise the row itself: a teacher trained
    on the rows and jittered copies of them (Hinton et al. 2015, section 3) saw both,
    and a student of its views should too.

    Parameters
    ----------
    pixels : int, default=2
        The largest shift in each direction.
    p : float in [0, 1], default=1.0
        The probability that a view is shifted at all (recorded only when below 1).

    Examples
    --------
    >>> import numpy as np
    >>> from kdpipe.augment import Shift, apply_views
    >>> x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    >>> out = apply_views(Shift(1), x, rows=[0], views=[3], seed=0)
    >>> out.shape, out.dtype
    ((1, 1, 4, 4), dtype('uint8'))
    >>> bool((apply_views(Shift(1, p=0.0), x, rows=[0], views=[3], seed=0) == x).all())
    True
    >>> Shift(2, p=0.5).to_dict()
    {'kind': 'shift', 'pixels': 2, 'p': 0.5}
    """

    pixels: int = 2
    p: float = 1.0
    kind: ClassVar[str] = "shift"
    n_words: int = field(default=2, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixels", _parse_nonnegative_int(self.pixels, "pixels"))
        object.__setattr__(self, "p", _parse_probability(self.p))
        # a third word only for the coin: Shift(k) with p=1 draws what it always drew
        object.__setattr__(self, "n_words", 2 if self.p == 1.0 else 3)

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        H, W = _image_axes(batch, "Shift")
        pad = self.pixels
        if pad == 0:
            return batch
        dy = _below(words[:, 0], 2 * pad + 1)  # top of the crop in the padded image: pad - shift
        dx = _below(words[:, 1], 2 * pad + 1)
        if self.p < 1.0:
            unshifted = _uniform(words[:, 2]) >= self.p
            dy[unshifted] = pad
            dx[unshifted] = pad
        return padded_crops(batch, pad, dy, dx, H, W)

    def to_dict(self) -> dict[str, Any]:
        # p=1 is left out: the record (and so every cache's fingerprint) is what it was
        # before p existed
        if self.p == 1.0:
            return {"kind": self.kind, "pixels": self.pixels}
        return {"kind": self.kind, "pixels": self.pixels, "p": self.p}


@dataclass(frozen=True)
class Crop(Augmentation):
    """Pad each image with ``padding`` zeros, then take a random ``size x size`` crop."""

    size: int
    padding: int = 0
    kind: ClassVar[str] = "crop"
    n_words: int = field(default=2, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "padding", _parse_nonnegative_int(self.padding, "padding"))
        size = _parse_nonnegative_int(self.size, "size")
        if size < 1:
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", size)

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        H, W = _image_axes(batch, "Crop")
        s, p = self.size, self.padding
        if s > H + 2 * p or s > W + 2 * p:
            raise InputError(f"Crop(size={s}, padding={p}) is larger than the padded {H}x{W} image")
        top = _below(words[:, 0], H + 2 * p - s + 1)
        left = _below(words[:, 1], W + 2 * p - s + 1)
        return padded_crops(batch, p, top, left, s, s)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "padding": self.padding}


@dataclass(frozen=True)
class HFlip(Augmentation):
    """Mirror each image left to right with probability ``p``."""

    p: float = 0.5
    kind: ClassVar[str] = "hflip"
    n_words: int = field(default=1, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _parse_probability(self.p))

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        import torch

        _image_axes(batch, "HFlip")
        flip = torch.from_numpy(_uniform(words[:, 0]) < self.p).to(batch.device)
        mask = flip.reshape(-1, *([1] * (batch.ndim - 1)))
        return torch.where(mask, batch.flip(-1), batch)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "p": self.p}


@dataclass(frozen=True)
class Compose(Augmentation):
    """Apply augmentations in order; each reads its own words of the view's stream."""

    steps: tuple[Augmentation, ...]
    kind: ClassVar[str] = "compose"

    def __post_init__(self) -> None:
        steps = tuple(parse_augment(s) for s in self.steps)
        if any(s is None for s in steps):
            raise ValueError("Compose steps must be augmentations, not None")
        object.__setattr__(self, "steps", steps)

    @property
    def n_words(self) -> int:  # type: ignore[override]
        return sum(s.n_words for s in self.steps)

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        at = 0
        for step in self.steps:
            batch = step.apply(batch, words[:, at : at + step.n_words])
            at += step.n_words
        return batch

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": [s.to_dict() for s in self.steps]}

    @property
    def weak(self) -> bool:
        return any(s.weak for s in self.steps)


def _fingerprint_of(func: Any, version: str | None) -> str:
    from kdpipe.cache.fingerprint import fingerprint_callable

    if version is not None:
        return f"user:{version}"
    return fingerprint_callable(func)


def _name_of(func: Any) -> str:
    target = func if hasattr(func, "__qualname__") else type(func)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def _view_seed(words: np.ndarray) -> int:
    """A 63-bit torch seed from two words of a view's stream."""
    return int((int(words[0]) << 31) ^ int(words[1]))


@dataclass(frozen=True, eq=False)
class Function(Augmentation):
    """A user function ``func(batch, generator) -> batch``, replayed per view from its seed.

    Called once per row-view: ``batch`` is a torch tensor ``(1, *sample_shape)`` in the
    stored dtype (``uint8`` images stay ``uint8``; return the same dtype to keep views
    exact), ``generator`` a CPU ``torch.Generator`` seeded from that view's stream.
    Draw every random number from ``generator``; the view is then a function of
    ``(seed, row, view)`` and the row alone. Its fingerprint hashes the function's code
    and state like a teacher callable's, or is the ``version`` you name (required to
    resume when kdpipe cannot hash it).
    """

    func: Any
    version: str | None = None
    kind: ClassVar[str] = "callable"
    n_words: int = field(default=2, init=False, repr=False)

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        import torch

        out = []
        for i in range(batch.shape[0]):
            generator = torch.Generator().manual_seed(_view_seed(words[i]))
            out.append(torch.as_tensor(self.func(batch[i : i + 1], generator)))
        return torch.cat(out)

    @property
    def fingerprint(self) -> str:
        return _fingerprint_of(self.func, self.version)

    @property
    def weak(self) -> bool:
        return self.fingerprint.startswith("weak:")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": _name_of(self.func), "fingerprint": self.fingerprint}


@dataclass(frozen=True, eq=False)
class GlobalRandom(Augmentation):
    """Adapter for a transform that draws from torch's global RNG (``torchvision.transforms.v2``).

    ``transform(x) -> x`` is called once per row-view on ``x`` of shape
    ``sample_shape`` (a torch tensor in the stored dtype) inside
    ``torch.random.fork_rng``, the global generator seeded from the view's stream; the
    caller's RNG state is restored after each call. Fingerprint: the transform's code
    and state when kdpipe can hash them, else its ``repr`` (torchvision transforms
    print their parameters) with its qualified name, else weak; or the ``version`` you
    name.

    Examples
    --------
    >>> import torch
    >>> from kdpipe.augment import GlobalRandom
    >>> noise = GlobalRandom(lambda x: x + torch.randn(x.shape), version="noise-v1")
    >>> noise.to_dict()["fingerprint"]
    'user:noise-v1'
    """

    transform: Any
    version: str | None = None
    kind: ClassVar[str] = "global_random"
    n_words: int = field(default=2, init=False, repr=False)

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        import torch

        out = []
        for i in range(batch.shape[0]):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_view_seed(words[i]))
                out.append(torch.as_tensor(self.transform(batch[i])))
        return torch.stack(out)

    @property
    def fingerprint(self) -> str:
        found = _fingerprint_of(self.transform, self.version)
        if not found.startswith("weak:"):
            return found
        text = repr(self.transform)
        if " at 0x" in text:  # object.__repr__: names nothing about what it does
            return found
        return "repr:" + hashlib.sha256(f"{_name_of(self.transform)}|{text}".encode()).hexdigest()

    @property
    def weak(self) -> bool:
        return self.fingerprint.startswith("weak:")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": _name_of(self.transform),
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class RecordedAugment(Augmentation):
    """A user augmentation as a cache records it: its name and fingerprint, not its code.

    kdpipe never runs code it opens: to replay the views of a cache built with a user
    callable, pass the same callable (``LogitCache.with_augment(func)``), whose
    fingerprint must match.
    """

    record: dict[str, Any]
    kind: ClassVar[str] = "recorded"

    @property
    def n_words(self) -> int:  # type: ignore[override]
        return 2

    def apply(self, batch: Any, words: np.ndarray) -> Any:
        raise InputError(
            f"this cache's views were made by the user augmentation {self.record.get('name')} "
            f"(fingerprint {str(self.record.get('fingerprint'))[:24]}); kdpipe does not run code it "
            "reads from a cache: pass the same augmentation with cache.with_augment(augment)"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


_BUILTINS: dict[str, Any] = {"shift": Shift, "crop": Crop, "hflip": HFlip}


def parse_augment(value: Any) -> Augmentation | None:
    """``None``, an :class:`Augmentation`, or a callable ``func(batch, generator)`` (wrapped in :class:`Function`)."""
    if value is None or isinstance(value, Augmentation):
        return value
    if isinstance(value, (list, tuple)):
        return Compose(tuple(value))
    if callable(value):
        return Function(value)
    raise ValueError(
        f"augment must be None, a kdpipe.augment augmentation (Shift, Crop, HFlip, Compose), "
        f"a callable augment(batch, generator) or GlobalRandom(transform), got {value!r:.80}"
    )


def augmentation_from_dict(data: dict[str, Any] | None) -> Augmentation | None:
    """Inverse of ``to_dict``: built-ins are rebuilt; a user augmentation becomes a :class:`RecordedAugment`."""
    if data is None:
        return None
    data = dict(data)
    kind = data.pop("kind", None)
    if kind == "compose":
        return Compose(tuple(augmentation_from_dict(s) for s in data["steps"]))  # type: ignore[misc]
    if kind in _BUILTINS:
        try:
            return _BUILTINS[kind](**data)
        except TypeError as exc:
            raise ValueError(f"bad {kind} settings {data!r}: {exc}") from None
    if kind in ("callable", "global_random"):
        return RecordedAugment({"kind": kind, **data})
    raise ValueError(f"unknown augmentation kind {kind!r}")


def apply_views(
    augment: Augmentation | None, x: np.ndarray, rows: Any, views: Any, seed: int
) -> np.ndarray:
    """Views ``views[i]`` of rows ``rows[i]`` (their content ``x[i]``), in ``x``'s dtype.

    Parameters
    ----------
    augment : Augmentation or None
        None returns ``x`` unchanged.
    x : ndarray of shape ``(b, *sample_shape)``
        The stored rows, in the stored dtype.
    rows, views : int arrays of shape (b,)
        Absolute row numbers (in the transfer set) and view numbers.
    seed : int
        The views' seed: row ``r``, view ``v`` reads ``SeedSequence([seed, r, v])``.
    """
    if augment is None:
        return x
    import torch

    rows = np.asarray(rows, dtype=np.int64)
    views = np.broadcast_to(np.asarray(views, dtype=np.int64), rows.shape)
    words = stream_words([seed, rows, views], max(augment.n_words, 1))  # (b, words)
    batch = torch.from_numpy(np.require(x, requirements=["C", "W"]))
    out = augment.apply(batch, words)
    result: np.ndarray = out.detach().cpu().numpy()
    return result
