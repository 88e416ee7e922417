"""Run chunk tasks on Dask's threaded scheduler or on a ``dask.distributed`` cluster."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from kdpipe.cache.tasks import ChunkJob

__all__ = ["Task", "run_tasks"]


@dataclass(frozen=True)
class Task:
    """One call ``job.<method>(arg)`` covering the chunk of rows ``[start, stop)``."""

    key: str
    method: str  # "compute" or "check"
    arg: Any  # chunk index or ChunkRecord
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def _call(job: ChunkJob, method: str, arg: Any, x: Any = None) -> Any:
    return getattr(job, method)(arg, x)


def _identity(value: Any) -> Any:
    return value


def run_tasks(
    job: ChunkJob,
    tasks: Sequence[Task],
    *,
    client: Any = None,
    num_workers: int = 1,
    progress: bool = True,
    desc: str = "kdpipe",
    read_block: Callable[[Task], Any] | None = None,
) -> list[Any]:
    """Run ``tasks`` and return their results in order; the first failure is re-raised.

    ``read_block(task)`` gives the rows of ``task`` when the job cannot read them itself
    (in-memory data on a distributed cluster): blocks are then sent just in time, a few
    tasks ahead, so the cluster never holds the whole input.

    On a cluster nothing a task needs is scattered: the job is the result of a task and
    each chunk's rows are an argument of its task, both held by the scheduler, so when a
    worker dies the scheduler recomputes what it held and reruns its chunks in flight on
    the workers that remain (scattered data lives on its workers only: "lost scattered
    data, which can't be recovered").
    """
    if not tasks:
        return []
    with tqdm(
        total=sum(t.rows for t in tasks),
        unit="row",
        unit_scale=True,
        desc=desc,
        disable=not progress,
    ) as bar:
        if client is None:
            return _run_threads(job, tasks, num_workers, bar)
        return _run_distributed(job, tasks, client, bar, read_block)


def _run_threads(job: ChunkJob, tasks: Sequence[Task], num_workers: int, bar: tqdm) -> list[Any]:
    if num_workers == 1:
        return _run_inline(job, tasks, bar)
    import dask
    from dask.callbacks import Callback

    rows = {t.key: t.rows for t in tasks}

    class _Progress(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            bar.update(rows.get(key, 0))

    delayed = [
        dask.delayed(_call, pure=False)(job, t.method, t.arg, dask_key_name=t.key) for t in tasks
    ]
    with _Progress():
        return list(dask.compute(*delayed, scheduler="threads", num_workers=num_workers))


def _run_inline(job: ChunkJob, tasks: Sequence[Task], bar: tqdm) -> list[Any]:
    """One worker: run every task in the calling thread, in order, without a task graph.

    torch's OpenMP pool is measurably slower (~15% on 2 CPU cores) when driven from a
    freshly started thread, so the teachers run here. Storing a chunk (hash, write,
    record) is not moved to a background thread either: on a machine whose cores the
    forward passes already keep busy, a writer thread overlapping them cost ~6% per chunk
    against ~1.4% for storing in line (``benchmarks/bench_cache.py``, 2 CPUs).
    """
    results = []
    for task in tasks:
        results.append(_call(job, task.method, task.arg))
        bar.update(task.rows)
    return results


def _run_distributed(
    job: ChunkJob,
    tasks: Sequence[Task],
    client: Any,
    bar: tqdm,
    read_block: Callable[[Task], Any] | None,
) -> list[Any]:
    import uuid

    import dask
    from distributed import as_completed

    # The job (the teachers) and each chunk's rows go into the task graph on purpose, once
    # each: dask's warning about large graphs recommends scattering them, which is what a
    # lost worker cannot recover from
    quiet = dask.config.set({"distributed.admin.large-graph-warning-threshold": "1 PiB"})
    window = 2 * max(1, sum(client.nthreads().values()))
    results: dict[str, Any] = {}
    rows = {t.key: t.rows for t in tasks}
    todo = list(reversed(tasks))
    with quiet:
        # a task's result: fetched once by each worker that needs it, recomputed if its holder dies
        job_future = client.submit(_identity, job, key=f"kdpipe-job-{uuid.uuid4().hex}", pure=False)

    def submit() -> Any:
        t = todo.pop()
        x = None if read_block is None else read_block(t)
        with quiet:
            return client.submit(_call, job_future, t.method, t.arg, x, key=t.key, pure=False)

    running = as_completed([submit() for _ in range(min(window, len(todo)))])
    try:
        for future in running:
            results[future.key] = future.result()
            bar.update(rows[future.key])
            if todo:
                running.add(submit())
    except BaseException:
        for future in list(running.futures):
            future.cancel()
        raise
    return [results[t.key] for t in tasks]
