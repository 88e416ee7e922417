"""Benchmark: logit caches and transfer sets in object storage against a local folder.

The object store is moto's S3 server in its own process on 127.0.0.1 (a real HTTP
endpoint; it shares this machine's cores, and every request it serves is counted from
its log). Four measurements, each against a baseline measured in the same run:

1. **Build**: ``build_cache`` of the same teachers over the same data into the bucket
   and into a local folder (alternating, median of ``--repeats``): wall and CPU time
   ratios, bytes written, requests.
2. **Cache reads**: one epoch of random minibatches of teacher logits read from the
   bucket and from the folder, with chunk memory and without.
3. **Chunk size**: one epoch of minibatches of X (a zarr array) read from the bucket
   through ``LazyRows``, for a few chunk sizes and both of the engine's orders (all rows
   shuffled; shuffled within windows of chunks): requests, bytes fetched, chunk memory,
   rows/s; the local folder as baseline. The README's advice comes from this table.
4. **Distributed build**: a ``dask.distributed`` build with 2 worker processes against 1
   (one thread each), X and the cache in the bucket, a teacher heavy enough to dominate.

Optionally (``obstore`` installed): the same chunk reads through zarr's ``ObjectStore``
against its ``FsspecStore``.

Writes ``benchmarks/results/object_storage.json`` and ``.md`` (``--quick``: a small smoke
run, ``object_storage_quick.*``). Run ``python benchmarks/bench_object_storage.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import fashion_or_random, load_line, machine, write_results

from kdpipe.cache import LogitCache, build_cache
from kdpipe.cache.location import parse_location
from kdpipe.engine import seeded
from kdpipe.rows import LazyRows
from kdpipe.students import MLP

_REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) ')
MiB = 2**20


class S3Server:
    """moto's S3 server in a subprocess on a free port of 127.0.0.1; counts requests from its log."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = folder / "moto.log"
        self._log = open(self.log, "w")  # noqa: SIM115 (the server writes it until stop() closes it)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def requests(self) -> dict[str, int]:
        """Requests served so far, by HTTP method."""
        self._log.flush()
        counts: dict[str, int] = {}
        for match in _REQUEST.finditer(self.log.read_text()):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        return counts

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log.close()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def timed(fn: Any) -> tuple[Any, float, float]:
    """``fn()``, its wall time and this process's CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def mlp(seed: int, hidden: tuple[int, ...]) -> torch.nn.Module:
    with seeded(seed):
        return MLP(784, 10, hidden, dropout=0.5).eval()


def epoch_batches(
    n: int, batch: int, window: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch's minibatches in the engine's orders: all rows shuffled, or within windows."""
    rows = np.arange(n)
    if window is None:
        order = rng.permutation(rows)
    else:
        starts = rng.permutation(np.arange(0, n, window))
        order = np.concatenate([rng.permutation(rows[s : s + window]) for s in starts])
    return [order[b : b + batch] for b in range(0, n, batch)]


def bench_build(
    server: S3Server, options: dict, X: np.ndarray, y: np.ndarray, tmp: Path, repeats: int
) -> dict:
    teachers = [mlp(s, (1200, 1200)) for s in range(2)]
    kw = dict(
        y=y,
        chunk_rows=2048,
        batch_size=512,
        device="cpu",
        num_workers=1,
        progress=False,
        overwrite=True,
    )
    local, remote = [], []
    for _ in range(repeats):  # alternating, so load changes hit both
        _, wall, cpu = timed(lambda: build_cache(teachers, X, tmp / "local-build", **kw))
        local.append((wall, cpu))
        before, server_cpu = server.requests(), server.cpu_seconds()
        cache, wall, cpu = timed(
            lambda: build_cache(teachers, X, "s3://bench/build.zarr", storage_options=options, **kw)
        )
        remote.append(
            (wall, cpu, server.cpu_seconds() - server_cpu, delta(server.requests(), before))
        )
    local_cache = LogitCache.open(tmp / "local-build")
    assert np.array_equal(np.asarray(cache), np.asarray(local_cache))
    wl = statistics.median(w for w, _ in local)
    wr = statistics.median(r[0] for r in remote)
    return {
        "rows": len(X),
        "chunk_rows": 2048,
        "teachers": "2 x MLP 784-1200-1200-10",
        "local_wall_s": [round(w, 3) for w, _ in local],
        "local_cpu_s": [round(c, 3) for _, c in local],
        "bucket_wall_s": [round(r[0], 3) for r in remote],
        "bucket_cpu_s": [round(r[1], 3) for r in remote],
        "server_cpu_s": [round(r[2], 3) for r in remote],
        "wall_ratio_bucket_over_local": round(wr / wl, 3),
        "bytes_local": local_cache.info()["bytes_on_disk"],
        "bytes_bucket": cache.info()["bytes_on_disk"],
        "requests_per_build": remote[-1][3],
        "chunks": cache.manifest.n_chunks,
    }


