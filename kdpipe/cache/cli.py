"""``kdpipe build-cache``, ``kdpipe info`` and ``kdpipe verify``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kdpipe.errors import InputError, KdpipeError, SparseSizeError, UsageError

__all__ = ["register", "parse_storage_options", "add_storage_option"]


_TEACHER_FORMATS = (
    "TorchScript (.pt, .pth, .ts: torch.jit.script(model).save(path)); a joblib-pickled "
    "scikit-learn classifier (.joblib, .pkl, .pickle) or a torch.save()d whole module "
    "(.pt, .pth) only with --trust-pickled-teachers"
)
# build_cache's wording of an option -> the command line's
_FLAG_WORDS = {
    "overwrite=True": "--overwrite",
    "a dense cache (sparse=None)": "a dense cache (no --sparse)",
    "trust_pickled_teachers=True": "--trust-pickled-teachers",
    "pass resume=True or --overwrite": "pass --overwrite",
    "build_cache(..., lock_timeout=SECONDS), or None to wait as long as it takes": (
        "--lock-timeout SECONDS, or --lock-timeout none to wait as long as it takes"
    ),
}
_RESUME_HINT = "chunks finished so far are kept; rerun the same command to resume"
_STORAGE_HELP = (
    "KEY=VALUE option of a URL's file system (e.g. endpoint_url=http://host:9000, profile=NAME, "
    "anon=true); repeatable. Not for credentials: those come from the environment or a profile "
    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL for s3://)"
)


def parse_storage_options(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--storage-option KEY=VALUE`` pairs as a dict; values parse as JSON where they can.

    Secret-like keys are refused: a command line lands in shell history and process lists.
    """
    from kdpipe.cache.location import redact

    if not pairs:
        return None
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option takes KEY=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        secret = _secret_key({key: value}, redact)
        if (
            secret is not None
        ):  # at the top, or nested: client_kwargs={"aws_secret_access_key": ...}
            raise UsageError(
                f"--storage-option {secret}=... looks like a credential; a command line lands in shell "
                "history. Set it in the environment or a profile instead (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE for s3://)"
            )
        options[key] = value
    return options


