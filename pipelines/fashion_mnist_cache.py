"""Train a 2x1200 ReLU MLP teacher ensemble on Fashion-MNIST and cache its logits.

Reads the idx files (gzipped or not) from ``--data-dir`` (default: Debian's
``dataset-fashion-mnist`` at /usr/share/datasets/fashion-mnist) and builds a cache over
the 60,000 training rows. The cache goes to ``--out`` (default ``data/fashion-mnist-cache``
under the current folder; ``data/`` is git-ignored); its path is printed. Example::

    python pipelines/fashion_mnist_cache.py --out data/fashion-cache --epochs 10
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from kdpipe.cache import build_cache
from kdpipe.cache.cli import add_storage_option, parse_storage_options
from kdpipe.cache.location import is_remote, parse_location
from kdpipe.cli import HelpFormatter
from kdpipe.datasets import FASHION_MNIST_DIR, load_fashion_mnist
from kdpipe.teacher_training import jitter_images, train_mlp_ensemble


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--data-dir", default=FASHION_MNIST_DIR, help="directory of the idx files")
    parser.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        default="data/fashion-mnist-cache",
        help="cache directory, or a URL (s3://bucket/prefix/run.zarr)",
    )
    parser.add_argument("--members", type=int, default=3, help="ensemble size")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of each teacher")
    parser.add_argument("--dropout", type=float, default=0.5, help="teacher dropout")
    parser.add_argument(
        "--jitter-copies", type=int, default=0, help="copies of the data shifted by <= 2 pixels"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training rows (smoke runs)"
    )
    parser.add_argument("--backend", default="zarr", choices=["zarr", "hdf5"], help="cache format")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16"], help="stored logit dtype"
    )
    parser.add_argument("--chunk-rows", type=int, default=4096, help="rows per cache chunk")
    parser.add_argument("--scheduler", default=None, help="dask.distributed scheduler address")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0, help="seeds the teachers")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing cache at --out"
    )
    add_storage_option(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing, no progress bars")
    args = parser.parse_args(argv)
    out = parse_location(
        args.out, parse_storage_options(args.storage_option)
    )  # a bad URL fails before training
    if is_remote(out) and args.backend != "zarr":
        parser.error("a cache at a URL must use --backend zarr")
    say = (lambda *a: None) if args.quiet else print

    X, y = load_fashion_mnist(args.data_dir, kind="train")
    if args.limit is not None:
        X, y = X[: args.limit], y[: args.limit]
    say(f"Fashion-MNIST: {X.shape[0]} training rows")
    start = time.perf_counter()
    teachers = train_mlp_ensemble(
        X,
        y,
        n_classes=10,
        n_members=args.members,
        hidden_layer_sizes=(1200, 1200),
        dropout=args.dropout,
        epochs=args.epochs,
        batch_size=128,
        random_state=args.seed,
        device=args.device,
        augment=partial(jitter_images, image_shape=(28, 28), max_shift=2),
        n_augmented_copies=args.jitter_copies,
        verbose=0 if args.quiet else 1,
    )
    say(f"trained {args.members} teachers in {time.perf_counter() - start:.1f}s")
    cache = build_cache(
        teachers,
        X,
        out,
        y=y,
        backend=args.backend,
        dtype=args.dtype,
        chunk_rows=args.chunk_rows,
        device=args.device,
        client=args.scheduler,
        overwrite=args.overwrite,
        progress=not args.quiet,
        classes=np.arange(10),
    )
    X_test, y_test = load_fashion_mnist(args.data_dir, kind="test")
    import torch

    with torch.inference_mode():
        logits = np.stack([t(torch.from_numpy(X_test)).numpy() for t in teachers], axis=1)
    say(
        f"{cache!r}; ensemble test errors: {(logits.mean(1).argmax(1) != y_test).sum()} / {len(y_test)}"
    )
    say(f"wrote {cache.path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
