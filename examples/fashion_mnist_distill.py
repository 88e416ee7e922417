"""Section 3 of Hinton et al. (2015) on Fashion-MNIST: teacher ensemble -> small students.

A teacher ensemble of ``--members`` 2x1200 ReLU MLPs with dropout is trained once on the
training images; its logits are stored in a ``LogitCache``. Two students, 2x800 and a
tiny 2x30, are trained on hard labels alone (the baseline) and distilled from the
cached logits at each temperature. Test accuracy of every model goes to
``fashion_mnist_distill.json``, with a temperature-sweep plot ``fashion_mnist_distill.png``
(``--tag`` adds a suffix to both names), in ``--out`` (default
``kdpipe-results/fashion_mnist_distill`` under the current folder); their paths are
printed. The published results of full runs are in ``examples/results/``.

Needs the Fashion-MNIST idx files (Debian's ``dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist``; ``--data-dir`` names another folder). The
paper's scale takes hours on a laptop CPU; reduce it with ``--train-rows``, ``--epochs``, ``--teacher-epochs`` and
``--temperatures``, e.g.::

    python examples/fashion_mnist_distill.py --train-rows 20000 --epochs 8 \\
        --teacher-epochs 8 --temperatures 1 2 4 8 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.special import softmax

from kdpipe import DistilledClassifier, build_cache
from kdpipe.cli import HelpFormatter
from kdpipe.datasets import FASHION_MNIST_DIR, load_fashion_mnist
from kdpipe.engine import predict_logits
from kdpipe.teacher_training import jitter_images, train_mlp_ensemble

STUDENTS = {"2x800": (800, 800), "2x30": (30, 30)}


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--out",
        default="kdpipe-results/fashion_mnist_distill",
        help="folder for the results and the plot",
    )
    parser.add_argument(
        "--train-rows", type=int, default=60000, help="training rows used (a random subset)"
    )
    parser.add_argument(
        "--test-rows", type=int, default=10000, help="test rows used (the first ones)"
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=30, help="training epochs of each teacher"
    )
    parser.add_argument(
        "--jitter-copies",
        type=int,
        default=0,
        help="copies of the training images shifted by up to 2 pixels (teachers)",
    )
    parser.add_argument("--epochs", type=int, default=30, help="epochs of every student")
    parser.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1, 2, 2.5, 3, 4, 5, 8, 10, 15, 20],
        help="distillation temperatures",
    )
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of the hard-label loss")
    parser.add_argument("--members", type=int, default=2, help="teachers in the ensemble")
    parser.add_argument(
        "--teacher-dropout", type=float, default=0.5, help="dropout of the teachers"
    )
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the subset, teachers and students"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument(
        "--data-dir",
        "--data",
        dest="data",
        default=FASHION_MNIST_DIR,
        help="directory of the idx files",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    X, y = load_fashion_mnist(args.data, "train")
    X_test, y_test = load_fashion_mnist(args.data, "test")
    rows = np.random.default_rng(args.seed).permutation(len(X))[: args.train_rows]
    X, y = X[np.sort(rows)], y[np.sort(rows)]
    X_test, y_test = X_test[: args.test_rows], y_test[: args.test_rows]
    print(f"train {X.shape}, test {X_test.shape}", flush=True)

    tick = time.perf_counter()
    members = train_mlp_ensemble(
        X,
        y,
        n_classes=10,
        n_members=args.members,
        hidden_layer_sizes=(1200, 1200),
        dropout=args.teacher_dropout,
        epochs=args.teacher_epochs,
        batch_size=128,
        learning_rate=1e-3,
        augment=lambda a, rng: jitter_images(a, rng, image_shape=(28, 28), max_shift=2),
        n_augmented_copies=args.jitter_copies,
        random_state=args.seed,
        device=args.device,
    )
    teacher_seconds = time.perf_counter() - tick
    member_logits = [predict_logits(m, X_test, device=args.device) for m in members]
    ensemble_proba = np.mean([softmax(z, axis=1) for z in member_logits], axis=0)
    results: dict = {
        "settings": vars(args) | {"train_rows": len(X), "test_rows": len(X_test)},
        "teacher_members": [accuracy(z, y_test) for z in member_logits],
        "ensemble": accuracy(ensemble_proba, y_test),
        "teacher_seconds": teacher_seconds,
        "students": {},
    }
    print(
        f"teachers {results['teacher_members']}, ensemble {results['ensemble']:.4f} "
        f"({teacher_seconds:.0f} s)",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        cache = build_cache(
            members, X, Path(tmp) / "fashion.zarr", y=y, progress=False, device=args.device
        )
        for name, sizes in STUDENTS.items():
            common = dict(
                hidden_layer_sizes=sizes,
                max_epochs=args.epochs,
                batch_size=128,
                random_state=args.seed,
                device=args.device,
            )
            tick = time.perf_counter()
            hard = DistilledClassifier(**common).fit(X, y)
            entry = {"hard_labels": hard.score(X_test, y_test), "distilled": {}, "seconds": {}}
            entry["seconds"]["hard_labels"] = time.perf_counter() - tick
            print(f"student {name}: hard labels {entry['hard_labels']:.4f}", flush=True)
            for T in args.temperatures:
                tick = time.perf_counter()
                student = DistilledClassifier(temperature=T, alpha=args.alpha, **common)
                student.fit(X, y, teacher_logits=cache)
                entry["distilled"][str(T)] = student.score(X_test, y_test)
                entry["seconds"][str(T)] = time.perf_counter() - tick
                print(
                    f"student {name}: T={T:g} distilled {entry['distilled'][str(T)]:.4f} "
                    f"({entry['seconds'][str(T)]:.0f} s)",
                    flush=True,
                )
            results["students"][name] = entry

    results["total_seconds"] = time.perf_counter() - started
    results["torch_threads"] = torch.get_num_threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "fashion_mnist_distill" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / f"{stem}.png")
    print(f"finished in {results['total_seconds']:.0f} s")
    for path in (out / f"{stem}.json", out / f"{stem}.png"):
        print(f"wrote {path.resolve()}")
    return 0


def plot(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"2x800": "tab:blue", "2x30": "tab:orange"}
    for name, entry in results["students"].items():
        temps = [float(t) for t in entry["distilled"]]
        ax.plot(
            temps,
            [100 * a for a in entry["distilled"].values()],
            "o-",
            color=colors[name],
            label=f"student {name}, distilled",
        )
        ax.axhline(
            100 * entry["hard_labels"],
            ls="--",
            color=colors[name],
            label=f"student {name}, hard labels",
        )
    members = len(results["teacher_members"])
    ax.axhline(
        100 * results["ensemble"], color="black", label=f"teacher ensemble (2x1200, x{members})"
    )
    ax.axhline(
        100 * max(results["teacher_members"]), color="gray", ls=":", label="best teacher member"
    )
    ax.set_xscale("log")
    ax.set_xlabel("distillation temperature T")
    ax.set_ylabel("test accuracy (%)")
    s = results["settings"]
    ax.set_title(f"Fashion-MNIST, {s['train_rows']} training rows, {s['epochs']} student epochs")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
