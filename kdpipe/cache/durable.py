"""Crash-safe file writes: a temp beside the target, fsync, replace, fsync of the folder.

Every file kdpipe writes into a cache goes through here (zarr writes its chunk files
itself; :mod:`kdpipe.cache.zarr_store` then fsyncs them with :func:`fsync_file` and
:func:`fsync_dir`). A crash at any instant leaves the old file or the new one, plus at
worst a stray temp file whose name :func:`is_temp_name` recognizes, so every reader and
the "is this a cache" check can ignore it.

New files are created with mode ``0o666`` filtered by the process umask (what ``open``
does), not ``mkstemp``'s ``0o600``: a team sharing a cache sets its umask.

Each step that changes the disk first calls :func:`write_step`, a no-op unless a hook is
installed with :func:`set_write_hook`. The crash tests install one that ends the
process at step ``k``, for every ``k``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdpipe.cache.location import is_remote

__all__ = [
    "TEMP_SUFFIX",
    "is_temp_name",
    "temp_path",
    "atomic_write",
    "atomic_write_bytes",
    "fsync_file",
    "fsync_dir",
    "remove_temps",
    "write_step",
    "set_write_hook",
]

TEMP_SUFFIX = ".tmp"
WriteHook = Callable[[str, str], None]
_hook: WriteHook | None = None


def set_write_hook(hook: WriteHook | None) -> WriteHook | None:
    """Install ``hook(step, path)``, called before every disk-changing step; return the previous one."""
    global _hook
    previous, _hook = _hook, hook
    return previous


def write_step(step: str, path: Any) -> None:
    """Announce a step (``"write"``, ``"fsync"``, ``"rename"``, ``"fsync-dir"``, ``"put"``...) about to change the disk."""
    if _hook is not None:
        _hook(step, str(path) if is_remote(path) else os.fspath(path))


def is_temp_name(name: str) -> bool:
    """True for the names of kdpipe's own temp files (``.<target>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def temp_path(target: Path) -> Path:
    """A fresh temp name beside ``target`` (not created)."""
    return target.with_name(f".{target.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def fsync_file(path: Any) -> None:
    """Flush a written file's data to the disk (nothing to do in object storage)."""
    if is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Any) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk (nothing to do in object storage)."""
    if is_remote(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open folders (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` so that readers see the old file or the new one, never half.

    ``write(tmp)`` creates and fills a new file at the temp name ``tmp`` (exclusively:
    the name is fresh). Its data reaches the disk (fsync of the file, then of its folder)
    before this returns; on any error the temp file is removed.
    """
    tmp = temp_path(path)
    try:
        write_step("write", tmp)
        write(tmp)
        write_step("fsync", tmp)
        fsync_file(tmp)
        write_step("rename", path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_step("fsync-dir", path.parent)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Any, data: bytes) -> None:
    """:func:`atomic_write` of ``data``; in object storage, one PUT (atomic there, no rename needed)."""
    if is_remote(path):
        write_step("put", path)
        path.write_bytes(data)
        return

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:  # "x": mode 0o666 & ~umask, and never an existing file
            f.write(data)

    atomic_write(path, write)


def remove_temps(folder: Any) -> None:
    """Delete temp files a crashed writer left directly in ``folder`` (object storage has none)."""
    if is_remote(folder) or not folder.is_dir():
        return
    for entry in folder.iterdir():
        if is_temp_name(entry.name) and entry.is_file():
            write_step("unlink", entry)
            entry.unlink(missing_ok=True)
