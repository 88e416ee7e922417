"""Views in the cache against online distillation, the replay cost, and bytes per view.

Three measurements, ratios within one run:

1. An epoch of a student trained from a views cache (``DistilledClassifier`` from a
   ``Views(count=8, augment=Shift(2))`` cache) against **online KD**: the same student,
   minibatches and loss, with the teacher run on each augmented minibatch. The teacher
   is a ConvNet whose forward pass costs >= 10x the student's (measured and recorded).
2. Replay cost: an epoch from that V=8 ``Shift(2)`` cache against an epoch from a plain
   cache of the same rows (the same estimator: only the views' regeneration, digest
   checks and view reads differ).
3. Bytes per view, dense float16 and top-k, projected to ImageNet-1k (1.28 M rows, 1,000
   classes), beside the sizes TinyViT and apple/ml-dr published (as quoted in issue 17).

Run: ``nice -n 10 python benchmarks/bench_views.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, load_line, machine, write_results

BATCH, LR, V = 128, 1e-3, 8
TEACHER = {"channels": (64, 128), "hidden": 256}
STUDENT = {"channels": (4, 8), "hidden": 16}
IMAGENET_ROWS, IMAGENET_CLASSES = 1_281_167, 1000
PUBLISHED = {  # bytes for ImageNet-1k, as issue 17 quotes them
    "TinyViT (seed + top-k, 300 epochs)": {"bytes": 16e9, "views": 300},
    "apple/ml-dr (top-10, ~65 B a view)": {"bytes": 33e9, "views": None},
}


def images(rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from kdpipe.datasets import load_fashion_mnist

        X, y = load_fashion_mnist(images=True)
        return np.ascontiguousarray(X[:rows]), y[:rows], "fashion-mnist train"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (rows, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, rows), "random"


def convnet(params: dict, seed: int) -> torch.nn.Module:
    from kdpipe.students import ConvNet

    torch.manual_seed(seed)
    return ConvNet(784, 10, sample_shape=(1, 28, 28), **params).eval()


def forward_seconds(module: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        module(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def online_epochs(X: np.ndarray, y: np.ndarray, teacher: torch.nn.Module, epochs: int) -> list[float]:
    """The same training with the teacher run on each augmented minibatch."""
    from kdpipe.augment import Shift, apply_views
    from kdpipe.losses import distillation_loss
    from kdpipe.rows import choose_views, to_model_dtype

    student = convnet(STUDENT, 1).train()
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    rng = np.random.default_rng(0)
    yt = torch.from_numpy(y.astype(np.int64))
    seconds = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for rows in np.array_split(rng.permutation(len(X)), -(-len(X) // BATCH)):
            views = choose_views(0, epoch, rows, V)
            x = torch.from_numpy(to_model_dtype(apply_views(Shift(2), X[rows], rows, views, seed=0)))
            with torch.no_grad():
                soft = teacher(x)
            loss = distillation_loss(student(x), soft, yt[rows], temperature=4.0, alpha=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def cached_epochs(X: np.ndarray, y: np.ndarray, cache, epochs: int) -> list[float]:
    from kdpipe import DistilledClassifier
    from kdpipe.students import ConvNet

    clf = DistilledClassifier(module=ConvNet, module_params=dict(STUDENT), max_epochs=epochs, batch_size=BATCH,
                              learning_rate=LR, random_state=0, device="cpu")
    clf.fit(X, y, teacher_logits=cache)
    return [r["seconds"] for r in clf.history_]


def bytes_per_view(classes: int, members: int = 1) -> dict[str, int]:
    """Stored bytes of one view: logits (dense float16, or a top-k record) plus its 8-byte input digest."""
    from kdpipe.cache.sparse import SparseLayout, TopK

    out = {"dense float16": members * classes * 2 + 8}
    for k, grid in ((10, (16.0, 8.0, 4.0, 2.0, 1.0)), (10, (1.0,))):
        layout = SparseLayout(TopK(k=k, temperatures=grid), "float16", classes, members)
        out[f"top-{k} float16, {len(grid)}-temperature tail"] = layout.bytes_per_row + 8
    return out


def run(tmp: Path, rows: int, epochs: int) -> dict:
    import kdpipe
    from kdpipe.augment import Shift

    X, y, source = images(rows)
    teacher = convnet(TEACHER, 0)
    probe = torch.from_numpy(X[:BATCH].astype(np.float32) / 255)
    cost = forward_seconds(teacher, probe) / forward_seconds(convnet(STUDENT, 1), probe)
    before = os.getloadavg()
    start = time.perf_counter()
    views = kdpipe.build_cache(teacher, X, tmp / "views.zarr", y=y, views=kdpipe.Views(V, Shift(2), 0),
                               dtype="float16", chunk_rows=1024, progress=False, device="cpu")
    build_views = time.perf_counter() - start
    start = time.perf_counter()
    plain = kdpipe.build_cache(teacher, X, tmp / "plain.zarr", y=y, dtype="float16", chunk_rows=1024,
                               progress=False, device="cpu")
    build_plain = time.perf_counter() - start
    online = online_epochs(X, y, teacher, epochs)
    from_views = cached_epochs(X, y, views, epochs)
    from_plain = cached_epochs(X, y, plain, epochs)
    after = os.getloadavg()
    per_view = bytes_per_view(IMAGENET_CLASSES)
    projection = {name: {str(v): b * v * IMAGENET_ROWS for v in (1, 8, 50, 300)} for name, b in per_view.items()}
    published = {
        name: {"bytes": p["bytes"], "bytes_per_view": (p["bytes"] / (IMAGENET_ROWS * p["views"])) if p["views"] else 65}
        for name, p in PUBLISHED.items()
    }
    med = statistics.median
    return {
        "machine": machine(), "data": source, "rows": rows, "epochs": epochs, "views": V,
        "teacher": TEACHER, "student": STUDENT, "teacher_over_student_forward": cost,
        "build_seconds": {"views": build_views, "plain": build_plain},
        "epoch_seconds": {"online": online, "views_cache": from_views, "plain_cache": from_plain},
        "views_over_online": med(from_views) / med(online),
        "views_over_plain": med(from_views) / med(from_plain),
        "bytes_per_view_1000_classes": per_view,
        "imagenet_projection_bytes": projection,
        "published": published,
        "cache_bytes_on_disk": {"views": views.info()["bytes_on_disk"], "plain": plain.info()["bytes_on_disk"]},
        "load_before": before, "load_after": after,
    }


def markdown(r: dict) -> str:
    med = statistics.median
    e = r["epoch_seconds"]
    lines = [
        "# Views in the cache (benchmarks/bench_views.py)", "",
        f"- data: {r['data']}, {r['rows']} uint8 rows (1, 28, 28); {r['epochs']} epochs; V = {r['views']} views of Shift(2)",
        (
            f"- teacher ConvNet {r['teacher']}, student ConvNet {r['student']}: teacher forward = "
            f"{r['teacher_over_student_forward']:.1f}x the student's"
        ),
        f"- {r['machine']}",
        load_line(tuple(r["load_before"]), tuple(r["load_after"])), "",
        "| epoch | median seconds | ratio |", "| --- | --- | --- |",
        f"| online KD (teacher on each augmented minibatch) | {med(e['online']):.3f} | 1 |",
        f"| from the V=8 views cache | {med(e['views_cache']):.3f} | {r['views_over_online']:.3f} of online (target <= 0.5) |",
        f"| from a plain cache of the same rows | {med(e['plain_cache']):.3f} | views cache = {r['views_over_plain']:.3f}x plain (target <= 1.10) |",
        "",
        f"Building: views cache {r['build_seconds']['views']:.1f} s (V = 8 teacher passes), plain {r['build_seconds']['plain']:.1f} s.",
        "",
        "| stored per view, 1,000 classes, one teacher | bytes | ImageNet-1k, V = 8 | V = 50 | V = 300 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, b in r["bytes_per_view_1000_classes"].items():
        p = r["imagenet_projection_bytes"][name]
        lines.append(f"| kdpipe {name} + digest | {b} | {p['8'] / 1e9:.1f} GB | {p['50'] / 1e9:.1f} GB | {p['300'] / 1e9:.1f} GB |")
    for name, p in r["published"].items():
        lines.append(f"| {name} (published) | {p['bytes_per_view']:.0f} | | | {p['bytes'] / 1e9:.0f} GB in all |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, epochs = (512, 2) if args.quick else (args.rows, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), rows, epochs)
    write_results("views_quick" if args.quick else "views", result, markdown(result), folder=args.out)


if __name__ == "__main__":
    main()
