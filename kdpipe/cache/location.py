"""Where a cache lives: a local folder, or a prefix in object storage named by a URL.

``parse_location("s3://bucket/run.zarr", storage_options)`` gives a :class:`RemotePath`:
the few ``pathlib.Path`` operations the cache code uses (``/``, ``name``, ``exists``,
``iterdir``, ``glob``, ``read_text``, ``write_bytes``, ``unlink``...) over an fsspec file
system, so the manifest, the completion records and the chunk store work the same on
both. Anything else is a local ``Path``.

Object storage has no folders, no rename and no append, and a PUT of one object is
atomic: :func:`kdpipe.cache.durable.atomic_write_bytes` writes a remote file with one
PUT, and the fsync steps are no-ops there. A ``RemotePath`` has no ``__fspath__``, so no
``os`` or ``open`` call can ever turn a URL into a local file by accident.

Storage options travel with a ``RemotePath`` (it pickles as URL + options, so a worker
process reaches the same endpoint with the same credentials) but never into anything
kdpipe writes or prints: :func:`redact` hides secret-like entries.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdpipe.errors import InputError, MissingDependencyError

if TYPE_CHECKING:  # typing_extensions only for the checker: nothing imports it at run time
    from typing_extensions import TypeIs

__all__ = [
    "MissingDependencyError",
    "RemotePath",
    "Location",
    "is_remote",
    "looks_like_url",
    "parse_location",
    "as_location",
    "redact",
    "remove_tree",
]

# a scheme of two or more letters before ":" (one letter is a Windows drive: "C:\...")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
_SECRET = re.compile(r"key|secret|token|password|passwd|credential|signature|sas", re.IGNORECASE)
# the pip package and kdpipe extra that give fsspec a protocol
_PACKAGES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", None),
    "gcs": ("gcsfs", None),
    "az": ("adlfs", None),
    "abfs": ("adlfs", None),
    "abfss": ("adlfs", None),
}


def looks_like_url(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts with a URL scheme (``s3:``, ``gs:``, ``file:``, ...)."""
    return isinstance(path, (str, os.PathLike)) and bool(_SCHEME.match(os.fspath(path)))


def redact(options: Any) -> Any:
    """``options`` with the value of every secret-like entry (key, secret, token, password...) hidden."""
    if isinstance(options, dict):
        return {k: "***" if _SECRET.search(str(k)) else redact(v) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact(v) for v in options)
    return options


class RemotePath:
    """A file or prefix in object storage, with the ``Path`` operations the cache uses.

    Parameters
    ----------
    url : str
        ``protocol://bucket/key...``, no trailing slash.
    storage_options : dict, optional
        Keyword arguments of the fsspec file system (``endpoint_url``, ``client_kwargs``,
        ``profile``, ``anon``...). Credentials are best left to the environment or a
        profile; any given here travel with pickles but are never written or printed.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.protocol, _, rest = url.partition("://")
        self.key = rest.strip("/")  # bucket/prefix/name: fsspec's path
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._pid = -1

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        options = (
            f", storage_options={redact(self.storage_options)!r}" if self.storage_options else ""
        )
        return f"RemotePath({self.url!r}{options})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.url, self.storage_options) == (
            other.url,
            other.storage_options,
        )

    def __hash__(self) -> int:
        return hash(self.url)

    def __getstate__(self) -> dict[str, Any]:  # the URL and options; the client reconnects
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RemotePath.__init__(self, state["url"], state["storage_options"])

    # -- the file system, one client per process
    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            self._fs = _filesystem(self.protocol, self.storage_options)
            self._pid = os.getpid()
        return self._fs

    def _child(self, key: str) -> RemotePath:
        child = RemotePath(f"{self.protocol}://{key}", self.storage_options)
        child._fs, child._pid = self._fs, self._pid
        return child

    # -- pure path operations
    def __truediv__(self, name: str) -> RemotePath:
        return self._child(f"{self.key}/{str(name).strip('/')}")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return self._child(self.key.rsplit("/", 1)[0]) if "/" in self.key else self

    def resolve(self) -> RemotePath:
        return self

    # -- queries: listings are re-read every time (another process may have written)
    def exists(self) -> bool:
        self.fs.invalidate_cache(self.key)
        return bool(self.fs.exists(self.key))

    def is_dir(self) -> bool:
        self.fs.invalidate_cache(self.key)
        return bool(self.fs.isdir(self.key))

    def is_file(self) -> bool:
        self.fs.invalidate_cache(self.key)
        return bool(self.fs.isfile(self.key))

    def iterdir(self) -> list[RemotePath]:
        self.fs.invalidate_cache(self.key)
        return [
            self._child(k.rstrip("/"))
            for k in self.fs.ls(self.key, detail=False)
            if k.rstrip("/") != self.key
        ]

    def glob(self, pattern: str) -> list[RemotePath]:
        self.fs.invalidate_cache(self.key)
        return [self._child(k) for k in self.fs.glob(f"{self.key}/{pattern}")]

    def sizes(self) -> dict[str, int]:
        """Size in bytes of every object under this prefix, by key."""
        self.fs.invalidate_cache(self.key)
        return {k: int(v["size"]) for k, v in self.fs.find(self.key, detail=True).items()}

    # -- whole-object reads and writes (one GET, one PUT)
    def read_bytes(self) -> bytes:
        return bytes(self.fs.cat_file(self.key))

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.key, data)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self.fs.invalidate_cache(self.key)

    def rmtree(self) -> None:
        self.fs.invalidate_cache(self.key)
        if self.fs.exists(self.key):
            self.fs.rm(self.key, recursive=True)
        self.fs.invalidate_cache(self.key)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: object storage has no folders, only keys with slashes."""

    def zarr_store(self, *, read_only: bool) -> Any:
        """zarr's own fsspec store at this prefix."""
        from zarr.storage import FsspecStore

        _filesystem_class(self.protocol)  # the clear error, before zarr's
        options = self.storage_options
        if self.protocol in ("s3", "s3a"):
            # s3fs sends a HEAD before each whole-object GET to decide on concurrent ranged
            # reads (objects > its block size); cache chunks are far smaller: one GET each
            options = {"max_concurrency": 1, **options}
        return FsspecStore.from_url(self.url, storage_options=options, read_only=read_only)


