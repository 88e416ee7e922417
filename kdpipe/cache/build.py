"""``build_cache``: run a teacher or an ensemble once over a transfer set and store its logits."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from kdpipe.cache.config import BuildConfig, parse_positive_int
from kdpipe.cache.durable import fsync_dir, is_temp_name, remove_temps, write_step
from kdpipe.cache.executor import Task, run_tasks
from kdpipe.cache.fingerprint import combine_hashes, hash_block, is_weak
from kdpipe.cache.hdf5_store import Hdf5ChunkStore
from kdpipe.cache.location import Location, is_remote, parse_location, remove_tree
from kdpipe.cache.lock import LOCK_NAMES, BuildLock
from kdpipe.cache.lowrank import (
    BASIS_NAME,
    LowRank,
    LowRankBasis,
    fit_basis,
    read_basis,
    write_basis,
)
from kdpipe.cache.manifest import (
    FORMAT_VERSION,
    MANIFEST_COPY,
    MANIFEST_NAME,
    RECORDS_DIR,
    SPARSE_FORMAT_VERSION,
    VIEWS_FORMAT_VERSION,
    ChunkRecord,
    Manifest,
    chunk_bounds,
    encode_classes,
    read_manifest,
    read_records,
    write_manifest,
)
from kdpipe.cache.reader import LogitCache
from kdpipe.cache.sparse import parse_sparse
from kdpipe.cache.storage import checksum, hdf5_url_message, open_store
from kdpipe.cache.tasks import ChunkJob, check_scores
from kdpipe.cache.teachers import Member, parse_precision, resolve_classes, resolve_members
from kdpipe.cache.views import parse_views, views_differences
from kdpipe.cache.zarr_store import ZarrChunkStore
from kdpipe.devices import resolve_device, small_model_threads
from kdpipe.errors import (
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    InputError,
    UnsafeCacheLinkError,
)
from kdpipe.labels import encode_labels
from kdpipe.rows import Source, as_source

__all__ = ["build_cache"]

_OWN_NAMES = {
    MANIFEST_NAME,
    MANIFEST_COPY,
    RECORDS_DIR,
    ZarrChunkStore.dirname,
    Hdf5ChunkStore.dirname,
    BASIS_NAME,
    *LOCK_NAMES,
}


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
    precision: str = "model",
    teacher_versions: Any = None,
    storage_options: dict[str, Any] | None = None,
    sparse: Any = None,
    views: Any = None,
    trust_pickled_teachers: bool = False,
    lock_timeout: float | None = 0.0,
) -> LogitCache:
    """Run ``teachers`` over ``X`` once and store every member's raw logits at ``path``.

    Parameters
    ----------
    teachers : teacher or list of teachers
        A ``torch.nn.Module``, a TorchScript file, a fitted scikit-learn classifier (or a
        ``.joblib`` file of one, with ``trust_pickled_teachers``), or a callable
        ``batch -> logits``; a list is an ensemble.
    X : array-like of shape ``(n, *sample_shape)``, or torch Dataset
        The transfer set: numpy, zarr, h5py or dask array, or a Dataset whose items are
        tensors or ``(x, y)`` tuples. Read one chunk at a time. Rows keep their shape
        (images ``(n, 1, 28, 28)`` reach a torch teacher as ``(b, 1, 28, 28)``) and are
        stored, hashed and fingerprinted in their own dtype; ``uint8`` rows reach torch
        teachers as float32 ``x / 255`` (the uint8 rule, :func:`kdpipe.rows.to_model_dtype`),
        scikit-learn teachers flattened to 2-D (see :mod:`kdpipe.cache.teachers`).
    path : path or URL
        Cache directory, or a URL in object storage (``"s3://bucket/prefix/run.zarr"``,
        zarr backend only; ``s3://`` needs the ``s3fs`` package: ``pip install
        'kdpipe[s3]'``).
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
        ``"auto"`` uses a GPU on workers that have one. The device kind (``cpu``,
        ``cuda``) is recorded; a resume on another kind is refused.
    client : dask.distributed.Client or str, optional
        A client or scheduler address; default: Dask's threaded scheduler in-process.
    resume : bool
        Finish an interrupted build at ``path`` (only missing chunks are computed), or
        reuse a finished one. Refused when anything recorded differs (teachers, data,
        classes, settings, the batch size (a teacher's or a low-rank encode's floats may
        depend on how rows are batched), precision, device kind), and when a teacher's fingerprint is
        weak (a callable kdpipe cannot hash) and no ``teacher_versions`` names it.
        Temp files a crashed build left behind are removed.
    overwrite : bool
        Delete an existing cache (finished, unfinished or crashed) at ``path`` first.
    progress : bool
        Show a progress bar (rows/s, ETA).
    classes : array-like, optional
        Class labels in logit order. Default: the members' ``classes_``/``classes``,
        else ``range(C)``.
    num_workers : int, optional
        Threads of the in-process scheduler. Default: 1 when every member is a torch model
        (torch already uses every core), else the number of CPUs.
    precision : {"model", "float16", "bfloat16"}
        Precision of torch teachers' forward passes: ``"model"`` runs the model in its
        own dtype without autocast; the others run it under ``torch.autocast`` to that
        dtype (on CUDA, or on the CPU where torch supports it). Recorded in the manifest.
    teacher_versions : str or list of (str or None), optional
        A version name per teacher, recorded in its fingerprint. Required to resume from
        a callable teacher whose code kdpipe cannot hash (its fingerprint is weak);
        change it whenever the teacher changes.
    storage_options : dict, optional
        Options of the URL's fsspec file system (``endpoint_url``, ``profile``,
        ``client_kwargs``...). They travel with every task to the workers, and are never
        written into the cache. Leave credentials to the environment or a profile.
    sparse : TopK, TopKSampledTail, Sampled, LowRank or dict, optional
        Store a compact record per row and member instead of every logit (see
        :mod:`kdpipe.cache.sparse`): ``TopK(k)`` keeps the ``k`` largest logits and a
        tail summary (any temperature and either ensemble combination at fit time);
        ``TopKSampledTail(k, draws, temperature)`` adds tail classes drawn at that
        temperature; ``Sampled(draws, temperature)`` keeps classes drawn from the teacher's softmax
        at that temperature (an unbiased gradient there only); ``LowRank(rank)`` keeps
        ``rank`` coefficients in a basis fitted on the first rows and decodes to dense
        logits (:mod:`kdpipe.cache.lowrank`). Recorded in the
        manifest: a dense cache and a sparse one, or two sparse settings, are different
        caches and a resume refuses the other. ``None`` (default): dense logits.
    views : Views, optional
        ``kdpipe.Views(count=V, augment=..., seed=...)``: score ``V`` augmented views of
        every row (view ``v`` of row ``r`` from the stream of ``(seed, r, v)`` alone, see
        :mod:`kdpipe.augment`) and store every member's logits per view (dense, or per
        view in the ``sparse`` format) and an 8-byte digest of each augmented input.
        One task still computes and writes one whole chunk: all views of its rows.
        ``None`` or ``Views()`` (one view, no augmentation): a plain cache, bit for bit.
        Recorded in the manifest; a resume with another count, seed or augmentation is
        refused.
    trust_pickled_teachers : bool, default=False
        Load teacher files that are pickles: ``.joblib``, ``.pkl`` and ``.pickle``
        (scikit-learn classifiers) and ``torch.save()``d whole modules (``.pt``,
        ``.pth``). Unpickling runs code named in the file, so without this such a file
        is refused before anything is read from it. TorchScript files need no opt-in.
    lock_timeout : float or None
        A build owns its path: it holds a lock for its whole run (a lock file beside a
        record of host, pid, start time and kdpipe version; a lease object in object
        storage; rules in :mod:`kdpipe.cache.lock`). Another build of the same path waits
        this many seconds for it and then resumes, reuses or refuses as usual; ``0``
        (default) fails at once, ``None`` waits as long as it takes. A lock whose holder
        died is taken over.

    Returns
    -------
    LogitCache
        The finished cache, opened again after the build: its manifest is the one this
        build wrote (every chunk in it written by this build or read back and checked
        against its record and these inputs), and every manifest field agrees with the
        stores.

    Raises
    ------
    CacheMismatchError
        ``path`` holds a cache of another teacher, other data or other settings, or of
        a teacher with a weak fingerprint and no version.
    CacheLockedError
        Another build holds ``path`` past ``lock_timeout``; the message names it.
    CacheCorruptError
        The manifest cannot be decoded and has no intact initial copy, or a field
        disagrees with the stores; :class:`~kdpipe.errors.UnsafeCacheLinkError` for a
        symbolic link inside the cache folder (named; nothing is written through it).
    TeacherOutputError, ClassMismatchError
        A member returned NaN/inf, the wrong number of classes, or another class set.
        Chunks finished before the error are kept; rerun to resume.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from kdpipe import build_cache
    >>> X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    >>> W = np.eye(4, 3, dtype=np.float32)
    >>> def teacher(batch):
    ...     return batch @ W
    >>> teacher.kdpipe_fingerprint = "eye-4x3"  # names a callable's version
    >>> path = tempfile.mkdtemp() + "/cache.zarr"
    >>> cache = build_cache(teacher, X, path, y=np.arange(10) % 3, chunk_rows=4, progress=False)
    >>> cache.shape, cache.info()["n_chunks"], cache.verify().ok
    ((10, 1, 3), 3, True)
    >>> np.allclose(np.asarray(cache)[:, 0], X @ W)
    True
    >>> build_cache(teacher, X, path, y=np.arange(10) % 3, chunk_rows=4, progress=False).shape
    (10, 1, 3)

    The second call found the finished cache and computed nothing.
    """
    config = BuildConfig(backend=backend, dtype=dtype, chunk_rows=chunk_rows, batch_size=batch_size)
    root = parse_location(
        path, storage_options
    )  # before any work: a URL may need a missing package
    if is_remote(root) and config.backend != "zarr":
        raise InputError(hdf5_url_message(root))
    if client is None:
        resolve_device(device)  # reject a bad device name before any work
    precision = parse_precision(precision)
    spec = parse_sparse(sparse)
    try:
        view_spec = parse_views(views)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    source = as_source(X)
    members = resolve_members(teachers, teacher_versions, trust_pickled_teachers)
    order = resolve_classes(members, classes)
    settings = {"precision": precision, "device_kind": _device_kind(device, client)}
    if num_workers is not None:
        num_workers = parse_positive_int(num_workers, "num_workers")
    _refuse_foreign(root)  # before the lock file is created in someone else's folder
    client, own_client = _connect(client)  # an unreachable scheduler fails before any work
    try:
        fresh: tuple[Manifest, LowRankBasis | None] | None = None
        if (
            overwrite or not (root / MANIFEST_NAME).exists()
        ):  # refuse what a new cache cannot hold before any write
            fresh = _fresh_manifest(
                config, source, members, order, device, client, settings, spec, view_spec, precision
            )
        if y is not None and fresh is not None:  # labels it cannot hold, before any write
            _label_codes(y, source, fresh[0])
        with BuildLock(root, timeout=lock_timeout) as lock:
            return _build_locked(
                root,
                lock,
                config,
                source,
                members,
                order,
                settings,
                spec,
                view_spec,
                y,
                device,
                client,
                overwrite,
                resume,
                num_workers,
                progress,
                precision,
                fresh,
            )
    finally:
        if own_client:
            client.close()


def _label_codes(y: Any, source: Source, manifest: Manifest) -> np.ndarray:
    """``y`` encoded in the cache's class order; raises for labels the cache cannot hold."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"labels must be one-dimensional, got shape {y.shape}")
    if len(y) != source.n_rows:
        raise InputError(f"y has {len(y)} labels but X has {source.n_rows} rows")
    return encode_labels(y, manifest.class_array())