def bench_cache_reads(server: S3Server, options: dict, tmp: Path, batch: int) -> dict:
    local, url = LogitCache.open(tmp / "local-build"), "s3://bench/build.zarr"
    out = {}
    for name, opener in {
        "local, chunk memory": lambda: LogitCache.open(tmp / "local-build"),
        "local, no chunk memory": lambda: LogitCache.open(tmp / "local-build", chunk_cache_bytes=0),
        "bucket, chunk memory": lambda: LogitCache.open(url, storage_options=options),
        "bucket, no chunk memory": lambda: LogitCache.open(
            url, storage_options=options, chunk_cache_bytes=0
        ),
    }.items():
        cache = opener()
        batches = epoch_batches(len(local), batch, None, np.random.default_rng(0))
        before = server.requests()
        _, wall, cpu = timed(
            lambda cache=cache, batches=batches: [cache.read_rows(b) for b in batches]
        )
        out[name] = {
            "rows_per_s": round(len(local) / wall, 1),
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "requests": sum(delta(server.requests(), before).values()),
        }
    return out


def bench_chunk_sizes(
    server: S3Server,
    options: dict,
    X: np.ndarray,
    tmp: Path,
    batch: int,
    sizes: list[int],
    memory: int,
) -> list[dict]:
    import zarr

    rows = []
    for chunk_rows in sizes:
        # kdpipe's own zarr store at a URL (one GET per chunk: s3fs's HEAD is skipped)
        url = parse_location(f"s3://bench/X-{chunk_rows}.zarr", options)
        remote = zarr.create_array(
            store=url.zarr_store(read_only=False),
            shape=X.shape,
            chunks=(chunk_rows, X.shape[1]),
            dtype=X.dtype,
        )
        remote[...] = X
        local = zarr.create_array(
            store=str(tmp / f"X-{chunk_rows}.zarr"),
            shape=X.shape,
            chunks=(chunk_rows, X.shape[1]),
            dtype=X.dtype,
        )
        local[...] = X
        for order, window in (("shuffled", None), ("windows of 4 chunks", 4 * chunk_rows)):
            result: dict[str, Any] = {
                "chunk_rows": chunk_rows,
                "chunk_MiB": round(chunk_rows * X[0].nbytes / MiB, 2),
                "order": order,
            }
            for where, array in (("local", local), ("bucket", remote)):
                view = LazyRows(zarr.open_array(array.store, mode="r"), memory_bytes=memory)
                batches = epoch_batches(len(X), batch, window, np.random.default_rng(0))
                before = server.requests()
                _, wall, cpu = timed(
                    lambda view=view, batches=batches: [view.read_rows(b) for b in batches]
                )
                result[f"{where}_rows_per_s"] = round(len(X) / wall, 1)
                result[f"{where}_cpu_s"] = round(cpu, 3)
                if where == "bucket":
                    gets = delta(server.requests(), before).get("GET", 0)
                    result["bucket_GETs"] = gets
                    result["bucket_MiB_fetched"] = round(gets * chunk_rows * X[0].nbytes / MiB, 1)
                    result["chunk_memory_MiB"] = round(view._reader.memory.nbytes / MiB, 1)
            result["bucket_over_local_time"] = round(
                result["local_rows_per_s"] / result["bucket_rows_per_s"], 2
            )
            rows.append(result)
    return rows


