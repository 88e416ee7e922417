"""Can an MLP teacher open a gap on Fashion-MNIST? Regularized 2x1200 nets against a 2x800.

Experiment 1 of Hinton et al. (2015) needs a "big regularized" teacher clearly better
than the 2x800 student trained on hard labels: on MNIST their 2x1200 (dropout, 2-pixel
jitter) made 67 test errors against the student's 146. This script asks whether any of
a few such recipes gives an MLP that much better than the 2x800 on Fashion-MNIST, on the
splits of ``kdpipe reproduce`` (55,000 training rows, its 5,000 validation rows), and
how the answer moves with epochs. Each recipe trains one net (seed ``--seed``) for
``--epochs`` epochs with Adam (lr 1e-3, batch 128, the profile's) and records its
validation accuracy after every epoch. The recipes, fixed before any run:

- the 2x800 on hard labels with no regularization: experiment 1's student, the reference;
- 2x1200 with dropout 0.2 (the ``cpu`` profile's teacher members, without its jitter);
- the same on 2-pixel shifts, a fresh view every epoch, half of the views shifted (the
  ``cpu`` profile's mix of rows and jittered copies);
- 2x1200 with the paper's dropout (0.5 on hidden units, 0.2 on the inputs) on the same
  shifts;
- 2x1200 with dropout 0.2 on the shifts and left-right flips (a label-preserving change
  for clothes, not for digits).

Only validation rows are scored: nothing here reads the test rows. Writes
``mlp_teachers.json`` (every recipe's settings, accuracy per epoch and seconds) and
``mlp_teachers.png`` (validation accuracy against epochs) into ``--out`` (default
``kdpipe-results/fashion_mnist_mlp_teachers``) and prints their paths; ``--quiet``
silences the progress lines; ``--jobs 2`` trains two recipes at once, one torch thread
each. Needs the Fashion-MNIST idx files (Debian's ``dataset-fashion-mnist``;
``--data-dir`` names another folder). About 25 minutes with ``--jobs 2`` on 2 cores::

    python examples/fashion_mnist_mlp_teachers.py --epochs 40 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from kdpipe.augment import Augmentation, Compose, HFlip, Shift, apply_views
from kdpipe.cli import HelpFormatter
from kdpipe.datasets import FASHION_MNIST_DIR
from kdpipe.reproduce.data import load_splits
from kdpipe.reproduce.runner import _git_commit
from kdpipe.students import MLP

REFERENCE = "2x800, no regularization"
RECIPES: dict[str, dict[str, Any]] = {
    REFERENCE: {"hidden": (800, 800), "dropout": 0.0, "input_dropout": 0.0, "augment": None},
    "2x1200, dropout 0.2": {
        "hidden": (1200, 1200),
        "dropout": 0.2,
        "input_dropout": 0.0,
        "augment": None,
    },
    "2x1200, dropout 0.2, shifts": {
        "hidden": (1200, 1200),
        "dropout": 0.2,
        "input_dropout": 0.0,
        "augment": Shift(2, p=0.5),
    },
    "2x1200, dropout 0.5 and 0.2 on inputs, shifts": {
        "hidden": (1200, 1200),
        "dropout": 0.5,
        "input_dropout": 0.2,
        "augment": Shift(2, p=0.5),
    },
    "2x1200, dropout 0.2, shifts and flips": {
        "hidden": (1200, 1200),
        "dropout": 0.2,
        "input_dropout": 0.0,
        "augment": Compose((Shift(2, p=0.5), HFlip(0.5))),
    },
}
BATCH, LEARNING_RATE = 128, 1e-3


def train_recipe(name: str, splits: Any, epochs: int, seed: int, quiet: bool) -> dict[str, Any]:
    """Train one recipe's net; its validation accuracy after every epoch, and its seconds.

    Epoch ``e`` shows row ``r`` its view ``e`` of stream ``(seed, r, e)``
    (:func:`kdpipe.augment.apply_views`), so a rerun sees the same views."""
    torch.set_num_threads(1)
    recipe = RECIPES[name]
    augment: Augmentation | None = recipe["augment"]
    torch.manual_seed(seed)
    n_features = splits.X_train.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Dropout(recipe["input_dropout"]),
        MLP(n_features, splits.n_classes, recipe["hidden"], dropout=recipe["dropout"]),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    images = splits.X_train.reshape(-1, 1, *splits.image_shape)
    labels = torch.from_numpy(splits.y_train)
    X_val = torch.from_numpy(splits.X_val)
    rng = np.random.default_rng(seed)
    accuracy: list[float] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(images))
        for i in range(0, len(order), BATCH):
            idx = np.sort(order[i : i + BATCH])
            x = apply_views(augment, images[idx], idx, epoch, seed)
            loss = F.cross_entropy(net(torch.from_numpy(x).reshape(len(idx), -1)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            predicted = net(X_val).argmax(1).numpy()
        accuracy.append(float((predicted == splits.y_val).mean()))
        if not quiet:
            print(
                f"{name}: epoch {epoch + 1}/{epochs}, validation {accuracy[-1]:.4f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    best = int(np.argmax(accuracy))
    return {
        "hidden_layer_sizes": list(recipe["hidden"]),
        "dropout": recipe["dropout"],
        "input_dropout": recipe["input_dropout"],
        "augment": None if augment is None else augment.to_dict(),
        "validation_accuracy": accuracy,
        "best": accuracy[best],
        "best_epoch": best + 1,
        "last": accuracy[-1],
        "seconds": time.perf_counter() - start,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results["recipes"].items():
        acc = r["validation_accuracy"]
        style: dict[str, Any] = {"color": "black", "linewidth": 2.5} if name == REFERENCE else {}
        ax.plot(range(1, len(acc) + 1), acc, label=name, **style)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"MLPs on {results['settings']['dataset']}: one net per recipe")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--out",
        default="kdpipe-results/fashion_mnist_mlp_teachers",
        help="folder for the results and the plot",
    )
    parser.add_argument("--epochs", type=int, default=40, help="epochs of every recipe")
    parser.add_argument(
        "--train-rows",
        type=int,
        default=None,
        help="training rows (default: all 55,000 that validation leaves)",
    )
    parser.add_argument(
        "--validation-rows", type=int, default=5000, help="training rows held out for validation"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every net and its views")
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=list(RECIPES),
        default=list(RECIPES),
        metavar="RECIPE",
        help="recipes to train (default: all)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="recipes trained at once")
    parser.add_argument(
        "--data-dir", default=FASHION_MNIST_DIR, help="folder of the Fashion-MNIST idx files"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    for flag, value, least in (("--epochs", args.epochs, 1), ("--jobs", args.jobs, 1)):
        if value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    splits = load_splits(
        "fashion-mnist",
        n_train=args.train_rows,
        n_val=args.validation_rows,
        n_test=None,
        seed=0,
        data_dir=args.data_dir,
    )
    # the test rows are never read, nor rows that no split has
    splits = replace(splits, X_test=splits.X_test[:0], y_test=splits.y_test[:0], X_unlabeled=None)
    jobs = [(name, splits, args.epochs, args.seed, args.quiet) for name in args.recipes]
    start = time.perf_counter()
    if args.jobs == 1:
        trained = [train_recipe(*job) for job in jobs]
    else:
        spawn = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            trained = list(pool.map(train_recipe, *zip(*jobs)))
    results = {
        "command": " ".join(["python examples/fashion_mnist_mlp_teachers.py", *sys.argv[1:]])
        if argv is None
        else "main(" + repr(argv) + ")",
        "git_commit": _git_commit(),
        "settings": {
            "dataset": "fashion-mnist",
            "train_rows": len(splits.y_train),
            "validation_rows": len(splits.y_val),
            "epochs": args.epochs,
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "seed": args.seed,
            "jobs": args.jobs,
            "torch_threads_per_job": 1,
        },
        "reference": REFERENCE if REFERENCE in args.recipes else None,
        "recipes": dict(zip(args.recipes, trained)),
        "wall_seconds": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "mlp_teachers.json", out / "mlp_teachers.png"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, png_path)
    for path in (json_path, png_path):
        print(f"wrote {path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