def _fresh_manifest(
    config: BuildConfig,
    source: Source,
    members: list[Member],
    order: np.ndarray | None,
    device: Any,
    client: Any,
    settings: dict[str, str],
    spec: Any,
    view_spec: Any,
    precision: str,
) -> tuple[Manifest, LowRankBasis | None]:
    """The manifest of a new cache for this request, and the basis of a low-rank one;
    raises for settings such a cache cannot hold.

    Every member first runs on two rows: a teacher that cannot take these rows fails here,
    before anything is written. A low-rank cache's basis is fitted here too, on the
    members' logits of the first ``fit_rows`` rows, so that every chunk task, on any
    worker and after any resume, encodes in the one basis the manifest records.
    """
    manifest = _new_manifest(
        config, source, members, order, device, settings, _probe(members, source)
    )
    basis = None
    if spec is not None:
        manifest = replace(manifest, sparse=spec.to_dict(), format_version=SPARSE_FORMAT_VERSION)
        manifest.sparse_layout()
        if isinstance(spec, LowRank):
            where = "cpu" if client is not None else device  # the cluster's devices are not here
            basis, fitted = _fit_lowrank(
                spec, source, members, where, config, precision, manifest.n_classes
            )
            crc = checksum(np.frombuffer(basis.to_bytes(), dtype=np.uint8))
            sparse = {**spec.to_dict(), "basis_crc32c": crc, "fit_sha256": fitted}
            manifest = replace(manifest, sparse=sparse)
    if view_spec is not None:
        manifest = replace(manifest, views=view_spec.to_dict(), format_version=VIEWS_FORMAT_VERSION)
    return manifest, basis