def _secret_key(value: Any, redact: Any, where: str = "") -> str | None:
    """The dotted name of the first credential-like key in ``value`` (dicts and lists, at any depth)."""
    if isinstance(value, dict):
        hidden = redact({k: None for k in value})
        for k, v in value.items():
            name = f"{where}.{k}" if where else str(k)
            found = name if hidden[k] is not None else _secret_key(v, redact, name)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _secret_key(v, redact, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def add_storage_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--storage-option KEY=VALUE`` (read it with :func:`parse_storage_options`)."""
    parser.add_argument(
        "--storage-option", action="append", metavar="KEY=VALUE", help=_STORAGE_HELP
    )


def _shown(location: Any) -> str:
    """A cache location as printed: a local path resolved, a URL as it is."""
    return str(location.resolve())


def _open_data(
    path: str, dataset: str | None, storage_options: dict[str, Any] | None = None
) -> Any:
    """A lazily read array: ``.npy`` (memory-mapped), ``.zarr`` (a folder or a URL) or ``.h5``/``.hdf5`` + dataset name."""
    from kdpipe.cache.location import is_remote, looks_like_url, parse_location

    location = parse_location(path, storage_options if looks_like_url(path) else None)
    suffix = Path(location.name).suffix.lower()
    if suffix not in (".npy", ".zarr", ".h5", ".hdf5"):
        raise UsageError(f"--data must be a .npy, .zarr or .h5/.hdf5 file, got {path!r}")
    if suffix != ".npy" and dataset is None:
        raise UsageError(
            f"--data {path} is a {suffix} file: name the array inside it with --dataset"
        )
    if is_remote(location) and suffix != ".zarr":
        raise UsageError(f"--data {path}: only a .zarr group can be read from a URL")
    if is_remote(location) and not location.exists():
        raise FileNotFoundError(errno.ENOENT, "no such data in object storage", path)
    if not is_remote(location) and not Path(path).exists():
        raise FileNotFoundError(errno.ENOENT, "no such data file", path)
    if suffix == ".npy":
        import numpy as np

        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"--data {path} is not a readable .npy array ({exc})") from exc
    if suffix == ".zarr":
        import zarr

        group: Any = zarr.open_group(
            location.zarr_store(read_only=True) if is_remote(location) else path, mode="r"
        )
        names = sorted(group.array_keys())
    else:
        import h5py

        group = h5py.File(path, "r")
        names = sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset))
    try:
        array = group[dataset]
    except KeyError:
        array = None
    if not hasattr(array, "shape"):  # missing, or a group
        raise InputError(
            f"{path} has no array {dataset!r}; its arrays: {', '.join(names) or 'none'}"
        )
    return array


def _load_labels(path: str) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"--labels {path} is not a readable .npy array ({exc})") from exc


def _teacher(path: str, trust_pickled: bool) -> str:
    """Check a teacher file before any work; pickles (joblib, torch.save) only with the opt-in.

    Nothing is unpickled here: :func:`~kdpipe.cache.build.build_cache` loads the file,
    given ``trust_pickled_teachers``.
    """
    from kdpipe.cache.teachers import (
        PICKLE_SUFFIXES,
        STATE_DICT_HINT,
        holds_state_dict,
        torch_file_format,
    )

    if not Path(path).is_file():
        raise FileNotFoundError(errno.ENOENT, "no such teacher file", path)
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES and not trust_pickled:
        raise InputError(
            f"teacher {path} is a pickle ({suffix}); unpickling runs code from the file: pass "
            "--trust-pickled-teachers if you trust it"
        )
    if suffix not in (".pt", ".pth", ".ts"):
        return path
    found = torch_file_format(path)
    if found == "torchscript":
        return path
    if found == "pickle" and holds_state_dict(path):
        raise InputError(f"teacher {path} is a state_dict, not a teacher: {STATE_DICT_HINT}")
    if found == "pickle" and trust_pickled:
        return path
    if found == "pickle":
        raise InputError(
            f"teacher {path} is a torch.save() pickle, not TorchScript; unpickling runs code from "
            "the file: pass --trust-pickled-teachers if you trust it, or save it as TorchScript"
        )
    raise InputError(
        f"teacher {path} is neither TorchScript nor a torch.save() file; accepted: {_TEACHER_FORMATS}"
    )


def _check_build_options(args: argparse.Namespace) -> None:
    """Numbers and the device, before any file is opened (exit 2 for a bad value)."""
    from kdpipe.devices import resolve_device

    for flag, value in (("--chunk-rows", args.chunk_rows), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    if args.dataset is not None and args.data.lower().endswith(".npy"):
        raise UsageError(
            f"--dataset names an array inside a .zarr or .h5 file; --data {args.data} is one array"
        )
    args.lock_timeout = _lock_timeout(args.lock_timeout)
    if args.scheduler is None:  # a cluster's workers choose their own devices
        try:
            resolve_device(args.device)
        except InputError as exc:
            raise UsageError(f"--device {args.device}: {exc}") from exc


def _lock_timeout(text: str) -> float | None:
    """``--lock-timeout``: seconds >= 0, or ``none`` to wait as long as it takes."""
    if text.strip().lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise UsageError(f"--lock-timeout takes seconds >= 0 or 'none', got {text!r}")
    return seconds


def _flag_words(text: str) -> str:
    """``text`` with build_cache's names of options replaced by the command line's."""
    for api, flag in _FLAG_WORDS.items():
        text = text.replace(api, flag)
    return text


@contextlib.contextmanager
def _in_flag_words(usage: Mapping[type[KdpipeError], str] | None = None) -> Iterator[None]:
    """Re-raise kdpipe's errors with build_cache's names of options replaced by the
    command line's; an error of a type in ``usage`` is a :class:`UsageError` (exit 2),
    its message after that type's words (the option it is about)."""
    try:
        yield
    except KdpipeError as exc:
        text = _flag_words(str(exc))
        for kind, option in (usage or {}).items():
            if isinstance(exc, kind):
                raise UsageError(f"{option}: {text}") from None
        if text == str(exc):
            raise
        raise type(exc)(text) from exc


def _sparse_option(text: str | None) -> Any:
    """``--sparse FORMAT`` as a sparse format (None: dense); a bad one is a :class:`UsageError`."""
    from kdpipe.cache.sparse import parse_sparse_option

    if text is None:
        return None
    try:
        return parse_sparse_option(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _build(args: argparse.Namespace) -> int:
    from kdpipe.cache.build import build_cache

    _check_build_options(args)
    sparse = _sparse_option(args.sparse)  # before any work
    options = parse_storage_options(args.storage_option)
    teachers = [_teacher(path, args.trust_pickled_teachers) for path in args.teachers]
    X = _open_data(args.data, args.dataset, options)
    y = _load_labels(args.labels) if args.labels else None
    with _in_flag_words(usage={SparseSizeError: f"--sparse {args.sparse!r}"}):
        cache = build_cache(
            teachers,
            X,
            args.output,
            y=y,
            backend=args.backend,
            dtype=args.dtype,
            chunk_rows=args.chunk_rows,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            client=args.scheduler,
            overwrite=args.overwrite,
            progress=not args.quiet,
            storage_options=options,
            trust_pickled_teachers=args.trust_pickled_teachers,
            sparse=sparse,
            lock_timeout=args.lock_timeout,
        )
    if not args.quiet:
        print(f"wrote {cache!r}")
        print(f"cache: {_shown(cache.path)}")
    return 0


def _open_for_cli(kind: Any, path: str, options: Any) -> Any:
    """``LogitCache.open``, its errors in the command line's words."""
    with _in_flag_words():
        return kind.open(path, allow_incomplete=True, storage_options=options)


def _info(args: argparse.Namespace) -> int:
    from kdpipe.cache.reader import LogitCache

    options = parse_storage_options(args.storage_option)
    cache = _open_for_cli(LogitCache, args.path, options)
    print(json.dumps(cache.info(), indent=1))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from kdpipe.cache.reader import LogitCache

    options = parse_storage_options(args.storage_option)
    cache = _open_for_cli(LogitCache, args.path, options)
    report = cache.verify()
    print(_flag_words(str(report)))
    return 0 if report.ok else 1


def register(subparsers: Any) -> None:
    """Add ``build-cache``, ``info`` and ``verify`` to the ``kdpipe`` command."""
    p = subparsers.add_parser(
        "build-cache",
        help="run teachers once over a transfer set and store their logits",
        description=(
            "Run every teacher once over the transfer set and store its raw logits in a\n"
            "chunked, checksummed cache. An interrupted build (Ctrl-C, a crash) resumes\n"
            "when the same command is run again.\n\n"
            "The cache (and a .zarr transfer set) may be a URL in object storage\n"
            "(s3://bucket/prefix/run.zarr; pip install 'kdpipe[s3]'). Credentials come from\n"
            "the environment or a profile, never from the command line.\n\n"
            "Teacher files:\n" + "".join(f"  {line}\n" for line in _TEACHER_FORMATS.split("; "))
        ),
    )
    p.add_argument(
        "teachers", nargs="+", metavar="TEACHER", help="teacher files; several make an ensemble"
    )
    p.add_argument(
        "--data", required=True, help="transfer set: .npy, .zarr (a folder or URL) or .h5/.hdf5"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="array name inside a .zarr group or .h5 file (required for them)",
    )
    p.add_argument("--labels", default=None, help="labels .npy (-1 marks unlabeled rows)")
    p.add_argument(
        "-o", "--output", required=True, help="cache directory or URL (s3://bucket/prefix) to write"
    )
    p.add_argument("--backend", default="zarr", choices=["zarr", "hdf5"], help="storage format")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16"],
        help="storage dtype of the logits",
    )
    p.add_argument(
        "--chunk-rows", type=int, default=4096, help="rows per storage chunk (one task each)"
    )
    p.add_argument("--batch-size", type=int, default=512, help="rows per teacher forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--precision",
        default="model",
        choices=["model", "float16", "bfloat16"],
        help="teacher forward precision: the model's own dtype, or autocast to float16/bfloat16",
    )
    p.add_argument(
        "--scheduler", default=None, help="dask.distributed scheduler address (default: in-process)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    p.add_argument(
        "--lock-timeout",
        default="0",
        metavar="SECONDS",
        help="wait this long for another build of the same path (default 0: fail at once; "
        "'none': as long as it takes)",
    )
    p.add_argument(
        "--trust-pickled-teachers",
        action="store_true",
        help=(
            "load teachers that are pickles: .joblib/.pkl/.pickle classifiers and torch.save()d whole "
            "modules (unpickling runs code from the file: trusted files only)"
        ),
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--sparse",
        default=None,
        metavar="FORMAT",
        help="store a sparse cache: topk:K (top K logits and a tail bucket; :uniform spreads the tail "
        "evenly, :uint8 stores 8-bit values), topk:K+DRAWS@T (plus DRAWS tail classes drawn at T), "
        "sampled:DRAWS@T (classes drawn at T), lowrank:R[@ROWS] (R coefficients a row in a "
        "basis fitted on the first ROWS rows, default 4096; decodes to dense logits); default: dense",
    )
    add_storage_option(p)
    p.set_defaults(func=_build, resume_hint=_RESUME_HINT)

    p = subparsers.add_parser("info", help="summary of a logit cache (JSON)")
    p.add_argument("path", help="cache directory or URL")
    add_storage_option(p)
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "verify", help="re-read every chunk of a logit cache; exit 1 on problems"
    )
    p.add_argument("path", help="cache directory or URL")
    add_storage_option(p)
    p.set_defaults(func=_verify)
