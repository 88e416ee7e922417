"""One builder per cache path: a lock held for the whole of ``build_cache``.

A local cache is locked with ``PATH/build.lock``, an OS file lock (``flock`` through the
``filelock`` package, as pip, tox and virtualenv lock their folders), beside a record
``PATH/build.lock.json`` naming the holder: host, pid, start time, kdpipe version. The
record is information only; the lock is the ``flock``.

Rules (local):

- A second builder waits up to ``timeout`` seconds (``0``: not at all; ``None``: as long
  as it takes) and then raises :class:`~kdpipe.errors.CacheLockedError`, naming the
  holder and since when, from the record.
- A holder that dies (killed, crashed, power cut) holds nothing: the kernel drops the
  ``flock`` of a dead process at once, so the next builder takes the lock and overwrites
  the dead holder's record. No pid is guessed at, so a reused pid cannot keep a lock.
- On a file system without ``flock`` (some NFS set-ups), ``filelock`` falls back to a
  marker file holding pid and host, which it breaks only when that pid is gone on the
  same host (and warns).
- ``build.lock`` is never deleted (deleting a lock file others may hold open would let
  two builders lock two different files); a finished cache keeps an empty one.

In object storage there is no ``flock``: the lock is a *lease* object
``PATH/build.lock.json``, created with a conditional PUT (``If-None-Match: *``: exactly one
of two racing creators succeeds). The holder rewrites it every ``LEASE_SECONDS / 4``
(a conditional PUT on its own ETag, ``If-Match``); a lease not rewritten for
``LEASE_SECONDS`` (by the object's ``LastModified``, the store's clock, against this
machine's clock, so the lease time must exceed the refresh interval, the store's
whole-second ``LastModified`` and the clocks' skew) belongs to a dead holder and is taken over,
again with ``If-Match`` on the stale lease's ETag, so of two builders taking over the
same stale lease one wins. A holder whose refresh fails (its lease was taken) stops
before it writes the manifest: :meth:`BuildLock.check` raises.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Self

from kdpipe.cache.durable import atomic_write_bytes, fsync_dir, write_step
from kdpipe.cache.location import Location, is_remote
from kdpipe.errors import CacheLockedError, UnsafeCacheLinkError

__all__ = ["LEASE_SECONDS", "LOCK_NAME", "LOCK_NAMES", "RECORD_NAME", "BuildLock"]

LOCK_NAME = "build.lock"
RECORD_NAME = "build.lock.json"
LOCK_NAMES = frozenset({LOCK_NAME, RECORD_NAME})
LEASE_SECONDS = 60.0  # an object-storage lease not refreshed for this long is stale
_POLL_SECONDS = 0.05


def _version() -> str:
    try:
        return metadata.version("kdpipe")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "another build (its holder record is not written yet)"
    return (
        f"process {record.get('pid')} on host {record.get('host')} since {record.get('started')} "
        f"(kdpipe {record.get('kdpipe')})"
    )


class BuildLock:
    """Hold the build lock of the cache at ``root`` (a context manager).

    Parameters
    ----------
    root : Path or RemotePath
        The cache folder (created when missing) or URL prefix.
    timeout : float or None
        Seconds to wait for another builder to finish; ``0`` fails at once, ``None``
        waits as long as it takes.

    Raises
    ------
    CacheLockedError
        Another live builder holds the path past ``timeout``.
    UnsafeCacheLinkError
        ``build.lock`` or its record is a symbolic link.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "cache"
    >>> with BuildLock(root, timeout=0) as lock:
    ...     lock.check()
    >>> sorted(p.name for p in root.iterdir())
    ['build.lock']
    """

    def __init__(self, root: Location, *, timeout: float | None = 0.0) -> None:
        self.root = root
        self.timeout = timeout
        self.record: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now(),
            "kdpipe": _version(),
            "token": uuid.uuid4().hex,
        }
        self._file_lock: Any = None
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # -- the context manager
    def __enter__(self) -> Self:
        if is_remote(self.root):
            self._acquire_lease()
        else:
            self._acquire_local()
        return self

    def __exit__(self, *exc: object) -> None:
        if is_remote(self.root):
            self._release_lease()
        else:
            self._release_local()

    def check(self) -> None:
        """Raise :class:`CacheLockedError` when this build no longer holds its lease."""
        if self._lost is not None:
            raise CacheLockedError(f"the build lost its lock on {self.root}: {self._lost}")

    def _deadline(self) -> float:
        return float("inf") if self.timeout is None else time.monotonic() + max(0.0, self.timeout)

    def _locked(self, holder: dict[str, Any] | None) -> CacheLockedError:
        waited = "" if not self.timeout else f" (waited {self.timeout:g} s)"
        return CacheLockedError(
            f"the cache at {self.root} is being built by {_describe(holder)}{waited}; wait for it "
            "(build_cache(..., lock_timeout=SECONDS), or None to wait as long as it takes), or build "
            "into another path"
        )

    # -- local: flock + record
    def _acquire_local(self) -> None:
        import filelock

        root = self.root
        assert isinstance(root, Path)
        write_step("mkdir", root)
        root.mkdir(parents=True, exist_ok=True)
        fsync_dir(root.parent)
        for name in (LOCK_NAME, RECORD_NAME):
            if (root / name).is_symlink():
                raise UnsafeCacheLinkError(
                    f"{root / name} is a symbolic link; kdpipe does not write or delete through links "
                    "inside a cache. Remove the link"
                )
        lock = filelock.FileLock(
            root / LOCK_NAME, timeout=-1, thread_local=False, is_singleton=False
        )
        deadline = self._deadline()
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except filelock.Timeout:
                if time.monotonic() >= deadline:
                    raise self._locked(self._read_local_record()) from None
                time.sleep(_POLL_SECONDS)
        self._file_lock = lock
        try:
            atomic_write_bytes(root / RECORD_NAME, json.dumps(self.record).encode())
        except BaseException:
            lock.release()
            raise

    def _read_local_record(self) -> dict[str, Any] | None:
        assert isinstance(self.root, Path)
        try:
            record = json.loads((self.root / RECORD_NAME).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _release_local(self) -> None:
        assert isinstance(self.root, Path)
        try:
            record = self.root / RECORD_NAME
            if self._read_local_record() == self.record:  # ours: nobody else can have written it
                write_step("unlink", record)
                record.unlink(missing_ok=True)
        finally:
            if self._file_lock is not None:
                self._file_lock.release()
                self._file_lock = None

    # -- object storage: a lease object
    def _lease(self) -> Any:
        return self.root / RECORD_NAME

    def _lease_body(self) -> bytes:
        return json.dumps(
            {**self.record, "refreshed": _now(), "lease_seconds": LEASE_SECONDS}
        ).encode()

    def _acquire_lease(self) -> None:
        lease = self._lease()
        fs, key = lease.fs, lease.key
        deadline = self._deadline()
        while True:
            write_step("put", lease)
            try:
                out = fs.pipe_file(key, self._lease_body(), mode="create")  # If-None-Match: *
                self._etag = out.get("ETag") if isinstance(out, dict) else None
                break
            except FileExistsError:
                pass
            holder, etag, stale = self._read_lease()
            if stale and etag is not None:
                write_step("put", lease)
                try:  # take over the dead holder's lease, only if nobody else did first
                    out = fs.pipe_file(key, self._lease_body(), IfMatch=etag)
                    self._etag = out.get("ETag") if isinstance(out, dict) else None
                    break
                except (FileNotFoundError, OSError):
                    pass
            if time.monotonic() >= deadline:
                raise self._locked(holder)
            time.sleep(_POLL_SECONDS * 4)
        if self._etag is None:  # pragma: no cover - every S3 PUT answers with an ETag
            self._etag = fs.info(key).get("ETag")
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="kdpipe-lease", daemon=True
        )
        self._refresher.start()

    def _read_lease(self) -> tuple[dict[str, Any] | None, str | None, bool]:
        """The lease's record, its ETag, and whether it is stale (None, None, False: gone)."""
        lease = self._lease()
        fs = lease.fs
        try:
            fs.invalidate_cache(lease.key)
            info = fs.info(lease.key)
            body = fs.cat_file(lease.key)
        except FileNotFoundError:
            return None, None, False
        try:
            holder = json.loads(body)
        except ValueError:
            holder = None
        modified = info.get("LastModified")
        age = (
            (datetime.now(UTC) - modified).total_seconds()
            if isinstance(modified, datetime)
            else 0.0
        )
        return holder if isinstance(holder, dict) else None, info.get("ETag"), age > LEASE_SECONDS

    def _refresh_loop(self) -> None:
        lease = self._lease()
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                out = lease.fs.pipe_file(lease.key, self._lease_body(), IfMatch=self._etag)
                self._etag = out.get("ETag") if isinstance(out, dict) else self._etag
            except OSError as exc:  # a precondition failure (412): another builder took the lease
                holder, _, _ = self._read_lease()
                self._lost = f"its lease was taken over by {_describe(holder)} ({exc})"
                return

    def _release_lease(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
        if self._lost is not None:
            return
        holder, _, _ = self._read_lease()
        if holder is not None and holder.get("token") == self.record["token"]:
            lease = self._lease()
            write_step("unlink", lease)
            lease.unlink(missing_ok=True)