def _fit_lowrank(
    spec: LowRank,
    source: Source,
    members: list[Member],
    device: Any,
    config: BuildConfig,
    precision: str,
    n_classes: int,
) -> tuple[LowRankBasis, str]:
    """The basis of a low-rank cache, fitted on every member's logits of the first
    ``spec.fit_rows`` rows, and the sha256 of those rows (a resume must see the same).

    The fit rows are encoded once too: coefficients beyond the cache's dtype fail here,
    before anything is written.
    """
    n = min(spec.fit_rows, source.n_rows)
    where = resolve_device(device)
    logits = np.empty((n, len(members), n_classes), dtype=np.float32)
    for b0 in range(0, n, config.batch_size):
        b1 = min(b0 + config.batch_size, n)
        x = source.read(b0, b1)[0]
        for j, member in enumerate(members):
            scores = np.asarray(member.predict(x, where, precision))
            check_scores(scores, j, member, b0, b1, n_classes, config.dtype)
            logits[b0:b1, j] = scores.astype(config.dtype)
    basis = fit_basis(logits, spec.rank, config.dtype)
    for b0 in range(0, n, config.batch_size):
        basis.encode(logits[b0 : b0 + config.batch_size], first_row=b0)
    return basis, _fit_rows_digest(source, n)


def _fit_rows_digest(source: Source, n: int) -> str:
    """sha256 of the first ``n`` rows, read in fixed blocks (whatever the batch size)."""
    digest = hashlib.sha256()
    for b0 in range(0, n, 256):
        digest.update(bytes.fromhex(hash_block(source.read(b0, min(b0 + 256, n))[0])))
    return digest.hexdigest()