def bench_obstore(server: S3Server, X: np.ndarray, sizes: list[int]) -> dict | None:
    try:
        from obstore.store import S3Store
    except ImportError:
        return None
    import zarr
    from zarr.storage import FsspecStore, ObjectStore

    options = {"endpoint_url": server.endpoint}
    out = {}
    for chunk_rows in sizes:
        stores = {
            "fsspec (s3fs)": FsspecStore.from_url(
                f"s3://bench/X-{chunk_rows}.zarr", storage_options=options, read_only=True
            ),
            "fsspec (s3fs, max_concurrency=1)": FsspecStore.from_url(
                f"s3://bench/X-{chunk_rows}.zarr",
                storage_options={**options, "max_concurrency": 1},
                read_only=True,
            ),
            "obstore": ObjectStore(
                S3Store(
                    "bench",
                    prefix=f"X-{chunk_rows}.zarr",
                    endpoint=server.endpoint,
                    region="us-east-1",
                    client_options={"allow_http": True},
                ),
                read_only=True,
            ),
        }
        for name, store in stores.items():
            array = zarr.open_array(store, mode="r")
            n_chunks = -(-len(X) // chunk_rows)
            before = server.requests()
            walls = []
            for _ in range(3):
                _, wall, _ = timed(
                    lambda array=array, chunk_rows=chunk_rows, n_chunks=n_chunks: [
                        array[i * chunk_rows : (i + 1) * chunk_rows] for i in range(n_chunks)
                    ]
                )
                walls.append(wall)
            requests = sum(delta(server.requests(), before).values())
            assert np.array_equal(array[:], X)
            out[f"{name}, {chunk_rows} rows"] = {
                "chunks_per_s": round(n_chunks / min(walls), 1),
                "requests_per_chunk": round(requests / (3 * n_chunks), 2),
            }
    return out


def _warm(teacher: torch.nn.Module, x: np.ndarray) -> None:
    import s3fs  # noqa: F401
    import zarr  # noqa: F401

    import kdpipe.cache.tasks  # noqa: F401

    with torch.inference_mode():
        teacher(torch.from_numpy(x))


def bench_distributed(
    server: S3Server,
    options: dict,
    X: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...],
    chunk_rows: int,
) -> dict:
    import distributed
    import zarr
    from zarr.storage import FsspecStore

    url = "s3://bench/X-distributed.zarr"
    z = zarr.create_array(
        store=FsspecStore.from_url(url, storage_options=options),
        shape=X.shape,
        chunks=(chunk_rows, X.shape[1]),
        dtype=X.dtype,
    )
    z[...] = X
    X_remote = zarr.open_array(
        FsspecStore.from_url(url, storage_options=options, read_only=True), mode="r"
    )
    teacher = mlp(0, hidden)
    out: dict[str, Any] = {
        "rows": len(X),
        "chunk_rows": chunk_rows,
        "teacher": f"MLP 784-{'-'.join(map(str, hidden))}-10",
    }
    results = {}
    for n_workers in (1, 2, 1, 2):  # twice each, alternating
        with (
            distributed.LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            # not timed: every worker imports what a task needs and runs the teacher once
            client.run(_warm, teacher, X[:256])
            build_cache(
                teacher,
                X_remote[: 4 * chunk_rows],
                f"s3://bench/warm-{n_workers}.zarr",
                client=client,
                storage_options=options,
                chunk_rows=chunk_rows // 2,
                progress=False,
                overwrite=True,
            )
            load = os.getloadavg()
            cpu_before = sum(client.run(time.process_time).values())
            cache, wall, _cpu = timed(
                lambda: build_cache(
                    teacher,
                    X_remote,
                    "s3://bench/distributed.zarr",
                    y=y,
                    client=client,
                    storage_options=options,
                    chunk_rows=chunk_rows,
                    batch_size=256,
                    progress=False,
                    overwrite=True,
                    device="cpu",
                )
            )
            worker_cpu = sum(client.run(time.process_time).values()) - cpu_before
            threads = sorted(client.run(torch.get_num_threads).values())
            results.setdefault(n_workers, []).append(
                {
                    "wall_s": round(wall, 3),
                    "worker_cpu_s": round(worker_cpu, 3),
                    "cores_used": round(worker_cpu / wall, 2),
                    "torch_threads": threads,
                    "load_before": [round(v, 2) for v in load],
                }
            )
            assert cache.verify().ok
    out["runs"] = {str(k): v for k, v in results.items()}
    best = {k: min(r["wall_s"] for r in v) for k, v in results.items()}
    out["speedup_2_over_1"] = round(best[1] / best[2], 3)
    return out


def markdown(result: dict) -> str:
    b, lines = result["build"], []
    lines += [
        "# Object storage: a local S3 server (moto, its own process) against a local folder",
        "",
        f"- machine: {result['machine']}",
        f"- data: {result['data']}",
        load_line(tuple(result["load_before"]), tuple(result["load_after"])),
        "",
        "## Build (same teachers and data; median of alternating runs)",
        "",
        f"{b['rows']} rows, {b['teachers']}, chunk_rows {b['chunk_rows']} ({b['chunks']} chunks)",
        "",
        "| | local folder | bucket |",
        "|---|---|---|",
        f"| wall s | {b['local_wall_s']} | {b['bucket_wall_s']} |",
        f"| CPU s (this process) | {b['local_cpu_s']} | {b['bucket_cpu_s']} (+ server {b['server_cpu_s']}) |",
        f"| bytes written | {b['bytes_local']} | {b['bytes_bucket']} |",
        "",
        f"- wall ratio bucket / local: **{b['wall_ratio_bucket_over_local']}**",
        f"- requests of one build into the bucket: {b['requests_per_build']}",
        "",
        "## Random minibatches of cached logits (one epoch, all rows shuffled)",
        "",
        "| | rows/s | wall s | CPU s | requests |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['rows_per_s']} | {v['wall_s']} | {v['cpu_s']} | {v['requests']} |"
        for k, v in result["cache_reads"].items()
    ]
    lines += [
        "",
        (
            f"## X through LazyRows: chunk size against requests and memory (chunk memory {result['memory_MiB']} MiB,"
            f" X {result['X_MiB']} MiB, minibatches of {result['batch']})"
        ),
        "",
        (
            "| chunk rows | chunk MiB | order | bucket GETs | MiB fetched | chunk memory MiB | bucket rows/s |"
            " local rows/s | bucket/local time |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['chunk_rows']} | {r['chunk_MiB']} | {r['order']} | {r['bucket_GETs']} | {r['bucket_MiB_fetched']} |"
        f" {r['chunk_memory_MiB']} | {r['bucket_rows_per_s']} | {r['local_rows_per_s']} |"
        f" {r['bucket_over_local_time']} |"
        for r in result["chunk_sizes"]
    ]
    if result.get("obstore"):
        lines += [
            "",
            "## zarr's FsspecStore (s3fs) against its ObjectStore (obstore): whole-chunk reads",
            "",
            "| store, chunk | chunks/s (best of 3) | requests per chunk |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['chunks_per_s']} | {v['requests_per_chunk']} |"
            for k, v in result["obstore"].items()
        ]
    d = result["distributed"]
    lines += [
        "",
        "## Distributed build: 2 worker processes against 1 (one thread each; X and cache in the bucket)",
        "",
        f"{d['rows']} rows, {d['teacher']}, chunk_rows {d['chunk_rows']}",
        "",
        (
            "| workers | wall s | CPU s of the workers during the build | cores used (CPU / wall) | torch threads |"
            " load before |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for k, runs in d["runs"].items():
        for r in runs:
            lines.append(
                f"| {k} | {r['wall_s']} | {r['worker_cpu_s']} | {r['cores_used']} | {r['torch_threads']} |"
                f" {r['load_before']} |"
            )
    lines += ["", f"- speedup 2 workers over 1 (best of each): **{d['speedup_2_over_1']}**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating build runs of each kind"
    )
    parser.add_argument(
        "--only-distributed",
        action="store_true",
        help="only the 2-vs-1 worker build, into object_storage_distributed.json",
    )
    parser.add_argument(
        "--teacher-width",
        type=int,
        default=2048,
        help="hidden units of the distributed build's 2-layer teacher",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same single thread for every measurement, as each worker gets
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    rows = 1024 if args.quick else 8192
    X, y, source = fashion_or_random(rows)
    batch = 128
    sizes = [256, 1024] if args.quick else [256, 1024, 4096]
    memory = 8 * MiB
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        server = S3Server(tmp)
        try:
            import s3fs

            options = {"endpoint_url": server.endpoint}
            s3fs.S3FileSystem(**options).mkdir("bench")
            load_before = os.getloadavg()
            if args.only_distributed:
                X_big, y_big, _ = fashion_or_random(2 * rows)
                result = {
                    "machine": machine(),
                    "load_before": list(load_before),
                    "distributed": bench_distributed(
                        server, options, X_big, y_big, (args.teacher_width,) * 2, 512
                    ),
                    "load_after": list(os.getloadavg()),
                }
                write_results(
                    "object_storage_distributed",
                    result,
                    "```json\n" + json.dumps(result, indent=1) + "\n```\n",
                )
                return 0
            result: dict[str, Any] = {
                "machine": machine(),
                "data": f"{source}, {rows} rows",
                "batch": batch,
                "memory_MiB": memory // MiB,
                "X_MiB": round(X.nbytes / MiB, 1),
            }
            result["build"] = bench_build(
                server, options, X, y, tmp, 1 if args.quick else args.repeats
            )
            result["cache_reads"] = bench_cache_reads(server, options, tmp, batch)
            result["chunk_sizes"] = bench_chunk_sizes(server, options, X, tmp, batch, sizes, memory)
            result["obstore"] = bench_obstore(server, X, sizes)
            hidden = (256, 256) if args.quick else (args.teacher_width,) * 2
            X_big, y_big, _ = fashion_or_random(rows if args.quick else 2 * rows)
            result["distributed"] = bench_distributed(
                server, options, X_big, y_big, hidden, 256 if args.quick else 512
            )
            result["load_before"], result["load_after"] = list(load_before), list(os.getloadavg())
        finally:
            server.stop()
    write_results(
        "object_storage_quick" if args.quick else "object_storage", result, markdown(result)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
