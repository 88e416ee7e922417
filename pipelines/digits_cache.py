"""Train a small teacher ensemble on scikit-learn's digits and build its logit cache.

The cache goes to ``--out`` (default ``data/digits-cache`` under the current folder;
``data/`` is git-ignored); its path is printed. Example::

    python pipelines/digits_cache.py --out data/digits-cache --members 3

``--out`` may be a URL in object storage (``s3://bucket/prefix/digits.zarr``); credentials
and the endpoint come from the environment (``AWS_PROFILE``, ``AWS_ENDPOINT_URL``...).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

from kdpipe.cache import build_cache
from kdpipe.cache.cli import add_storage_option, parse_storage_options
from kdpipe.cache.location import is_remote, parse_location
from kdpipe.cli import HelpFormatter
from kdpipe.teacher_training import train_mlp_ensemble


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        default="data/digits-cache",
        help="cache directory, or a URL (s3://bucket/prefix/run.zarr)",
    )
    parser.add_argument("--members", type=int, default=3, help="ensemble size")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of each teacher")
    parser.add_argument("--backend", default="zarr", choices=["zarr", "hdf5"], help="cache format")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16"], help="stored logit dtype"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the teachers")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing cache at --out"
    )
    add_storage_option(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing, no progress bar")
    args = parser.parse_args(argv)
    out = parse_location(
        args.out, parse_storage_options(args.storage_option)
    )  # a bad URL fails before training
    if is_remote(out) and args.backend != "zarr":
        parser.error("a cache at a URL must use --backend zarr")
    say = (lambda *a: None) if args.quiet else print

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)  # (1797, 64) in [0, 1]
    y = digits.target.astype(np.int64)
    start = time.perf_counter()
    teachers = train_mlp_ensemble(
        X,
        y,
        n_classes=10,
        n_members=args.members,
        hidden_layer_sizes=(128, 128),
        dropout=0.2,
        epochs=args.epochs,
        random_state=args.seed,
        device="cpu",
    )
    say(f"trained {args.members} teachers in {time.perf_counter() - start:.1f}s")
    cache = build_cache(
        teachers,
        X,
        out,
        y=y,
        backend=args.backend,
        dtype=args.dtype,
        chunk_rows=512,
        batch_size=256,
        device="cpu",
        overwrite=args.overwrite,
        progress=not args.quiet,
        classes=np.arange(10),
    )
    accuracy = (np.asarray(cache.soft_targets(1.0)).argmax(1) == y).mean()
    say(f"{cache!r}; ensemble training accuracy {accuracy:.3f}")
    say(f"wrote {cache.path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