def _build_locked(
    root: Location,
    lock: BuildLock,
    config: BuildConfig,
    source: Source,
    members: list[Member],
    order: np.ndarray | None,
    settings: dict[str, str],
    spec: Any,
    view_spec: Any,
    y: Any,
    device: Any,
    client: Any,
    overwrite: bool,
    resume: bool,
    num_workers: int | None,
    progress: bool,
    precision: str,
    fresh: tuple[Manifest, LowRankBasis | None] | None,
) -> LogitCache:
    """The build, with this process holding the path's lock: every destructive step happens here."""
    manifest = _existing_manifest(root, overwrite)
    if manifest is None:
        manifest, basis = fresh or _fresh_manifest(
            config, source, members, order, device, client, settings, spec, view_spec, precision
        )
        lock.check()
        _initialize(root, manifest, basis)
    else:
        if not resume:
            raise CacheError(
                f"a cache already exists at {root}; pass resume=True or overwrite=True"
            )
        differences = _differences(manifest, config, source, members, order, settings)
        if parse_sparse(manifest.sparse) != spec:  # the settings, however a manifest spelled them
            differences.append(
                f"sparse format: cache has {manifest.sparse or 'dense'}, this build has "
                f"{'dense' if spec is None else spec.to_dict()}"
            )
        differences += views_differences(
            manifest.views, None if view_spec is None else view_spec.to_dict()
        )
        if isinstance(spec, LowRank) and not differences:
            n = min(spec.fit_rows, source.n_rows)
            if _fit_rows_digest(source, n) != manifest.sparse["fit_sha256"]:  # type: ignore[index]
                differences.append(
                    f"low-rank basis: it was fitted on other rows 0-{n - 1} than this build's X has"
                )
        if differences:
            raise CacheMismatchError(
                f"the cache at {root} was built differently: "
                + "; ".join(differences)
                + ". Pass overwrite=True to replace it."
            )
        _refuse_weak(root, manifest)
        if view_spec is not None and view_spec.augment.weak:
            raise CacheMismatchError(
                f"cannot resume the cache at {root}: its augmentation {view_spec.augment.to_dict().get('name')} "
                "is a callable whose code and state kdpipe cannot hash, so an edited augmentation would "
                "silently mix old and new views. Name its version (kdpipe.augment.Function(func, "
                "version='v1') or GlobalRandom(transform, version='v1')), or pass overwrite=True."
            )
        for folder in (root, root / RECORDS_DIR, root / Hdf5ChunkStore.dirname):
            remove_temps(folder)
        if isinstance(spec, LowRank):
            read_basis(
                root, manifest
            )  # every chunk is coefficients in it: refuse a damaged one now
    codes = None
    if y is not None:
        codes = _label_codes(y, source, manifest)

    # on a cluster the driver ships in-memory rows itself, chunk by chunk
    ship = client is not None and source.in_memory
    job = ChunkJob(
        root if is_remote(root) else str(root),
        manifest,
        members,
        device,
        config.batch_size,
        None if ship else source,
        codes,
        precision,
        view_spec,
    )
    if num_workers is None:
        num_workers = (
            1 if all(m.kind in ("torch", "torchscript") for m in members) else (os.cpu_count() or 1)
        )
    run = dict(
        client=client,
        num_workers=num_workers,
        progress=progress,
        read_block=_block_reader(source) if ship else None,
    )
    models = [m.teacher() for m in members if m.kind in ("torch", "torchscript")]
    inline = client is None and models and len(models) == len(members) and num_workers == 1

    def threads() -> (
        Any
    ):  # one CPU thread for small torch teachers run here (kdpipe.devices: the thread rule)
        return (
            small_model_threads(models, resolve_device(device))
            if inline
            else contextlib.nullcontext()
        )

    with threads():
        records = _check_complete(root, job, manifest, run)
    missing = [i for i in range(manifest.n_chunks) if i not in records]
    if missing and manifest.complete:
        manifest = Manifest.from_dict(
            {**manifest.to_dict(), "complete": False, "chunks": [], "finished": None}
        )
        write_manifest(root, manifest)
    tasks = [_task("compute", i, i, manifest) for i in missing]
    with threads():
        for record in run_tasks(job, tasks, desc="kdpipe build", **run):
            records[record.index] = record
    lock.check()
    if not manifest.complete:
        manifest = _finish(root, manifest, [records[i] for i in range(manifest.n_chunks)])
    cache = _reopen_checked(root, manifest, lock)
    # the build's own augmentation: a user callable replays without with_augment
    return cache if view_spec is None else cache._bound(view_spec.augment)


