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

Only validation rows are scored: the test rows are loaded with the data and never
scored. Each epoch ``e`` (from 0) shows row ``r`` its view ``e`` of the stream
``(seed, r, e)`` (:func:`kdpipe.teacher_training.train_on_views`), so a rerun, in one
process or several, trains the same nets. Writes ``mlp_teachers.json`` (every recipe's
settings, validation accuracy and mean training loss per epoch, seconds) and
``mlp_teachers.png`` (validation accuracy against epochs) into ``--out`` (default
``kdpipe-results/fashion_mnist_mlp_teachers``) and prints their paths; ``--quiet``
silences the progress lines; ``--jobs 2`` trains two recipes at once. Every net trains
with one torch thread, whatever ``--jobs``. Needs the Fashion-MNIST idx files (Debian's
``dataset-fashion-mnist``; ``--data-dir`` names another folder). The committed run
(``examples/results/fashion_mnist_mlp_teachers/``, its command in its JSON) used the
defaults and ``--jobs 2``.
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

from kdpipe.augment import Augmentation, Compose, HFlip, Shift
from kdpipe.cli import HelpFormatter
from kdpipe.datasets import FASHION_MNIST_DIR
from kdpipe.reproduce.data import Splits, load_splits
from kdpipe.reproduce.runner import git_commit
from kdpipe.students import MLP
from kdpipe.teacher_training import train_on_views

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


def train_recipe(name: str, splits: Splits, epochs: int, seed: int, quiet: bool) -> dict[str, Any]:
    """Train recipe ``name``'s net on ``splits``' training rows with one torch thread.

    Returns
    -------
    dict
        The recipe's settings, ``validation_accuracy`` and ``training_loss`` (the mean
        over minibatches) after every epoch, the best accuracy and its epoch (from 1),
        the last, and the wall seconds.
    """
    recipe = RECIPES[name]
    augment: Augmentation | None = recipe["augment"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in one process as in --jobs workers
    try:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Dropout(recipe["input_dropout"]),
            MLP(
                splits.X_train.shape[1],
                splits.n_classes,
                recipe["hidden"],
                dropout=recipe["dropout"],
            ),
        )
        assert splits.image_shape is not None
        X_val = torch.from_numpy(splits.X_val)
        accuracy: list[float] = []
        start = time.perf_counter()

        def validate(epoch: int, loss: float) -> None:
            net.eval()
            with torch.no_grad():
                predicted = net(X_val).argmax(1).numpy()
            accuracy.append(float((predicted == splits.y_val).mean()))
            if not quiet:
                print(
                    f"{name}: epoch {epoch + 1}/{epochs}, training loss {loss:.4f}, "
                    f"validation {accuracy[-1]:.4f} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )

        losses = train_on_views(
            net,
            splits.X_train.reshape(-1, 1, *splits.image_shape),
            splits.y_train,
            augment=augment,
            epochs=epochs,
            batch_size=BATCH,
            learning_rate=LEARNING_RATE,
            seed=seed,
            to_input=lambda views: torch.from_numpy(views).reshape(len(views), -1),
            after_epoch=validate,
        )
    finally:
        torch.set_num_threads(threads)
    best = int(np.argmax(accuracy))
    return {
        "hidden_layer_sizes": list(recipe["hidden"]),
        "dropout": recipe["dropout"],
        "input_dropout": recipe["input_dropout"],
        "augment": None if augment is None else augment.to_dict(),
        "validation_accuracy": accuracy,
        "training_loss": losses,
        "best": accuracy[best],
        "best_epoch": best + 1,
        "last": accuracy[-1],
        "seconds": time.perf_counter() - start,
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """Validation accuracy against epochs, a line per recipe (the reference in black)."""
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
    parser.add_argument("--epochs", type=int, default=60, help="epochs of every recipe")
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
    counts = [("--epochs", args.epochs), ("--jobs", args.jobs)]
    counts += [("--validation-rows", args.validation_rows), ("--train-rows", args.train_rows)]
    for flag, value in counts:
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if len(set(args.recipes)) < len(args.recipes):
        parser.error("--recipes names a recipe twice")
    try:
        splits = load_splits(
            "fashion-mnist",
            n_train=args.train_rows,
            n_val=args.validation_rows,
            n_test=None,
            seed=0,
            data_dir=args.data_dir,
        )
    except OSError as exc:  # no such folder, or unreadable files
        parser.error(str(exc))
    except ValueError as exc:
        parser.error(f"cannot split the data (--validation-rows): {exc}")
    if args.train_rows is not None and len(splits.y_train) < args.train_rows:
        parser.error(
            f"--train-rows {args.train_rows}: the data has {len(splits.y_train)} training "
            f"rows beside the {args.validation_rows} validation rows"
        )
    # the test rows are never scored: they and the rows no split has are not passed on
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
        "git_commit": git_commit(Path(__file__)),
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