Location = Path | RemotePath


def is_remote(path: Any) -> TypeIs[RemotePath]:
    """True for a location in object storage."""
    return isinstance(path, RemotePath)


def _filesystem_class(protocol: str) -> Any:
    import fsspec

    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        package, extra = _PACKAGES.get(protocol, (None, None))
        if package is None:
            raise MissingDependencyError(
                f"{protocol}:// URLs need a package that is not installed: {exc}"
            ) from exc
        how = f"pip install 'kdpipe[{extra}]'" if extra else f"pip install {package}"
        raise MissingDependencyError(
            f"{protocol}:// URLs need the package {package}, which is not installed: {how}"
        ) from exc
    except ValueError as exc:
        raise InputError(
            f"unknown storage protocol {protocol!r} (fsspec knows no such file system)"
        ) from exc


def _filesystem(protocol: str, storage_options: dict[str, Any]) -> Any:
    return _filesystem_class(protocol)(**storage_options)


def parse_location(path: Any, storage_options: dict[str, Any] | None = None) -> Location:
    """The location named by ``path``: a :class:`RemotePath` for a URL, else a local ``Path``.

    ``file://`` URLs are local paths. A string that starts like a URL but is not one
    (``"s3:bucket"``, or ``Path("s3://b/x")``, which pathlib collapses to ``"s3:/b/x"``)
    is refused, so no local folder named ``s3:`` is ever created by accident.

    Raises
    ------
    MissingDependencyError
        The URL's protocol needs a package that is not installed (``s3fs`` for ``s3://``).
    InputError
        A malformed URL, an unknown protocol, or storage options with a local path.
    """
    if isinstance(path, RemotePath):
        if storage_options is not None and storage_options != path.storage_options:
            return RemotePath(path.url, storage_options)
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"a cache path must be a str, a path or a URL, got {type(path).__name__}")
    text = os.fspath(path)
    match = _SCHEME.match(text)
    if match is None:
        if storage_options:
            raise InputError(f"storage_options are for URLs; {text!r} is a local path")
        return Path(text)
    protocol = match.group(1).lower()
    if not text[match.end() :].startswith("//"):
        raise InputError(
            f"{text!r} starts like a URL ({protocol}:) but is not one: write {protocol}://bucket/prefix "
            "(as a str: pathlib.Path collapses '//'), or ./" + text + " for a local folder"
        )
    if protocol == "file":
        if storage_options:
            raise InputError(f"storage_options are for object storage; {text!r} is a local path")
        return Path(text[len("file://") :])
    _filesystem_class(protocol)
    rest = text[match.end() + 2 :].strip("/")
    if not rest:
        raise InputError(f"{text!r} names no bucket")
    return RemotePath(f"{protocol}://{rest}", storage_options)


def as_location(root: Any) -> Location:
    """``root`` as a location: a ``RemotePath`` unchanged, anything else parsed."""
    return root if isinstance(root, RemotePath) else parse_location(root)


def remove_tree(path: Location) -> None:
    """Delete a file or a folder (a prefix, in object storage) and everything under it."""
    import shutil

    if isinstance(path, RemotePath):
        path.rmtree()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