def _reopen_checked(root: Location, manifest: Manifest, lock: BuildLock) -> LogitCache:
    """The finished cache, opened again and compared with what this build wrote or checked.

    Every chunk in ``manifest`` was either written by this build (its record made from the
    bytes it wrote) or read back in full and checked against its record and this build's
    inputs (``_check_complete``); so the manifest on disk being the very one this build
    wrote, with every field consistent with the stores (:meth:`LogitCache.open` checks
    that), is what "it verifies" needs while nobody else writes. A full ``verify()``
    would read every chunk a second time.
    """
    lock.check()
    where: Any = root  # a RemotePath keeps its storage options
    cache = LogitCache.open(where)
    if cache.manifest != manifest:
        raise CacheCorruptError(
            f"the manifest of {root} changed while this build held its lock (another writer that "
            "ignores the lock?); rerun the build"
        )
    return cache


def _device_kind(device: Any, client: Any) -> str:
    """``"cpu"`` or ``"cuda"``; ``"auto"`` on a cluster, whose workers choose."""
    if client is None:
        return resolve_device(device).type
    return "auto" if str(device) == "auto" else str(device).split(":")[0]


def _refuse_weak(root: Location, manifest: Manifest) -> None:
    """Refuse to reuse logits of a teacher known only by its name: it may have changed since."""
    weak = [(i, t.name) for i, t in enumerate(manifest.teachers) if is_weak(t.fingerprint)]
    if weak:
        names = ", ".join(f"teacher {i} ({name})" for i, name in weak)
        raise CacheMismatchError(
            f"cannot resume the cache at {root}: {names} is a callable whose code and state kdpipe "
            "cannot hash (it uses values of types it does not know), so an edited teacher would "
            "silently reuse old logits. Name the teacher's version with build_cache(..., "
            "teacher_versions=['v1', ...]) (or set a kdpipe_fingerprint string attribute on it) "
            "and change it whenever the teacher changes, or pass overwrite=True."
        )


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


