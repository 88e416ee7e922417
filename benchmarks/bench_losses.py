"""The distillation loss and its gradient: kdpipe against the textbook torch expression.

One minibatch step of the loss alone (forward and backward, no network): student logits
``(batch, C)`` that require grad, a teacher's logits, labels, ``T = 4``, ``alpha = 0.1``.
The floor is the expression a plain torch loop writes,
``(1 - alpha) T**2 kl_div(log_softmax(z / T), softmax(v / T)) + alpha cross_entropy(z, y)``,
through autograd; kdpipe is :func:`kdpipe.losses.distillation_loss` on the same tensors,
and :func:`kdpipe.losses.sparse_distillation_loss` on the top-k targets (uniform tail)
of the same logits at 5% of dense float16 bytes, whose floor is the same dense step.
Both gradients are checked against each other before timing. Reported: the median over
repeats of alternating runs, and the ratio to the floor in the same run, for C from 10
to 15,000 classes, with 1 torch thread.

Writes ``benchmarks/results/losses.json`` and ``.md`` (``--quick``: ``losses_quick.*``,
small sizes). Run ``python benchmarks/bench_losses.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kdpipe

from benchmarks._common import RESULTS, load_line, machine, write_results

T, ALPHA = 4.0, 0.1


def textbook(z: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The objective as a plain torch loop writes it (autograd does the gradient)."""
    soft = F.kl_div(F.log_softmax(z / T, dim=-1), F.softmax(v / T, dim=-1), reduction="batchmean")
    return (1 - ALPHA) * T**2 * soft + ALPHA * F.cross_entropy(z, y)


def step_seconds(loss_fn, z0: torch.Tensor) -> float:
    """Seconds of one forward plus backward, the mean of 5 steps."""
    start = time.perf_counter()
    for _ in range(5):
        loss_fn(z0.detach().requires_grad_(True)).backward()
    return (time.perf_counter() - start) / 5


def run(classes: list[int], batch: int, repeats: int) -> list[dict]:
    from kdpipe.cache import TopK
    from kdpipe.cache.sparse import reduce_logits
    from kdpipe.losses import distillation_loss, sparse_distillation_loss

    rows = []
    for n_classes in classes:
        g = torch.Generator().manual_seed(n_classes)
        v = torch.randn(batch, n_classes, generator=g) * 3
        z0 = torch.randn(batch, n_classes, generator=g)
        y = torch.randint(0, n_classes, (batch,), generator=g)
        k = max(1, (n_classes * 2 // 20 - 48) // 4)  # 5% of dense float16 bytes a row
        fns = {
            "textbook (floor)": partial(textbook, v=v, y=y),
            "kdpipe dense": partial(
                distillation_loss, teacher_logits=v, y=y, temperature=T, alpha=ALPHA
            ),
        }
        if k < n_classes:
            targets = reduce_logits(v.numpy(), TopK(k, tail="uniform")).to_torch("cpu")
            fns[f"kdpipe top-{k} uniform"] = partial(
                sparse_distillation_loss, targets=targets, y=y, temperature=T, alpha=ALPHA
            )
        grads = {}
        for name in ("textbook (floor)", "kdpipe dense"):
            z = z0.detach().requires_grad_(True)
            fns[name](z).backward()
            grads[name] = z.grad
        error = float((grads["kdpipe dense"] - grads["textbook (floor)"]).abs().max())
        scale = float(grads["textbook (floor)"].abs().max())
        assert error <= 1e-5 * scale + 1e-9, (n_classes, error, scale)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():  # untimed: first-call costs
            fn(z0.detach().requires_grad_(True)).backward()
        for _ in range(repeats):  # alternate, so drifting load hits every variant alike
            for name, fn in fns.items():
                times[name].append(step_seconds(fn, z0))
        floor = float(np.median(times["textbook (floor)"]))
        rows.append(
            {
                "classes": n_classes,
                "batch": batch,
                "gradient_max_abs_difference": error,
                "gradient_max_abs": scale,
                "steps": {
                    name: {
                        "seconds": t,
                        "median_ms": 1000 * float(np.median(t)),
                        "ratio": float(np.median(t)) / floor,
                    }
                    for name, t in times.items()
                },
            }
        )
        print(f"{n_classes} classes: {rows[-1]['steps']}", flush=True)
    return rows


def markdown(result: dict, load: str, quick: bool) -> str:
    lines = [
        "# The distillation loss and its gradient against the textbook torch expression",
        "",
        f"Machine: {result['machine']}; {result['when']}; shared with other jobs (timings are noisy).",
        load,
        "",
        (
            f"One step of the loss alone (forward and backward, no network), batch {result['batch']}, "
            f"T = {T:g}, alpha = {ALPHA:g}: median over {result['repeats']} alternating repeats of 5 "
            "steps each. 'ratio': to the textbook expression through autograd in the same run "
            "(`kl_div(log_softmax(z / T), softmax(v / T))` plus `cross_entropy`). The top-k targets "
            "keep 5% of dense float16 bytes a row. 'gradient difference': the largest absolute "
            "difference between kdpipe's dense gradient and the textbook one, against the largest "
            "gradient entry."
        ),
        "",
        "| classes | step | median ms | ratio to the textbook step | gradient difference |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for name, s in row["steps"].items():
            diff = (
                f"{row['gradient_max_abs_difference']:.1e} of {row['gradient_max_abs']:.1e}"
                if name == "kdpipe dense"
                else ""
            )
            lines.append(
                f"| {row['classes']} | {name} | {s['median_ms']:.3f} | {s['ratio']:.2f} | {diff} |"
            )
    lines.append("")
    if quick:
        lines.append("(--quick: a smoke run at small sizes; the figures are not the benchmark's.)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    classes, batch, repeats = (
        ([10, 200], 32, 2) if args.quick else ([10, 100, 1000, 5000, 15000], 128, 15)
    )
    before = os.getloadavg()
    rows = run(classes, batch, repeats)
    result = {
        "batch": batch,
        "repeats": repeats,
        "temperature": T,
        "alpha": ALPHA,
        "rows": rows,
        "machine": machine(),
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    name = "losses_quick" if args.quick else "losses"
    write_results(
        name, result, markdown(result, load_line(before, os.getloadavg()), args.quick), args.out
    )


if __name__ == "__main__":
    main()
