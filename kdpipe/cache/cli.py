"""``kdpipe build-cache``, ``kdpipe info`` and ``kdpipe verify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _open_data(path: str, dataset: str | None) -> Any:
    """A lazily read array: ``.npy`` (memory-mapped), ``.zarr`` or ``.h5``/``.hdf5`` + dataset name."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        import numpy as np

        return np.load(path, mmap_mode="r")
    if suffix in (".zarr", ".h5", ".hdf5"):
        if dataset is None:
            raise ValueError(f"{path}: give the array's name with --dataset")
        if suffix == ".zarr":
            import zarr

            return zarr.open_group(path, mode="r")[dataset]
        import h5py

        return h5py.File(path, "r")[dataset]
    raise ValueError(f"data file must be .npy, .zarr or .h5, got {path!r}")


def _build(args: argparse.Namespace) -> int:
    import numpy as np

    from kdpipe.cache.build import build_cache

    X = _open_data(args.data, args.dataset)
    y = np.load(args.labels, allow_pickle=False) if args.labels else None
    cache = build_cache(
        args.teachers,
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
    )
    if not args.quiet:
        print(f"wrote {cache!r}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from kdpipe.cache.reader import LogitCache

    print(json.dumps(LogitCache.open(args.path, allow_incomplete=True).info(), indent=1))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from kdpipe.cache.reader import LogitCache

    report = LogitCache.open(args.path, allow_incomplete=True).verify()
    print(report)
    return 0 if report.ok else 1


def register(subparsers: Any) -> None:
    """Add ``build-cache``, ``info`` and ``verify`` to the ``kdpipe`` command."""
    p = subparsers.add_parser(
        "build-cache", help="run teachers once over a transfer set and store their logits"
    )
    p.add_argument("teachers", nargs="+", help="teacher files: TorchScript .pt or joblib-pickled sklearn .joblib")
    p.add_argument("--data", required=True, help="transfer set: .npy, .zarr or .h5")
    p.add_argument("--dataset", default=None, help="array name inside a .zarr group or .h5 file")
    p.add_argument("--labels", default=None, help="labels .npy (-1 marks unlabeled rows)")
    p.add_argument("-o", "--output", required=True, help="cache directory to write")
    p.add_argument("--backend", default="zarr", choices=["zarr", "hdf5"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--chunk-rows", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--precision",
        default="model",
        choices=["model", "float16", "bfloat16"],
        help="teacher forward precision: the model's own dtype, or autocast to float16/bfloat16",
    )
    p.add_argument("--scheduler", default=None, help="dask.distributed scheduler address (default: in-process)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_build)

    p = subparsers.add_parser("info", help="summary of a logit cache (JSON)")
    p.add_argument("path")
    p.set_defaults(func=_info)

    p = subparsers.add_parser("verify", help="re-read every chunk of a logit cache; exit 1 on problems")
    p.add_argument("path")
    p.set_defaults(func=_verify)