def _check_complete(
    root: Location, job: ChunkJob, manifest: Manifest, run: dict[str, Any]
) -> dict[int, ChunkRecord]:
    """Records of complete chunks that still match this build's inputs.

    Chunks whose stored data is missing or corrupt, or whose record cannot be decoded,
    are dropped (and recomputed later); changed input rows or labels refuse the build.
    """
    damaged: list[Any] = []
    records = (
        {r.index: r for r in manifest.chunks}
        if manifest.complete
        else read_records(root, manifest, damaged)
    )
    for path in damaged:  # an unreadable record claims nothing: its chunk is recomputed
        write_step("unlink", path)
        path.unlink(missing_ok=True)
    indices = sorted(records)
    tasks = [_task("check", records[i], i, manifest) for i in indices]
    verdicts = run_tasks(job, tasks, desc="kdpipe check", **run)
    changed = [(i, v) for i, v in zip(indices, verdicts) if v in ("data", "labels", "no labels")]
    if changed and all(v == "no labels" for _, v in changed):
        raise CacheMismatchError(
            f"the cache at {root} holds labels and this build has none given: pass the labels it "
            "was built with, or overwrite=True to replace it"
        )
    changed = [(i, "labels" if v == "no labels" else v) for i, v in changed]
    if changed:
        parts = []
        for i, what in changed[:5]:
            start, stop = chunk_bounds(i, manifest.chunk_rows, manifest.n_rows)
            parts.append(
                f"{'input rows' if what == 'data' else 'labels'} {start}-{stop - 1} (chunk {i})"
            )
        more = f" and {len(changed) - 5} more chunks" if len(changed) > 5 else ""
        raise CacheMismatchError(
            f"the cache at {root} was built from other data: {', '.join(parts)}{more} differ. "
            "Pass overwrite=True to replace it."
        )
    for i, verdict in zip(indices, verdicts):
        if verdict == "damaged":
            stale = root / RECORDS_DIR / f"{i:06d}.json"
            write_step("unlink", stale)
            stale.unlink(missing_ok=True)
            del records[i]
    return records


