"""Benchmark of augmented views: an epoch from a views cache against online KD and a plain cache; bytes a view.

1. **Against online KD.** Seconds per epoch of a ConvNet student (channels 8-16, hidden
   32) trained by ``DistilledClassifier.fit`` from a ``Views(count=8, augment=Shift(2))``
   cache, against online distillation: a plain torch loop that, for every minibatch, makes
   the ``Shift(2)`` views (the same :func:`kdpipe.augment.apply_views`), runs the teacher
   (a ConvNet 64-128, hidden 128) on them and
   trains the same student on the same loss (:func:`kdpipe.losses.distillation_loss`,
   same T, alpha, Adam, batch size). The teacher's forward cost over the student's is
   recorded twice: multiply-accumulates counted per layer, and measured forward seconds.
   Target: views-cache epoch / online epoch <= 0.5. The cache's build time is recorded
   too, with the number of epochs after which building it once is cheaper than online KD.
2. **Replay cost.** The same fit from the V=8 ``Shift(2)`` cache against a fit from a
   plain cache (one unaugmented view) of the same rows: target <= 1.10. Regenerating each
   minibatch's views and checking their digests is the difference.
3. **Bytes per view.** Dense float16 and ``TopK(10)`` float16 caches with views, built at
   ImageNet's width (1,000 classes, a random linear teacher over the Fashion-MNIST images),
   at two view counts: bytes per view = (bytes on disk at V=6 - at V=2) / (rows x 4),
   bytes per row (row digests, labels, metadata) = the rest. Projected to 1.28 M rows x V
   views beside TinyViT's (16 GB for ImageNet-1k x 300 epochs: top-10 int16 classes +
   fp16 values and a 4-byte seed per image-epoch) and apple/ml-dr's (33 GB for ImageNet,
   about 65 bytes a view, top-10).

Each epoch figure is the median over runs with each run's first epoch dropped; online KD
and the plain-cache fit run twice per repeat, and the second copy's ratio is what the
machine's noise alone gives (the A/A rows). Writes ``benchmarks/results/views.json`` and
``.md`` (``--quick``: ``views_quick.*``, tiny sizes, a smoke run); ``--out DIR`` writes
there instead. Uses Fashion-MNIST when installed, random images otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, load_line, write_results
from bench_images import images

BATCH, LR, T, ALPHA, V, SEED = 128, 1e-3, 4.0, 0.1, 8, 0
TEACHER = {"channels": (64, 128), "hidden": 128}
STUDENT = {"channels": (8, 16), "hidden": 32}
IMAGENET_ROWS, IMAGENET_CLASSES = 1_281_167, 1000
PUBLISHED = {  # name: (bytes, views per image, what)
    "TinyViT (ImageNet-1k, 300 epochs, top-10 int16+fp16, 4-byte seed)": (16e9, 300, "published"),
    "apple/ml-dr (ImageNet, top-10, ~65 B a view)": (33e9, None, "published"),
}


def convnet(params: dict) -> torch.nn.Module:
    from kdpipe.students import ConvNet

    return ConvNet(784, 10, sample_shape=(1, 28, 28), **params)


def forward_macs(model: torch.nn.Module) -> int:
    """Multiply-accumulates of one image's forward pass: Conv2d and Linear layers, counted by hooks."""
    total = [0]

    def hook(layer, inputs, output):
        if isinstance(layer, torch.nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            total[0] += output[0].numel() * k
        else:
            total[0] += layer.in_features * layer.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return total[0]


def forward_seconds(model: torch.nn.Module, repeats: int = 5) -> float:
    """Median seconds of one eval forward of a minibatch of BATCH images."""
    x = torch.rand(BATCH, 1, 28, 28)
    times = []
    with torch.no_grad():
        model.eval()(x)
        for _ in range(repeats):
            tick = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - tick)
    return float(np.median(times))


