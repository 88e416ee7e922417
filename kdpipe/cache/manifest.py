"""The cache manifest (``manifest.json``) and per-chunk completion records.

Layout of a cache directory::

    PATH/manifest.json        what the cache is: settings, fingerprints, classes, status
    PATH/manifest.initial.json   the manifest as first written (recovers a damaged one)
    PATH/build.lock, build.lock.json   the build lock and its holder (see ``lock``)
    PATH/done/000012.json     chunk 12 is complete (written atomically, after its data)
    PATH/logits.zarr/ or PATH/hdf5/   the chunk data (see ``zarr_store``, ``hdf5_store``)

While building, the ``done/`` records are the truth about which chunks exist. When every
chunk is complete the manifest is rewritten once with ``complete: true`` and all records
copied into it, so readers of a finished cache need one small file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Self

import numpy as np

from kdpipe.cache.durable import atomic_write_bytes
from kdpipe.cache.location import as_location
from kdpipe.errors import CacheCorruptError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MANIFEST_COPY",
    "SPARSE_FORMAT_VERSION",
    "VIEWS_FORMAT_VERSION",
    "READABLE_VERSIONS",
    "ChunkRecord",
    "TeacherInfo",
    "Manifest",
    "read_manifest",
    "write_manifest",
    "write_record",
    "read_records",
    "atomic_write_bytes",
    "encode_classes",
    "decode_classes",
    "chunk_bounds",
]

FORMAT_VERSION = 2  # 2: per-row digests of X stored with every chunk
SPARSE_FORMAT_VERSION = (
    3  # 3: format 2 plus sparse records (Manifest.sparse); older kdpipe refuses it
)
VIEWS_FORMAT_VERSION = (
    4  # 4: augmented views per row (Manifest.views), dense or sparse; older kdpipe refuses it
)
READABLE_VERSIONS = (1, 2, 3, 4)
MANIFEST_NAME = "manifest.json"
MANIFEST_COPY = "manifest.initial.json"  # written once at creation, never rewritten: recovers a damaged manifest
RECORDS_DIR = "done"


def chunk_bounds(index: int, chunk_rows: int, n_rows: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of chunk ``index``."""
    start = index * chunk_rows
    return start, min(start + chunk_rows, n_rows)


def encode_classes(classes: np.ndarray) -> dict[str, Any]:
    """JSON form of a class array: its dtype and values."""
    classes = np.asarray(classes)
    kind = "str" if classes.dtype.kind in "USO" else classes.dtype.str
    values = [str(c) for c in classes] if kind == "str" else classes.tolist()
    return {"dtype": kind, "values": values}


