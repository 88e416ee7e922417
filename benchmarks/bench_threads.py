"""Benchmark: torch's CPU thread count for small and large models, on a quiet and a busy machine.

Times one student training step (forward, distillation loss, backward, Adam) of a 2x30
and a 2x800 MLP (784 inputs, 10 classes, minibatch 128) and one teacher forward pass
(inference, 512 rows) of the same two models, at 1 and 2 torch threads, without and with
a competing busy process (one CPU-burning Python loop started by this script, killed
after; at most ``--busy-seconds``). Runs alternate between settings and the median of
``--repeats`` runs is kept. The ratio ``2 threads / 1 thread`` below 1 means the second
thread helps.

Writes ``benchmarks/results/threads.json`` and ``.md``; records the load average, which
other processes on a shared machine raise. Run ``nice -n 10 python benchmarks/bench_threads.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import load_line, machine, write_results
from kdpipe.losses import distillation_loss
from kdpipe.students import MLP

SIZES = {"2x30": (30, 30), "2x800": (800, 800)}
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def _step_timer(hidden: tuple[int, ...], kind: str, steps: int) -> float:
    """Seconds per training step (``kind="train"``) or per forward pass (``"forward"``)."""
    torch.manual_seed(0)
    model = MLP(n_features=784, n_classes=10, hidden_layer_sizes=list(hidden))
    rng = np.random.default_rng(0)
    rows = 128 if kind == "train" else 512
    x = torch.from_numpy(rng.random((rows, 784), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, rows))
    teacher = torch.from_numpy(rng.normal(size=(rows, 1, 10)).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def once() -> None:
        if kind == "forward":
            with torch.inference_mode():
                model(x)
            return
        opt.zero_grad(set_to_none=True)
        loss = distillation_loss(model(x), teacher, y, temperature=4.0, alpha=0.1)
        loss.backward()
        opt.step()

    for _ in range(max(3, steps // 10)):  # warm-up
        once()
    start = time.perf_counter()
    for _ in range(steps):
        once()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--steps-small", type=int, default=300, help="timed steps of the 2x30 model"
    )
    parser.add_argument(
        "--steps-large", type=int, default=30, help="timed steps of the 2x800 model"
    )
    parser.add_argument(
        "--busy-seconds", type=int, default=300, help="upper bound of the competing process's life"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = os.getloadavg()
    results: dict[str, list[float]] = {}
    for busy in (False, True):
        burner = None
        if busy:
            burner = subprocess.Popen(
                [sys.executable, "-c", BUSY.format(seconds=args.busy_seconds)]
            )
            time.sleep(0.5)
        try:
            for _ in range(args.repeats):
                for name, hidden in SIZES.items():
                    steps = args.steps_small if name == "2x30" else args.steps_large
                    for kind in ("train", "forward"):
                        for threads in (1, 2):
                            torch.set_num_threads(threads)
                            key = f"{name}|{kind}|{threads}|{'busy' if busy else 'quiet'}"
                            results.setdefault(key, []).append(_step_timer(hidden, kind, steps))
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    load_after = os.getloadavg()

    rows = []
    table = [
        "| model | pass | competing process | 1 thread (ms) | 2 threads (ms) | 2 / 1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in SIZES:
        for kind in ("train", "forward"):
            for busy in ("quiet", "busy"):
                one = float(np.median(results[f"{name}|{kind}|1|{busy}"]))
                two = float(np.median(results[f"{name}|{kind}|2|{busy}"]))
                rows.append(
                    {
                        "model": name,
                        "pass": kind,
                        "competing": busy == "busy",
                        "ms_1_thread": one * 1e3,
                        "ms_2_threads": two * 1e3,
                        "ratio_2_over_1": two / one,
                        "runs_1": [v * 1e3 for v in results[f"{name}|{kind}|1|{busy}"]],
                        "runs_2": [v * 1e3 for v in results[f"{name}|{kind}|2|{busy}"]],
                    }
                )
                table.append(
                    f"| {name} | {'training step (128 rows)' if kind == 'train' else 'forward (512 rows)'} | "
                    f"{'yes' if busy == 'busy' else 'no'} | {one * 1e3:.3f} | {two * 1e3:.3f} | {two / one:.2f} |"
                )
    info = machine()
    markdown = "\n".join(
        [
            "# torch threads: small and large models, with and without a competing process",
            "",
            (
                f"Written by `benchmarks/bench_threads.py` (median of {args.repeats} alternating runs; "
                f"{args.steps_small} steps of 2x30, {args.steps_large} of 2x800 per run)."
            ),
            "",
            *table,
            "",
            f"- {os.cpu_count()} CPUs, torch {info['torch']}, {info['platform']}",
            load_line(load_before, load_after),
            (
                "- the load average counts other processes on this shared machine too: 'no competing process'"
                " means none started by this script, not an idle machine"
            ),
            "",
        ]
    )
    write_results(
        "threads",
        {
            "rows": rows,
            "load_before": load_before,
            "load_after": load_after,
            "cpus": os.cpu_count(),
            **info,
        },
        markdown,
        args.out,
    )


if __name__ == "__main__":
    main()
