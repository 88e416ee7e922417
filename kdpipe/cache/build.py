"""``build_cache``: run a teacher or an ensemble once over a transfer set and store its logits."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kdpipe.cache.config import BuildConfig
from kdpipe.cache.executor import Task, run_tasks
from kdpipe.cache.fingerprint import combine_hashes
from kdpipe.cache.manifest import (
    RECORDS_DIR,
    ChunkRecord,
    Manifest,
    chunk_bounds,
    encode_classes,
    read_manifest,
    read_records,
    write_manifest,
)
from kdpipe.cache.reader import LogitCache
from kdpipe.labels import encode_labels
from kdpipe.rows import Source, as_source
from kdpipe.cache.storage import open_store
from kdpipe.cache.tasks import ChunkJob
from kdpipe.cache.teachers import Member, resolve_classes, resolve_members
from kdpipe.cache.hdf5_store import Hdf5ChunkStore
from kdpipe.cache.zarr_store import ZarrChunkStore
from kdpipe.devices import resolve_device
from kdpipe.errors import CacheError, CacheMismatchError, InputError

__all__ = ["build_cache"]

_OWN_NAMES = {"manifest.json", RECORDS_DIR, ZarrChunkStore.dirname, Hdf5ChunkStore.dirname}


def build_cache(
    teachers: Any,
    X: Any,
    path: str | os.PathLike[str],
    *,
    y: Any = None,
    backend: str = "zarr",
    dtype: str = "float32",
    chunk_rows: int = 4096,
    batch_size: int = 512,
    device: Any = "auto",
    client: Any = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    classes: Any = None,
    num_workers: int | None = None,
) -> LogitCache:
    """Run ``teachers`` over ``X`` once and store every member's raw logits at ``path``.

    Parameters
    ----------
    teachers : teacher or list of teachers
        A ``torch.nn.Module``, a TorchScript file, a fitted scikit-learn classifier (or a
        ``.joblib`` file of one), or a callable ``batch -> logits``; a list is an ensemble.
    X : array-like or torch Dataset
        The transfer set: numpy, zarr, h5py or dask array, or a Dataset whose items are
        tensors or ``(x, y)`` tuples. Read one chunk at a time.
    path : path
        Cache directory.
    y : array-like, optional
        Labels (values from ``classes``); ``-1`` marks unlabeled rows. Default: the labels
        of a ``(x, y)`` Dataset, else all rows unlabeled.
    backend : {"zarr", "hdf5"}
    dtype : {"float32", "float16"}
        Storage dtype of the logits.
    chunk_rows : int
        Rows per storage chunk; one task computes and writes one whole chunk.
    batch_size : int
        Rows per teacher forward pass.
    device : "auto", "cpu" or "cuda[:N]"
        ``"auto"`` uses a GPU on workers that have one (under ``torch.autocast``).
    client : dask.distributed.Client or str, optional
        A client or scheduler address; default: Dask's threaded scheduler in-process.
    resume : bool
        Finish an interrupted build at ``path`` (only missing chunks are computed).
    overwrite : bool
        Delete an existing cache at ``path`` first.
    progress : bool
        Show a progress bar (rows/s, ETA).
    classes : array-like, optional
        Class labels in logit order. Default: the members' ``classes_``/``classes``,
        else ``range(C)``.
    num_workers : int, optional
        Threads of the in-process scheduler. Default: 1 when every member is a torch model
        (torch already uses every core), else the number of CPUs.

    Returns
    -------
    LogitCache

    Raises
    ------
    CacheMismatchError
        ``path`` holds a cache of another teacher, other data or other settings.
    TeacherOutputError, ClassMismatchError
        A member returned NaN/inf, the wrong number of classes, or another class set.
        Chunks finished before the error are kept; rerun to resume.
    """
    config = BuildConfig(backend=backend, dtype=dtype, chunk_rows=chunk_rows, batch_size=batch_size)
    if client is None:
        resolve_device(device)  # reject a bad device name before any work
    source = as_source(X)
    members = resolve_members(teachers)
    order = resolve_classes(members, classes)
    root = Path(path)
    manifest = _existing_manifest(root, overwrite)
    if manifest is None:
        manifest = _new_manifest(config, source, members, order, device)
        _initialize(root, manifest)
    else:
        if not resume:
            raise CacheError(f"a cache already exists at {root}; pass resume=True or overwrite=True")
        differences = _differences(manifest, config, source, members, order)
        if differences:
            raise CacheMismatchError(
                f"the cache at {root} was built differently: " + "; ".join(differences)
                + ". Pass overwrite=True to replace it."
            )
    codes = None
    if y is not None:
        y = np.asarray(y)
        if len(y) != source.n_rows:
            raise InputError(f"y has {len(y)} labels but X has {source.n_rows} rows")
        codes = encode_labels(y, manifest.class_array())

    client, own_client = _connect(client)
    # on a cluster the driver ships in-memory rows itself, chunk by chunk
    ship = client is not None and source.in_memory
    job = ChunkJob(str(root), manifest, members, device, config.batch_size, None if ship else source, codes)
    if num_workers is None:
        num_workers = 1 if all(m.kind in ("torch", "torchscript") for m in members) else (os.cpu_count() or 1)
    run = dict(
        client=client, num_workers=num_workers, progress=progress, read_block=_block_reader(source) if ship else None
    )
    try:
        records = _check_complete(root, job, manifest, run)
        missing = [i for i in range(manifest.n_chunks) if i not in records]
        if missing and manifest.complete:
            manifest = Manifest.from_dict({**manifest.to_dict(), "complete": False, "chunks": [], "finished": None})
            write_manifest(root, manifest)
        tasks = [_task("compute", i, i, manifest) for i in missing]
        for record in run_tasks(job, tasks, desc="kdpipe build", **run):
            records[record.index] = record
    finally:
        if own_client:
            client.close()
    if not manifest.complete:
        _finish(root, manifest, [records[i] for i in range(manifest.n_chunks)])
    return LogitCache.open(root)


def _connect(client: Any) -> tuple[Any, bool]:
    if isinstance(client, str):
        from distributed import Client

        return Client(client), True
    return client, False


def _task(method: str, arg: Any, index: int, manifest: Manifest) -> Task:
    start, stop = chunk_bounds(index, manifest.chunk_rows, manifest.n_rows)
    return Task(f"kdpipe-{method}-{index}", method, arg, start, stop)


def _block_reader(source: Source) -> Any:
    def read_block(task: Task) -> np.ndarray:
        return source.read(task.start, task.stop)[0]

    return read_block


def _check_complete(root: Path, job: ChunkJob, manifest: Manifest, run: dict[str, Any]) -> dict[int, ChunkRecord]:
    """Records of complete chunks that still match this build's inputs.

    Chunks whose stored data is missing or corrupt are dropped (and recomputed later);
    changed input rows or labels refuse the build.
    """
    records = {r.index: r for r in manifest.chunks} if manifest.complete else read_records(root)
    indices = sorted(records)
    tasks = [_task("check", records[i], i, manifest) for i in indices]
    verdicts = run_tasks(job, tasks, desc="kdpipe check", **run)
    changed = [(i, v) for i, v in zip(indices, verdicts) if v in ("data", "labels")]
    if changed:
        parts = []
        for i, what in changed[:5]:
            start, stop = chunk_bounds(i, manifest.chunk_rows, manifest.n_rows)
            parts.append(f"{'input rows' if what == 'data' else 'labels'} {start}-{stop - 1} (chunk {i})")
        more = f" and {len(changed) - 5} more chunks" if len(changed) > 5 else ""
        raise CacheMismatchError(
            f"the cache at {root} was built from other data: {', '.join(parts)}{more} differ. "
            "Pass overwrite=True to replace it."
        )
    for i, verdict in zip(indices, verdicts):
        if verdict == "damaged":
            (root / RECORDS_DIR / f"{i:06d}.json").unlink(missing_ok=True)
            del records[i]
    return records


def _existing_manifest(root: Path, overwrite: bool) -> Manifest | None:
    if not root.exists():
        return None
    if not root.is_dir():
        raise InputError(f"{root} exists and is not a directory")
    names = {p.name for p in root.iterdir()}
    if names - _OWN_NAMES:
        raise InputError(f"{root} is not empty and is not a kdpipe cache; refusing to write into it")
    manifest = read_manifest(root) if "manifest.json" in names else None
    if manifest is None or overwrite:
        # no manifest: an initialization that died before finishing; nothing to keep
        for name in names:
            target = root / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        return None
    return manifest


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("kdpipe", "numpy", "torch", "scikit-learn", "zarr", "h5py", "dask", "distributed"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _new_manifest(
    config: BuildConfig, source: Source, members: list[Member], order: np.ndarray | None, device: Any
) -> Manifest:
    if order is None:  # nobody declares classes: range(C), C from a two-row probe on the CPU
        probe = source.read(0, min(2, source.n_rows))[0]
        width = np.shape(members[0].predict(probe, resolve_device("cpu")))
        if len(width) != 2:
            raise InputError(f"member 0 ({members[0].name}) returned logits of shape {width}; expected (rows, classes)")
        order = np.arange(width[1])
    return Manifest(
        backend=config.backend,
        dtype=config.dtype,
        chunk_rows=config.chunk_rows,
        n_rows=source.n_rows,
        classes=encode_classes(order),
        teachers=tuple(m.info() for m in members),
        data_shape=source.shape,
        data_dtype=source.dtype.str,
        versions=_versions(),
        build={"batch_size": config.batch_size, "device": str(device)},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _initialize(root: Path, manifest: Manifest) -> None:
    """Create the empty store, then the manifest (its presence means 'initialized')."""
    root.mkdir(parents=True, exist_ok=True)
    open_store(root, manifest, writable=True).create()
    (root / RECORDS_DIR).mkdir(exist_ok=True)
    write_manifest(root, manifest)


def _differences(
    manifest: Manifest, config: BuildConfig, source: Source, members: list[Member], order: np.ndarray | None
) -> list[str]:
    wanted = {
        "backend": config.backend,
        "dtype": config.dtype,
        "chunk_rows": config.chunk_rows,
        "rows": source.n_rows,
        "data shape": source.shape,
        "data dtype": source.dtype.str,
        "number of teachers": len(members),
    }
    have = {
        "backend": manifest.backend,
        "dtype": manifest.dtype,
        "chunk_rows": manifest.chunk_rows,
        "rows": manifest.n_rows,
        "data shape": manifest.data_shape,
        "data dtype": manifest.data_dtype,
        "number of teachers": manifest.n_members,
    }
    out = [f"{k}: cache has {have[k]!r}, this build has {wanted[k]!r}" for k in wanted if have[k] != wanted[k]]
    for i, (old, new) in enumerate(zip(manifest.teachers, members)):
        if (old.kind, old.fingerprint) != (new.kind, new.fingerprint):
            out.append(
                f"teacher {i}: cache has {old.kind} {old.name} (fingerprint {old.fingerprint[:16]}), "
                f"this build has {new.kind} {new.name} (fingerprint {new.fingerprint[:16]})"
            )
    if order is not None and encode_classes(order) != manifest.classes:
        out.append(f"classes: cache has {manifest.classes['values']}, this build has {encode_classes(order)['values']}")
    return out


def _finish(root: Path, manifest: Manifest, records: list[ChunkRecord]) -> None:
    """Mark the cache finished, once, after every chunk is complete."""
    parts = [manifest.data_dtype, str(manifest.data_shape)]
    parts += [f"{r.data_sha256}:{r.labels_crc32c}" for r in records]
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_manifest(root, manifest.finished_with(records, combine_hashes(parts), when))
