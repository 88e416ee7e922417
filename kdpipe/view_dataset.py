"""``ViewDataset``: a logit cache of augmented views as a ``torch.utils.data.Dataset``.

For your own training loop (plain torch, Lightning): item ``i`` is ``(view input,
teacher logits of that view, label)``, the view of row ``i`` chosen for the current
epoch (:meth:`ViewDataset.set_epoch`). Items come from the same row path as
:class:`kdpipe.DistilledClassifier`'s minibatches (:class:`kdpipe.rows.MinibatchSource`):
views are regenerated from the stored rows and their digests checked against the
inputs the teacher scored.

Worker processes: zarr v3 and fsspec hold event loops and file handles that must not
cross a fork. A ``ViewDataset`` opens nothing until a worker reads its first item, and
a worker process (forked or spawned) reopens the cache and ``X`` from their references
(a ``LogitCache`` and a :class:`kdpipe.LazyRows` pickle as their paths), never using a
handle of the parent's. So ``DataLoader(dataset, num_workers=2)`` is safe with the
default fork start method and with ``multiprocessing_context="spawn"``.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch

from kdpipe.errors import InputError
from kdpipe.rows import Batch, MinibatchSource, n_rows

__all__ = ["ViewDataset"]


class ViewDataset(torch.utils.data.Dataset):
    """Items ``(view input, teacher logits of that view, label)`` of a dense logit cache.

    Parameters
    ----------
    X : array-like of shape ``(n, *sample_shape)``
        The rows the cache (or this row subset of it) was built from: numpy, or a
        :class:`kdpipe.LazyRows` view of an on-disk array.
    cache : LogitCache
        A dense cache, with views or without (then every epoch gives the same items).
    y : array-like of int, optional
        Label codes in the cache's class order; default: the cache's own (``-1``
        unlabeled).
    seed : int, default=0
        Seeds the choice of each row's view per epoch
        (:func:`kdpipe.rows.choose_views`).

    Notes
    -----
    Call :meth:`set_epoch` before iterating each epoch. A ``DataLoader`` copies the
    dataset into its workers when an iteration starts, so this reaches them unless
    ``persistent_workers=True`` (then the workers keep the epoch they started with).
    Inputs are float32 as a student receives them; logits are float32 ``(M, C)``;
    labels int64.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> import kdpipe
    >>> from kdpipe.augment import Shift
    >>> from kdpipe.view_dataset import ViewDataset
    >>> X = np.arange(4 * 16, dtype=np.uint8).reshape(4, 1, 4, 4)
    >>> def teacher(batch):
    ...     return batch.reshape(len(batch), -1)[:, :3].astype(np.float32)
    >>> teacher.kdpipe_fingerprint = "doc"
    >>> path = os.path.join(tempfile.mkdtemp(), "c.zarr")
    >>> cache = kdpipe.build_cache(
    ...     teacher, X, path, views=kdpipe.Views(2, Shift(1)), progress=False
    ... )
    >>> data = ViewDataset(X, cache)
    >>> data.set_epoch(1)
    >>> x, logits, label = data[0]
    >>> tuple(x.shape), tuple(logits.shape), int(label)
    ((1, 4, 4), (1, 3), -1)
    """

    def __init__(self, X: Any, cache: Any, y: Any = None, *, seed: int = 0) -> None:
        if getattr(cache, "sparse", None) is not None:
            raise InputError(
                "ViewDataset serves dense caches; a sparse cache's targets do not collate into tensors"
            )
        if n_rows(X) != len(cache):
            raise InputError(
                f"X has {n_rows(X)} rows but the cache has {len(cache)}: they must be aligned"
            )
        self.X = X
        self.cache = cache
        self.y = None if y is None else np.asarray(y, dtype=np.int64)
        self.seed = int(seed)
        self.epoch = 0
        self._source: MinibatchSource | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.cache)

    def set_epoch(self, epoch: int) -> None:
        """Choose every row's view for ``epoch``."""
        self.epoch = int(epoch)
        if self._source is not None:
            self._source.set_epoch(self.epoch)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None, "_pid": -1}

    def _rows_source(self) -> MinibatchSource:
        if self._source is None or self._pid != os.getpid():
            X, cache = self.X, self.cache
            if (
                _opened_elsewhere()
            ):  # a worker process: its own handles, reopened from the references
                X, cache = pickle.loads(pickle.dumps((X, cache)))
            labels = self.y if self.y is not None else cache.labels
            self._source = MinibatchSource(X, labels, cache, view_seed=self.seed)
            self._source.set_epoch(self.epoch)
            self._pid = os.getpid()
        return self._source

    def __getitems__(
        self, indices: list[int]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Items of many rows in one read (a ``DataLoader`` with a batch size calls this)."""
        rows = np.asarray(indices, dtype=np.intp)
        batch: Batch = self._rows_source().fetch(rows)
        assert batch.y is not None and isinstance(batch.teacher_logits, np.ndarray)
        X = torch.from_numpy(np.ascontiguousarray(batch.X))
        logits = torch.from_numpy(np.ascontiguousarray(batch.teacher_logits))
        y = torch.from_numpy(batch.y)
        return [(X[i], logits[i], y[i]) for i in range(len(rows))]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([int(index)])[0]


def _opened_elsewhere() -> bool:
    """True inside a DataLoader worker process."""
    return torch.utils.data.get_worker_info() is not None