def online_kd(X: np.ndarray, y: np.ndarray, teacher: torch.nn.Module, epochs: int) -> list[float]:
    """Seconds per epoch of online KD: each minibatch's Shift(2) views, the teacher on them, a student step."""
    from kdpipe.augment import Shift, apply_views
    from kdpipe.losses import distillation_loss

    torch.manual_seed(0)
    student = convnet(STUDENT)
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    labels = torch.from_numpy(y)
    rng = np.random.default_rng(0)
    teacher.eval()
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        student.train()
        total = torch.zeros(())
        for idx in np.array_split(rng.permutation(len(X)), -(-len(X) // BATCH)):
            views = apply_views(Shift(2), X[idx], idx, epoch % V, SEED)  # uint8 (b, 1, 28, 28)
            xb = torch.from_numpy(views).float() / 255
            with torch.no_grad():
                target = teacher(xb)  # (b, classes)
            loss = distillation_loss(student(xb), target, labels[idx], temperature=T, alpha=ALPHA)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        float(total)
        seconds.append(time.perf_counter() - start)
    return seconds


def cached_fit(X: np.ndarray, y: np.ndarray, cache, epochs: int) -> list[float]:
    from kdpipe import DistilledClassifier
    from kdpipe.students import ConvNet

    clf = DistilledClassifier(
        module=ConvNet,
        module_params=dict(STUDENT),
        max_epochs=epochs,
        batch_size=BATCH,
        learning_rate=LR,
        temperature=T,
        alpha=ALPHA,
        random_state=0,
        device="cpu",
    )
    clf.fit(X, y, teacher_logits=cache)
    return [r["seconds"] for r in clf.history_]


def epochs_part(tmp: Path, rows: int, epochs: int, repeats: int) -> dict:
    from kdpipe import Views, build_cache
    from kdpipe.augment import Shift

    X, y, source = images(rows)
    torch.manual_seed(0)
    teacher, student = convnet(TEACHER).eval(), convnet(STUDENT).eval()
    cost = {
        "teacher_macs": forward_macs(teacher),
        "student_macs": forward_macs(student),
        "teacher_forward_s_per_batch": forward_seconds(teacher),
        "student_forward_s_per_batch": forward_seconds(student),
    }
    cost["mac_ratio"] = cost["teacher_macs"] / cost["student_macs"]
    cost["time_ratio"] = cost["teacher_forward_s_per_batch"] / cost["student_forward_s_per_batch"]
    tick = time.perf_counter()
    views_cache = build_cache(
        teacher,
        X,
        tmp / "views.zarr",
        y=y,
        views=Views(count=V, augment=Shift(2), seed=SEED),
        progress=False,
        device="cpu",
    )
    build_views_s = time.perf_counter() - tick
    tick = time.perf_counter()
    plain_cache = build_cache(teacher, X, tmp / "plain.zarr", y=y, progress=False, device="cpu")
    build_plain_s = time.perf_counter() - tick

    keys = [
        "online KD (teacher on every minibatch)",
        "online KD, again",
        f"fit from the V={V} Shift(2) views cache",
        "fit from the plain cache",
        "fit from the plain cache, again",
    ]
    online_kd(X[: 4 * BATCH], y[: 4 * BATCH], teacher, 1)  # warm-up: first-call costs excluded
    epoch_s: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(repeats):
        epoch_s[keys[0]] += online_kd(X, y, teacher, epochs)[1:]
        epoch_s[keys[2]] += cached_fit(X, y, views_cache, epochs)[1:]
        epoch_s[keys[3]] += cached_fit(X, y, plain_cache, epochs)[1:]
        epoch_s[keys[1]] += online_kd(X, y, teacher, epochs)[1:]
        epoch_s[keys[4]] += cached_fit(X, y, plain_cache, epochs)[1:]
    median = {k: float(np.median(v)) for k, v in epoch_s.items()}
    online, plain = median[keys[0]], median[keys[3]]
    saved = online - median[keys[2]]
    return {
        "rows": rows,
        "data": source,
        "batch_size": BATCH,
        "epochs_per_run": epochs,
        "runs": repeats,
        "views": V,
        "temperature": T,
        "alpha": ALPHA,
        "teacher": TEACHER,
        "student": STUDENT,
        "cost": cost,
        "build_seconds": {"views cache": build_views_s, "plain cache": build_plain_s},
        "epoch_seconds": epoch_s,
        "median_epoch_seconds": median,
        "ratio_vs_online": {k: median[k] / online for k in keys[:3]},
        "ratio_vs_plain_cache": {k: median[k] / plain for k in keys[2:]},
        "break_even_epochs": build_views_s / saved if saved > 0 else None,
    }


def replay_part(tmp: Path, rows: int, epochs: int, repeats: int) -> dict:
    """Only the replay cost, with more interleaved runs: caches scored by a student-sized teacher
    (what the logits are does not change the cost of reading them), fits alternating."""
    from kdpipe import Views, build_cache
    from kdpipe.augment import Shift

    X, y, source = images(rows)
    torch.manual_seed(0)
    teacher = convnet(STUDENT).eval()
    views_cache = build_cache(
        teacher,
        X,
        tmp / "replay-views.zarr",
        y=y,
        views=Views(count=V, augment=Shift(2), seed=SEED),
        progress=False,
        device="cpu",
    )
    plain_cache = build_cache(
        teacher, X, tmp / "replay-plain.zarr", y=y, progress=False, device="cpu"
    )
    keys = [
        f"fit from the V={V} Shift(2) views cache",
        "fit from the plain cache",
        "fit from the plain cache, again",
    ]
    epoch_s: dict[str, list[float]] = {k: [] for k in keys}
    cached_fit(X[: 2 * BATCH], y[: 2 * BATCH], plain_cache[: 2 * BATCH], 1)  # warm-up
    for _ in range(repeats):
        epoch_s[keys[1]] += cached_fit(X, y, plain_cache, epochs)[1:]
        epoch_s[keys[0]] += cached_fit(X, y, views_cache, epochs)[1:]
        epoch_s[keys[2]] += cached_fit(X, y, plain_cache, epochs)[1:]
    median = {k: float(np.median(v)) for k, v in epoch_s.items()}
    return {
        "rows": rows,
        "data": source,
        "batch_size": BATCH,
        "epochs_per_run": epochs,
        "runs": repeats,
        "views": V,
        "epoch_seconds": epoch_s,
        "median_epoch_seconds": median,
        "ratio_vs_plain_cache": {k: median[k] / median[keys[1]] for k in keys},
    }


def replay_markdown(r: dict) -> str:
    e = r["replay"]
    return "\n".join(
        [
            "# Augmented views: replay cost, an epoch from a views cache against a plain cache (target <= 1.10)",
            "",
            f"Machine: {r['machine']}; {r['when']}. Compare with the A/A row (the plain-cache fit again).",
            "",
            load_line(r["load_average_1_5_15"]["before"], r["load_average_1_5_15"]["after"]),
            "",
            (
                f"{e['rows']} images (1, 28, 28) uint8 ({e['data']}), batch {e['batch_size']}, ConvNet "
                f"{STUDENT['channels']} student, {e['runs']} interleaved runs of {e['epochs_per_run']} epochs each "
                "(first epoch of each run dropped); caches scored by a student-sized teacher."
            ),
            "",
            "| variant | median s/epoch | / plain cache |",
            "|---|---|---|",
            *[
                f"| {k} | {v:.3f} | {e['ratio_vs_plain_cache'][k]:.3f} |"
                for k, v in e["median_epoch_seconds"].items()
            ],
            "",
        ]
    )


def bytes_part(tmp: Path, rows: int) -> dict:
    """Bytes on disk of dense float16 and TopK(10) caches with views at 1,000 classes, at V=2 and V=6."""
    from kdpipe import TopK, Views, build_cache
    from kdpipe.augment import Shift

    X, y, source = images(rows)
    torch.manual_seed(0)
    linear = torch.nn.Linear(784, IMAGENET_CLASSES)
    with torch.no_grad():
        linear.weight.mul_(20)  # logits spread over several units, as a trained teacher's are
    teacher = torch.nn.Sequential(torch.nn.Flatten(), linear).eval()
    counts = (2, 6)
    out: dict = {
        "rows": rows,
        "data": source,
        "classes": IMAGENET_CLASSES,
        "view_counts": list(counts),
        "formats": {},
    }
    for name, sparse in (("dense float16", None), ("top-10 float16 (TopK(10))", TopK(10))):
        sizes = {}
        for count in counts:
            cache = build_cache(
                teacher,
                X,
                tmp / f"bytes-{sparse is None}-{count}.zarr",
                y=y,
                dtype="float16",
                sparse=sparse,
                views=Views(count=count, augment=Shift(2), seed=SEED),
                chunk_rows=rows,
                progress=False,
                device="cpu",
            )
            assert cache.verify().ok
            sizes[count] = cache.info()["bytes_on_disk"]
        per_view = (sizes[counts[1]] - sizes[counts[0]]) / (rows * (counts[1] - counts[0]))
        per_row = sizes[counts[0]] / rows - counts[0] * per_view
        out["formats"][name] = {
            "bytes_on_disk": {str(k): v for k, v in sizes.items()},
            "bytes_per_view": per_view,
            "bytes_per_row_besides_views": per_row,
            "imagenet_gb": {
                str(v): (per_row + v * per_view) * IMAGENET_ROWS / 1e9 for v in (1, 8, 50, 300, 400)
            },
        }
    return out


def markdown(r: dict) -> str:
    e = r["epochs"]
    c = e["cost"]
    lines = [
        "# Augmented views: an epoch from a views cache against online KD and a plain cache; bytes a view",
        "",
        f"Machine: {r['machine']}; {r['when']}. Compare each ratio with its A/A row (the baseline again).",
        "",
        load_line(r["load_average_1_5_15"]["before"], r["load_average_1_5_15"]["after"]),
        "",
        "## Seconds per epoch",
        "",
        (
            f"{e['rows']} images (1, 28, 28) uint8 ({e['data']}), batch {e['batch_size']}, T={e['temperature']:g}, "
            f"alpha={e['alpha']:g}, {e['runs']} runs of {e['epochs_per_run']} epochs (first epoch of each run dropped). "
            f"Teacher ConvNet {e['teacher']['channels']}, hidden {e['teacher']['hidden']}; student ConvNet "
            f"{e['student']['channels']}, hidden {e['student']['hidden']}. Teacher / student forward cost: "
            f"{c['mac_ratio']:.1f}x in multiply-accumulates ({c['teacher_macs']:,} / {c['student_macs']:,} an image), "
            f"{c['time_ratio']:.1f}x in measured seconds (a minibatch of {e['batch_size']})."
        ),
        "",
        "| variant | median s/epoch | / online KD (target <= 0.5) | / plain cache (target <= 1.10) |",
        "|---|---|---|---|",
    ]
    for k, v in e["median_epoch_seconds"].items():
        on = e["ratio_vs_online"].get(k)
        pl = e["ratio_vs_plain_cache"].get(k)
        lines.append(
            f"| {k} | {v:.3f} | {'' if on is None else f'{on:.3f}'} | {'' if pl is None else f'{pl:.3f}'} |"
        )
    b = e["build_seconds"]
    be = e["break_even_epochs"]
    lines += [
        "",
        (
            f"Building the V={e['views']} cache took {b['views cache']:.1f} s (the plain cache "
            f"{b['plain cache']:.1f} s): it is paid back after "
            f"{'never' if be is None else f'{be:.1f}'} epochs against online KD."
        ),
        "",
    ]
    s = r["bytes"]
    lines += [
        "## Bytes per view, and ImageNet-scale projection",
        "",
        (
            f"Caches of {s['rows']} rows at {s['classes']} classes ({s['data']} images, a random linear teacher), "
            f"with Shift(2) views, at V = {s['view_counts'][0]} and {s['view_counts'][1]}, one chunk; bytes per view = "
            "difference of bytes on disk / (rows x extra views): logits (or top-k record) plus the 8-byte digest "
            f"of each view. Projection: {IMAGENET_ROWS:,} rows x (bytes per row + V x bytes per view)."
        ),
        "",
        "| format | bytes / view | bytes / row besides views | GB at V=1 | V=8 | V=50 | V=300 | V=400 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in s["formats"].items():
        gb = f["imagenet_gb"]
        lines.append(
            f"| kdpipe, {name} | {f['bytes_per_view']:.1f} | {f['bytes_per_row_besides_views']:.1f} | "
            + " | ".join(f"{gb[k]:.2f}" for k in ("1", "8", "50", "300", "400"))
            + " |"
        )
    lines += [
        "| TinyViT (published: 16 GB at 300 views; 10 x (2+2) + 4 = 44 bytes a view) | 44 | | | | | 16 | |",
        "| apple/ml-dr (published: 33 GB for ImageNet, ~65 bytes a view, top-10) | ~65 | | | | | | 33 (at ~400) |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--rows", type=int, default=2000, help="images of the epoch benchmark")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per run (the first is dropped)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--bytes-rows", type=int, default=1024, help="rows of the bytes-per-view caches"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument(
        "--replay-only",
        action="store_true",
        help="only the replay cost, with more interleaved runs (views_replay.*)",
    )
    args = parser.parse_args()
    if args.replay_only:
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            result = {
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                f"torch threads {torch.get_num_threads()}",
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "replay": replay_part(Path(tmp), args.rows, args.epochs, args.repeats),
            }
        result["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
        write_results("views_replay", result, replay_markdown(result), folder=args.out)
        return
    if args.quick:
        args.rows, args.epochs, args.repeats, args.bytes_rows = BATCH // 2, 2, 1, 32
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch threads {torch.get_num_threads()}",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "quick": args.quick,
            "epochs": epochs_part(Path(tmp), args.rows, args.epochs, args.repeats),
            "bytes": bytes_part(Path(tmp), args.bytes_rows),
        }
    result["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    write_results(
        "views_quick" if args.quick else "views", result, markdown(result), folder=args.out
    )


if __name__ == "__main__":
    main()
