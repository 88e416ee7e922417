"""The documentation's code runs, and its reference pages list every public name.

Each user-guide page's ``.. code-block:: python`` blocks run in order, in one namespace
per page, in a temporary folder (a block whose first line starts with ``# not run``
needs a bucket or a cluster and is skipped). Each gallery script runs as a script. The
Sphinx build itself (``.ci/run``) runs the gallery again with its plots.
"""

from __future__ import annotations

import importlib
import re
import runpy
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in (DOCS / "user_guide").glob("*.rst") if p.name != "index.rst")
GALLERY = sorted((ROOT / "examples" / "gallery").glob("plot_*.py"))


def python_blocks(page: Path) -> list[str]:
    """The source of each ``.. code-block:: python`` block of an rst page."""
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
        else:
            i += 1
    return blocks


def test_every_user_guide_page_has_code():
    assert len(PAGES) >= 11
    for page in PAGES:
        assert python_blocks(page), f"{page.name} has no python code block"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_the_code_of_the_user_guide_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for block in python_blocks(page):
        if block.startswith("# not run"):
            continue
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 (the docs' own code)


@pytest.mark.parametrize("script", GALLERY, ids=lambda p: p.stem)
def test_the_gallery_example_runs(script, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    import matplotlib.pyplot as plt

    try:
        runpy.run_path(str(script), run_name="__main__")
        assert plt.get_fignums(), f"{script.name} drew no figure"
    finally:
        plt.close("all")


def _documented_names() -> set[str]:
    api = (DOCS / "api.rst").read_text()
    return set(re.findall(r"^   (\w+)$", api, flags=re.MULTILINE))


@pytest.mark.parametrize(
    "module",
    [
        "kdpipe",
        "kdpipe.cache",
        "kdpipe.losses",
        "kdpipe.students",
        "kdpipe.reproduce",
        "kdpipe.errors",
    ],
)
def test_the_api_reference_has_a_page_for_every_public_name(module):
    names = set(importlib.import_module(module).__all__)
    if module == "kdpipe":
        import kdpipe

        names = {
            n
            for n in names
            if n != "__version__" and not isinstance(getattr(kdpipe, n), type(kdpipe))
        }
    documented = _documented_names()
    # the loss functions kdpipe re-exports are documented once, under kdpipe.losses
    assert names <= documented, sorted(names - documented)


def test_the_troubleshooting_page_explains_every_error():
    import kdpipe.errors

    page = (DOCS / "user_guide" / "troubleshooting.rst").read_text()
    for name in kdpipe.errors.__all__:
        assert f":class:`~kdpipe.errors.{name}`\n   " in page, name


def test_the_readme_quotes_the_committed_sparse_timing_runs():
    """Every fit-time figure of the README's sparse section, from the two timing runs and
    the loss benchmark."""
    import json

    runs = [
        json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())["timing"]
        for name in ("sparse_train_timing", "sparse_train_timing_rerun")
    ]

    def span(classes: int, *names: str, key: str = "ratio") -> str:
        values = sorted(
            fits[name][key]
            for run in runs
            for entry in run
            if entry["classes"] == classes
            for fits in [entry["fits"]]
            for name in fits
            if name.startswith(names)
        )
        low, high = f"{values[0]:.2f}", f"{values[-1]:.2f}"
        return low if low == high else f"{low}-{high}"  # one figure: both runs gave it

    readme = " ".join((ROOT / "README.md").read_text().split())
    quoted = {
        "5,000: top-k and sampled tail": (span(5000, "topk113 uniform", "topk64+32"), "of dense"),
        "5,000: bucket": (span(5000, "topk113 bucket"), "for the bucket"),
        "15,000: top-k": (span(15000, "topk363 uniform"), "and top-64 plus 32 draws"),
        "15,000: sampled tail": (span(15000, "topk64+32"), "(the goal of 0.6 met)"),
        "15,000: bucket": (span(15000, "topk363 bucket"), "(met)"),
        "5,000: dense seconds": (span(5000, "dense", key="median_s"), "s at 5,000 classes"),
        "15,000: dense seconds": (span(15000, "dense", key="median_s"), "s at 15,000"),
        "5,000: LowRank(248)": (span(5000, "lowrank248"), "of dense at 5,000 classes"),
        "15,000: LowRank(748)": (span(15000, "lowrank748"), ", slower than dense"),
        "15,000: LowRank(21)": (span(15000, "lowrank21"), ": a low-rank cache"),
    }
    steps = {
        row["classes"]: row["steps"]
        for row in json.loads((ROOT / "benchmarks" / "results" / "losses.json").read_text())["rows"]
    }
    sparse = {
        f"{steps[c][name]['ratio']:.2f}"
        for c in (5000, 15000)
        for name in steps[c]
        if name.startswith("kdpipe top-")
    }
    assert len(sparse) == 1, sparse  # both top-k steps round alike
    dense = sorted(steps[c]["kdpipe dense"]["ratio"] for c in (1000, 5000, 15000))
    quoted |= {
        "sparse loss step": (sparse.pop(), "of the textbook torch expression's"),
        "dense loss step": (f"{dense[0]:.2f}-{dense[-1]:.2f}", "of the textbook step"),
        "dense loss step, 10 classes": (f"{steps[10]['kdpipe dense']['ratio']:.2f}", "at 10"),
    }
    for what, (figure, after) in quoted.items():
        assert f"{figure} {after}".replace(" ,", ",").replace(" :", ":") in readme, (what, figure)
