"""What the benchmarks share: their data, the machine's description, the results files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def fashion_or_random(rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``rows`` Fashion-MNIST training images (float32 in [0, 1]) and labels, or random data
    of that shape when Debian's ``dataset-fashion-mnist`` is not installed; and which it is."""
    try:
        from kdpipe.datasets import load_fashion_mnist

        X, y = load_fashion_mnist()
        source = "fashion-mnist train"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        X, y = rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000)
        source = "random (fashion-mnist not installed)"
    return np.ascontiguousarray(X[:rows], dtype=np.float32), y[:rows], source


def machine() -> dict[str, object]:
    """The machine, as every results file records it (:func:`kdpipe.devices.describe_machine`)."""
    from kdpipe.devices import describe_machine

    return describe_machine()


def load_line(before: tuple[float, ...], after: tuple[float, ...], when: str = "") -> str:
    """The markdown line of the load average around the timed part (a busy machine shows)."""

    def fmt(values: tuple[float, ...]) -> str:
        return "/".join(f"{v:.2f}" for v in values)

    return f"- load average (1/5/15 min) before {fmt(before)}, after{when} {fmt(after)}"


def write_results(name: str, result: dict, markdown: str, folder: Path = RESULTS) -> None:
    """``FOLDER/NAME.json`` and ``FOLDER/NAME.md`` (default ``results/``); the markdown is printed too."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1))
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)