def decode_classes(data: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_classes`."""
    if data["dtype"] == "str":
        return np.asarray(data["values"], dtype=str)
    return np.asarray(data["values"], dtype=np.dtype(data["dtype"]))


class _FlatRecord:
    """``to_dict``/``from_dict`` for a frozen dataclass whose fields are plain values."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(**data)


@dataclass(frozen=True)
class ChunkRecord(_FlatRecord):
    """Proof that chunk ``index`` (rows ``start:stop``) was written, with its checksums."""

    index: int
    start: int
    stop: int
    logits_crc32c: int
    labels_crc32c: int
    data_sha256: str
    device: str = "cpu"
    digests_crc32c: int | None = None  # None: a format-1 chunk, without row digests
    views_crc32c: int | None = (
        None  # digests of the augmented inputs (rows, views); only in a views cache
    )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["views_crc32c"] is None:  # a cache without views records exactly what it always did
            del data["views_crc32c"]
        return data


@dataclass(frozen=True)
class TeacherInfo(_FlatRecord):
    """One ensemble member as recorded in the manifest."""

    kind: str
    name: str
    fingerprint: str


@dataclass(frozen=True)
class Manifest:
    """Everything a cache promises about itself."""

    backend: str
    dtype: str
    chunk_rows: int
    n_rows: int
    classes: dict[str, Any]
    teachers: tuple[TeacherInfo, ...]
    data_shape: tuple[int, ...]
    data_dtype: str
    versions: dict[str, str] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    finished: str | None = None
    complete: bool = False
    data_fingerprint: str | None = None
    chunks: tuple[ChunkRecord, ...] = ()
    format_version: int = FORMAT_VERSION
    sparse: dict[str, Any] | None = (
        None  # None: dense logits; else the settings of kdpipe.cache.sparse
    )
    views: dict[str, Any] | None = (
        None  # None: one plain view; else kdpipe.cache.views.Views.to_dict()
    )

    @property
    def has_row_digests(self) -> bool:
        """Whether the chunks store per-row digests of X (format 2 and later)."""
        return self.format_version >= 2

    @property
    def n_members(self) -> int:
        return len(self.teachers)

    @property
    def n_classes(self) -> int:
        return len(self.classes["values"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def sparse_layout(self) -> Any:
        """The :class:`~kdpipe.cache.sparse.SparseLayout` of a sparse cache; None when dense."""
        if self.sparse is None:
            return None
        from kdpipe.cache.sparse import SparseLayout, parse_sparse

        spec = parse_sparse(self.sparse)
        assert spec is not None  # self.sparse is not None
        return SparseLayout(spec, self.dtype, self.n_classes, self.n_members)

    def views_config(self) -> Any:
        """The :class:`~kdpipe.cache.views.Views` of a views cache; None without views."""
        if self.views is None:
            return None
        from kdpipe.cache.views import Views

        return Views.from_dict(self.views)

    @property
    def n_views(self) -> int:
        """Views per row (1 without views)."""
        return 1 if self.views is None else int(self.views["count"])

    @property
    def view_shape(self) -> tuple[int, ...]:
        """Shape of one stored view of a row: ``(M, C)`` logits, or ``(entries, record bytes)`` when sparse."""
        layout = self.sparse_layout()
        return (self.n_members, self.n_classes) if layout is None else layout.row_shape

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one stored row: :attr:`view_shape`, preceded by ``views`` in a views cache."""
        return self.view_shape if self.views is None else (self.n_views, *self.view_shape)

    @property
    def stored_dtype(self) -> str:
        """dtype of the stored ``logits`` array: the logits' own, or ``uint8`` records."""
        return self.dtype if self.sparse is None else "uint8"

    def class_array(self) -> np.ndarray:
        return decode_classes(self.classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["teachers"] = [t.to_dict() for t in self.teachers]
        data["chunks"] = [c.to_dict() for c in self.chunks]
        data["data_shape"] = list(self.data_shape)
        if data["views"] is None:  # a cache without views: the manifest it always had
            del data["views"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["teachers"] = tuple(TeacherInfo.from_dict(t) for t in data["teachers"])
        data["chunks"] = tuple(ChunkRecord.from_dict(c) for c in data.get("chunks", ()))
        data["data_shape"] = tuple(data["data_shape"])
        return cls(**data)

    def finished_with(
        self, records: list[ChunkRecord], data_fingerprint: str, when: str
    ) -> Manifest:
        return replace(
            self,
            chunks=tuple(records),
            complete=True,
            data_fingerprint=data_fingerprint,
            finished=when,
        )


def read_manifest(root: Any, name: str = MANIFEST_NAME) -> Manifest | None:
    """The manifest of the cache at ``root`` (a path or a URL's ``RemotePath``), or None when there is none.

    Every field is checked for its type and range, and for agreement with the others
    (:func:`check_manifest`); the stores are checked against it when a cache is opened.

    Raises
    ------
    CacheCorruptError
        It cannot be decoded, or a field holds nonsense (the message names the field).
    """
    path = as_location(root) / name
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object was expected, not {type(data).__name__}")
        manifest = Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CacheCorruptError(f"cannot decode the manifest {path}: {exc!r}") from exc
    if manifest.format_version not in READABLE_VERSIONS:
        raise CacheCorruptError(
            f"{path} has format version {manifest.format_version}; this kdpipe reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    if manifest.views is not None or manifest.format_version == VIEWS_FORMAT_VERSION:
        if (manifest.views is None) or manifest.format_version != VIEWS_FORMAT_VERSION:
            raise CacheCorruptError(
                f"{path} has format version {manifest.format_version} and views={manifest.views!r}: "
                f"caches with views, and only they, have version {VIEWS_FORMAT_VERSION}"
            )
        try:
            manifest.views_config()
        except ValueError as exc:
            raise CacheCorruptError(
                f"{path} records views settings this kdpipe cannot read: {exc}"
            ) from exc
    elif (manifest.sparse is not None) != (manifest.format_version == SPARSE_FORMAT_VERSION):
        raise CacheCorruptError(
            f"{path} has format version {manifest.format_version} and sparse={manifest.sparse!r}: "
            f"sparse caches, and only they, have version {SPARSE_FORMAT_VERSION}"
        )
    check_manifest(manifest, path)
    try:
        manifest.sparse_layout()
    except (ValueError, TypeError, KeyError) as exc:
        raise CacheCorruptError(
            f"{path} records sparse settings this kdpipe cannot read: {exc}"
        ) from exc
    if name == MANIFEST_NAME:
        _check_against_initial_copy(manifest, root)
    return manifest


# what a build changes in a manifest after creating it; every other field is fixed then
_STATUS_FIELDS = frozenset({"finished", "complete", "data_fingerprint", "chunks"})


def settings_differences(manifest: Manifest, initial: Manifest) -> list[str]:
    """The fields, other than the build's status, in which two manifests differ
    (a settings dict field by field: ``sparse.temperature``), each as
    ``"name: VALUE against VALUE"``."""
    a, b = manifest.to_dict(), initial.to_dict()
    out = []
    for key in sorted((set(a) | set(b)) - _STATUS_FIELDS):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [
                f"{key}.{sub}: {x.get(sub)!r} against {y.get(sub)!r}"
                for sub in sorted(set(x) | set(y))
                if x.get(sub) != y.get(sub)
            ]
        elif x != y:
            out.append(f"{key}: {x!r} against {y!r}")
    return out


def _check_against_initial_copy(manifest: Manifest, root: Any) -> None:
    """Refuse a manifest whose settings are not those it was created with.

    ``manifest.initial.json`` is written once, with the settings, when a cache is created;
    the build only ever changes the status fields of ``manifest.json``. Settings that
    change no stored shape (a sampled format's temperature, a top-k tail's kind, the
    class labels of a sparse cache) are caught by no other check: an edited or damaged
    one would silently read every record as something else. A cache without an intact
    copy (made before it existed, or the copy itself damaged) is not compared.
    """
    try:
        initial = read_manifest(root, name=MANIFEST_COPY)
    except (CacheCorruptError, OSError):  # the copy is only a spare: this one checked out
        return
    if initial is None:
        return
    differences = settings_differences(manifest, initial)
    if differences:
        shown = "; ".join(differences[:5]) + (" ..." if len(differences) > 5 else "")
        raise CacheCorruptError(
            f"the manifest {as_location(root) / MANIFEST_NAME} does not hold the settings the "
            f"cache was created with ({MANIFEST_COPY}): {shown} (this file against the copy). One of them was edited or "
            "damaged after the build; building the cache again with its settings restores the "
            "manifest from the copy (or overwrite it)"
        )


def _field_error(path: Any, name: str, value: Any, why: str) -> CacheCorruptError:
    return CacheCorruptError(f"the manifest {path} is corrupt: field {name!r} = {value!r} {why}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(m: Manifest, path: Any) -> None:
    """Check every field of ``m`` for its type, its range and agreement with the other fields.

    Raises
    ------
    CacheCorruptError
        Naming the first field that is wrong.
    """
    if m.backend not in ("zarr", "hdf5"):
        raise _field_error(path, "backend", m.backend, "is not 'zarr' or 'hdf5'")
    if m.dtype not in ("float32", "float16"):
        raise _field_error(path, "dtype", m.dtype, "is not 'float32' or 'float16'")
    if not _is_int(m.chunk_rows) or m.chunk_rows < 1:
        raise _field_error(path, "chunk_rows", m.chunk_rows, "is not a positive integer")
    if not _is_int(m.n_rows) or m.n_rows < 1:
        raise _field_error(path, "n_rows", m.n_rows, "is not a positive integer")
    if not (m.data_shape and all(_is_int(d) and d >= 0 for d in m.data_shape)):
        raise _field_error(path, "data_shape", list(m.data_shape), "is not a shape")
    if m.data_shape[0] != m.n_rows:
        raise _field_error(
            path, "n_rows", m.n_rows, f"differs from the rows of data_shape {list(m.data_shape)}"
        )
    try:
        np.dtype(m.data_dtype)
    except TypeError as exc:
        raise _field_error(path, "data_dtype", m.data_dtype, "is not a numpy dtype") from exc
    classes = m.classes
    if not (
        isinstance(classes, dict) and isinstance(classes.get("values"), list) and "dtype" in classes
    ):
        raise _field_error(path, "classes", classes, "is not {'dtype': ..., 'values': [...]}")
    try:
        values = decode_classes(classes)
    except (TypeError, ValueError) as exc:
        raise _field_error(path, "classes", classes, f"cannot be decoded ({exc})") from exc
    if len(values) < 1 or len(np.unique(values)) != len(values):
        raise _field_error(path, "classes", classes["values"], "is not a list of distinct classes")
    if not m.teachers or not all(
        isinstance(t.fingerprint, str) and t.fingerprint for t in m.teachers
    ):
        raise _field_error(
            path,
            "teachers",
            [t.to_dict() for t in m.teachers],
            "is not a list of fingerprinted teachers",
        )
    for name in ("versions", "build"):
        if not isinstance(getattr(m, name), dict):
            raise _field_error(path, name, getattr(m, name), "is not a JSON object")
    if not isinstance(m.complete, bool):
        raise _field_error(path, "complete", m.complete, "is not true or false")
    if m.complete:
        if not isinstance(m.data_fingerprint, str):
            raise _field_error(
                path, "data_fingerprint", m.data_fingerprint, "is missing from a finished cache"
            )
        if len(m.chunks) != m.n_chunks:
            raise _field_error(
                path,
                "chunks",
                f"{len(m.chunks)} records",
                f"in a finished cache of {m.n_chunks} chunks "
                f"(n_rows {m.n_rows}, chunk_rows {m.chunk_rows})",
            )
        for i, record in enumerate(m.chunks):
            problem = record_problem(record, i, m)
            if problem:
                raise _field_error(path, "chunks", f"record {i}", problem)
    elif m.chunks:
        raise _field_error(
            path, "chunks", f"{len(m.chunks)} records", "in a cache not marked complete"
        )


def record_problem(record: ChunkRecord, index: int, manifest: Manifest) -> str | None:
    """Why ``record`` cannot be the completion record of chunk ``index`` of ``manifest``; None when it can."""
    if not all(
        _is_int(v)
        for v in (
            record.index,
            record.start,
            record.stop,
            record.logits_crc32c,
            record.labels_crc32c,
        )
    ):
        return "holds a non-integer index, row or checksum"
    if record.index != index:
        return f"names chunk {record.index}"
    if index >= manifest.n_chunks:
        return f"is beyond the last chunk ({manifest.n_chunks - 1}; n_rows {manifest.n_rows}, chunk_rows {manifest.chunk_rows})"
    bounds = chunk_bounds(index, manifest.chunk_rows, manifest.n_rows)
    if (record.start, record.stop) != bounds:
        return (
            f"covers rows {record.start}-{record.stop - 1}, not rows {bounds[0]}-{bounds[1] - 1} of chunk {index} "
            f"(n_rows {manifest.n_rows}, chunk_rows {manifest.chunk_rows})"
        )
    if not isinstance(record.data_sha256, str):
        return "has no data hash"
    return None


def write_manifest(root: Any, manifest: Manifest, name: str = MANIFEST_NAME) -> None:
    """Write the manifest (or, with ``name=MANIFEST_COPY``, its initial copy) atomically."""
    text = json.dumps(manifest.to_dict(), indent=1, sort_keys=True)
    atomic_write_bytes(as_location(root) / name, text.encode())


def write_record(root: Any, record: ChunkRecord) -> None:
    """Mark a chunk complete. Call only after its data is written."""
    directory = as_location(root) / RECORDS_DIR
    directory.mkdir(exist_ok=True)
    atomic_write_bytes(
        directory / f"{record.index:06d}.json", json.dumps(record.to_dict()).encode()
    )


def read_records(
    root: Any, manifest: Manifest | None = None, damaged: list[Any] | None = None
) -> dict[int, ChunkRecord]:
    """Completion records written so far, by chunk index.

    A record is only a claim that a chunk was written: one that cannot be decoded (a
    zero-length file a crash or a full disk left, flipped bytes), or that does not fit
    chunk ``index`` of ``manifest``, claims nothing. It is left out, so its chunk counts
    as not written (a build recomputes it); its path is appended to ``damaged``.
    """
    directory = as_location(root) / RECORDS_DIR
    records: dict[int, ChunkRecord] = {}
    if not directory.is_dir():
        return records
    for path in directory.glob("[0-9]*.json"):
        record: ChunkRecord | None
        try:
            record = ChunkRecord.from_dict(json.loads(path.read_text()))
            index = int(path.name.split(".")[0])
        except (ValueError, KeyError, TypeError, AttributeError):
            record = None
        if (
            record is None
            or record.index != index
            or (manifest is not None and record_problem(record, index, manifest))
        ):
            if damaged is not None:
                damaged.append(path)
            continue
        records[record.index] = record
    return records