def _refuse_foreign(root: Location) -> None:
    """Refuse a path that is a file, or a folder holding anything but kdpipe's own names and temp files."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError(f"{root} exists and is not a directory")
    names = {p.name for p in root.iterdir()}
    foreign = {n for n in names - _OWN_NAMES if not is_temp_name(n)}
    if foreign:
        raise InputError(
            f"{root} is not empty and is not a kdpipe cache (it holds {sorted(foreign)[:3]}); "
            "refusing to write into it"
        )


def _refuse_links(root: Location) -> None:
    """Refuse a symbolic link anywhere inside a local cache folder, naming it.

    A write or a delete would go through it, into a folder that is not the cache's.
    (The cache path itself may be a link: that is where the user put the cache.)
    """
    if not isinstance(root, Path):
        return
    for name in sorted(_OWN_NAMES):
        top = root / name
        links = [top] if top.is_symlink() else []
        if not links and top.is_dir():
            for folder, dirs, files in os.walk(top):
                links += [
                    Path(folder, n)
                    for n in (*dirs, *files)
                    if os.path.islink(os.path.join(folder, n))
                ]
        if links:
            raise UnsafeCacheLinkError(
                f"{links[0]} inside the cache at {root} is a symbolic link; kdpipe does not write or delete "
                "through links inside a cache. Replace it with the folder or file it points to, or remove it"
            )


def _existing_manifest(root: Location, overwrite: bool) -> Manifest | None:
    """The manifest of the cache at ``root``, or None after clearing the way for a new one.

    Called with the path's lock held. A folder holding only kdpipe's own names and temp
    files is (the rest of) a cache; anything else is someone else's folder and is refused.
    A folder without a manifest is an initialization that died before finishing (the
    manifest is written last): everything but the lock is deleted.

    An undecodable ``manifest.json`` (it is written atomically, so no crash of kdpipe
    leaves one; a disk or a copy tool does) is replaced by ``manifest.initial.json``, the
    copy written once when the cache was created (the same settings, teachers and data
    shape, not yet finished): the build then compares it with its request like any
    manifest, keeps every chunk whose record decodes and whose data matches its record
    and this build's input rows and labels, recomputes the rest and writes the finished
    manifest again. Without an intact copy it is refused (``overwrite=True`` rebuilds).
    """
    _refuse_foreign(root)
    if not root.exists():
        return None
    _refuse_links(root)
    names = {p.name for p in root.iterdir()} - LOCK_NAMES
    manifest = None if overwrite or MANIFEST_NAME not in names else _read_or_recover(root)
    if manifest is None:
        # The manifest goes first: if this is interrupted, what is left is no cache.
        for name in sorted(names, key=lambda n: n != MANIFEST_NAME):
            target = root / name
            write_step("unlink", target)
            remove_tree(target)
        fsync_dir(root)
        return None
    if manifest.format_version not in (FORMAT_VERSION, SPARSE_FORMAT_VERSION, VIEWS_FORMAT_VERSION):
        raise CacheMismatchError(
            f"the cache at {root} has format version {manifest.format_version}; this kdpipe writes "
            f"version {FORMAT_VERSION} (it adds row digests) and cannot finish or extend it. "
            "Pass overwrite=True to rebuild it."
        )
    return manifest


def _read_or_recover(root: Location) -> Manifest | None:
    """``manifest.json``, or its initial copy when it cannot be decoded (see :func:`_existing_manifest`)."""
    try:
        return read_manifest(root)
    except CacheCorruptError as damaged:
        try:
            copy = read_manifest(root, name=MANIFEST_COPY)
        except CacheCorruptError:
            copy = None
        if copy is None or copy.complete:
            raise CacheCorruptError(
                f"{damaged}; there is no intact {MANIFEST_COPY} to recover it from. Pass overwrite=True "
                "to rebuild the cache"
            ) from damaged
        return copy


@functools.cache  # installed versions do not change while a process runs; looking them up is slow
def _versions() -> dict[str, str]:
    out = {}
    for dist in ("kdpipe", "numpy", "torch", "scikit-learn", "zarr", "h5py", "dask", "distributed"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _probe(members: list[Member], source: Source) -> np.ndarray:
    """Every member's logits of the first two rows, on the CPU; member 0's are returned.

    A teacher that cannot run on these rows (another input width, integer rows into a
    float model) is one :class:`InputError` naming the member and the rows' shape and dtype.
    """
    x = source.read(0, min(2, source.n_rows))[0]
    outputs = []
    for j, member in enumerate(members):
        try:
            outputs.append(member.predict(x, resolve_device("cpu")))
        except (RuntimeError, TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            width = int(np.prod(x.shape[1:], dtype=np.int64))
            hint = ""
            if x.dtype.kind in "iub" and member.kind in ("torch", "torchscript"):
                hint = f"; X holds {x.dtype} values: convert it to the model's dtype, e.g. X.astype(np.float32)"
            # TorchScript's message is its interpreter's traceback; the reason is its last line
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [
                type(exc).__name__
            ]
            reason = lines[-1].removeprefix("RuntimeError: ")
            raise InputError(
                f"member {j} ({member.name}) cannot compute logits of X's rows (each of shape "
                f"{tuple(x.shape[1:])}, {width} values, dtype {x.dtype}): {reason}{hint}"
            ) from exc
    return np.asarray(outputs[0])


def _new_manifest(
    config: BuildConfig,
    source: Source,
    members: list[Member],
    order: np.ndarray | None,
    device: Any,
    settings: dict[str, str],
    probe: np.ndarray,
) -> Manifest:
    if order is None:  # nobody declares classes: range(C), C from the two-row probe
        width = np.shape(probe)
        if len(width) != 2:
            raise InputError(
                f"member 0 ({members[0].name}) returned logits of shape {width}; expected (rows, classes)"
            )
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
        versions=dict(_versions()),
        build={"batch_size": config.batch_size, "device": str(device), **settings},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _initialize(root: Location, manifest: Manifest, basis: LowRankBasis | None = None) -> None:
    """Create the empty store (and a low-rank cache's basis), then the manifest (its
    presence means 'initialized')."""
    write_step("mkdir", root)
    root.mkdir(parents=True, exist_ok=True)
    fsync_dir(root.parent)
    open_store(root, manifest, writable=True).create()
    if basis is not None:
        assert manifest.sparse is not None
        if write_basis(root, basis) != manifest.sparse["basis_crc32c"]:
            raise CacheError(f"the low-rank basis written to {root} differs from the one fitted")
    write_step("mkdir", root / RECORDS_DIR)
    (root / RECORDS_DIR).mkdir(exist_ok=True)
    # a copy that is never rewritten: a damaged manifest.json is recovered from it
    write_manifest(root, manifest, name=MANIFEST_COPY)
    write_manifest(root, manifest)  # fsyncs root: the new folders' entries too


def _differences(
    manifest: Manifest,
    config: BuildConfig,
    source: Source,
    members: list[Member],
    order: np.ndarray | None,
    settings: dict[str, str],
) -> list[str]:
    wanted = {
        "backend": config.backend,
        "dtype": config.dtype,
        "chunk_rows": config.chunk_rows,
        "batch_size": config.batch_size,
        "rows": source.n_rows,
        "data shape": source.shape,
        "data dtype": source.dtype.str,
        "number of teachers": len(members),
        "teacher precision": settings["precision"],
        "device kind": settings["device_kind"],
    }
    have = {
        "backend": manifest.backend,
        "dtype": manifest.dtype,
        "chunk_rows": manifest.chunk_rows,
        "batch_size": manifest.build.get("batch_size"),
        "rows": manifest.n_rows,
        "data shape": manifest.data_shape,
        "data dtype": manifest.data_dtype,
        "number of teachers": manifest.n_members,
        "teacher precision": manifest.build.get("precision"),
        "device kind": manifest.build.get("device_kind"),
    }
    if not any(m.kind in ("torch", "torchscript") for m in members):
        del wanted["device kind"]  # other teachers compute on the CPU wherever the build runs
    if have["batch_size"] is None:  # a cache from before batch sizes were recorded
        del wanted["batch_size"]
    out = [
        f"{k}: cache has {have[k]!r}, this build has {wanted[k]!r}"
        for k in wanted
        if have[k] != wanted[k]
    ]
    for i, (old, new) in enumerate(zip(manifest.teachers, members)):
        if (old.kind, old.fingerprint) != (new.kind, new.fingerprint):
            out.append(
                f"teacher {i}: cache has {old.kind} {old.name} (fingerprint {old.fingerprint[:16]}), "
                f"this build has {new.kind} {new.name} (fingerprint {new.fingerprint[:16]})"
            )
    if order is not None and encode_classes(order) != manifest.classes:
        out.append(
            f"classes: cache has {manifest.classes['values']}, this build has {encode_classes(order)['values']}"
        )
    return out


def _finish(root: Location, manifest: Manifest, records: list[ChunkRecord]) -> Manifest:
    """Mark the cache finished, once, after every chunk is complete; return the manifest written."""
    parts = [manifest.data_dtype, str(manifest.data_shape)]
    parts += [f"{r.data_sha256}:{r.labels_crc32c}" for r in records]
    when = datetime.now(UTC).isoformat(timespec="seconds")
    finished = manifest.finished_with(records, combine_hashes(parts), when)
    write_manifest(root, finished)
    return finished
