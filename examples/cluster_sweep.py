"""A distillation sweep on a dask.distributed cluster, with X and the logit cache in object storage.

No machine shares a disk with another; they share a bucket. The driver writes the
transfer set X to the bucket as a zarr array, the cluster's workers run the teacher
ensemble over it and write the logit cache next to it (``build_cache(client=...)``),
and a ``GridSearchCV`` over temperature and alpha runs on the workers under joblib's
``dask`` backend: each worker reads its fold's rows of X and of the cache from the
bucket. What travels to a worker is a URL and row numbers (``LazyRows`` and
``LogitCache`` views pickle that way), never data.

Run against a cluster and a bucket (credentials and endpoint from the environment, e.g.
``AWS_PROFILE``, ``AWS_ENDPOINT_URL``; or ``--storage-option endpoint_url=...``)::

    python examples/cluster_sweep.py --url s3://my-bucket/kdpipe-demo --scheduler tcp://host:8786

Without ``--scheduler`` a ``LocalCluster`` of ``--workers`` processes starts here. Writes
``cluster_sweep.json`` into ``--out`` (default ``kdpipe-results/cluster_sweep`` under the
current folder) and prints its path.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, KFold, train_test_split

from kdpipe import DistilledClassifier, LazyRows, build_cache
from kdpipe.cache.cli import add_storage_option, parse_storage_options
from kdpipe.cache.location import is_remote, parse_location
from kdpipe.cli import HelpFormatter
from kdpipe.teacher_training import train_mlp_ensemble


def _zarr_store(location: object, *, read_only: bool) -> object:
    """zarr's store at a local folder or a URL."""
    return location.zarr_store(read_only=read_only) if is_remote(location) else str(location)


def _ensemble_accuracy(teachers: list, X: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of the ensemble's mean logits (the geometric mean of its distributions)."""
    import torch

    with torch.inference_mode():
        logits = np.mean(
            [t.eval()(torch.from_numpy(X)).numpy() for t in teachers], axis=0
        )  # (rows, classes)
    return round(float(np.mean(logits.argmax(1) == y)), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--url", required=True, help="where X and the cache go: s3://bucket/prefix (or a folder)"
    )
    add_storage_option(parser)
    parser.add_argument(
        "--scheduler",
        default=None,
        help="dask.distributed scheduler address (default: a LocalCluster)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the LocalCluster"
    )
    parser.add_argument(
        "--out", default="kdpipe-results/cluster_sweep", help="folder for cluster_sweep.json"
    )
    parser.add_argument("--members", type=int, default=3, help="teachers in the ensemble")
    parser.add_argument("--teacher-epochs", type=int, default=20, help="epochs of each teacher")
    parser.add_argument("--epochs", type=int, default=60, help="student epochs")
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0], help="swept"
    )
    parser.add_argument(
        "--alphas", type=float, nargs="+", default=[0.0, 0.5], help="swept hard-label weights"
    )
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the split, teachers and students"
    )
    args = parser.parse_args(argv)
    options = parse_storage_options(args.storage_option)
    base = parse_location(
        args.url, options
    )  # a bad URL or a missing package fails here, before any work
    import distributed
    import zarr

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=args.seed
    )
    start = time.perf_counter()
    teachers = train_mlp_ensemble(
        X_train,
        y_train,
        n_classes=10,
        n_members=args.members,
        hidden_layer_sizes=(256,),
        epochs=args.teacher_epochs,
        random_state=args.seed,
        device="cpu",
    )
    print(f"trained {args.members} teachers in {time.perf_counter() - start:.1f}s")

    # X in the bucket: chunks of 256 rows (about 64 KiB), a few requests per fold
    array = zarr.create_array(
        store=_zarr_store(base / "X.zarr", read_only=False),
        shape=X_train.shape,
        chunks=(256, X_train.shape[1]),
        dtype=X_train.dtype,
        overwrite=True,
    )
    array[...] = X_train
    X_remote = zarr.open_array(_zarr_store(base / "X.zarr", read_only=True), mode="r")

    if args.scheduler:
        cluster, client = None, distributed.Client(args.scheduler)
    else:
        cluster = distributed.LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = distributed.Client(cluster)
    try:
        start = time.perf_counter()
        cache = build_cache(
            teachers,
            X_remote,
            base / "logits.zarr",
            y=y_train,
            client=client,
            chunk_rows=512,
            device="cpu",
            overwrite=True,
            progress=False,
        )
        print(
            f"built {cache!r} on {len(client.nthreads())} workers in {time.perf_counter() - start:.1f}s"
        )
        student = DistilledClassifier(
            hidden_layer_sizes=(64,),
            max_epochs=args.epochs,
            batch_size=64,
            learning_rate=3e-3,
            device="cpu",
            random_state=args.seed,
        )
        grid = {"temperature": args.temperatures, "alpha": args.alphas}
        search = GridSearchCV(
            student, grid, cv=KFold(args.cv, shuffle=True, random_state=args.seed), n_jobs=-1
        )
        start = time.perf_counter()
        with joblib.parallel_backend("dask"):
            search.fit(LazyRows(X_remote), y_train, teacher_logits=cache)
        sweep_seconds = time.perf_counter() - start
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

    results = {
        "url": str(base),
        "workers": args.workers if args.scheduler is None else args.scheduler,
        "cv_accuracy": {
            f"T={p['temperature']:g}, alpha={p['alpha']:g}": round(float(s), 4)
            for p, s in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])
        },
        "best_params": search.best_params_,
        "test_accuracy": round(float(search.score(X_test, y_test)), 4),
        "teacher_test_accuracy": _ensemble_accuracy(teachers, X_test, y_test),
        "sweep_seconds": round(sweep_seconds, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster_sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {(out / 'cluster_sweep.json').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
