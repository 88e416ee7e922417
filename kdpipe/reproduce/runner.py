"""``kdpipe.reproduce.run``: the experiments of one profile, then the report."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdpipe.errors import InputError
from kdpipe.reproduce.settings import NOT_IMPLEMENTED, Profile, get_profile, parse_experiments

__all__ = ["run", "earlier_run", "refuse_earlier_run", "git_commit", "DEFAULT_OUT"]

DEFAULT_OUT = Path("kdpipe-results") / "reproduce"


def git_commit(*also: Path) -> str | None:
    """The commit of the kdpipe source tree that runs, ``+dirty`` with uncommitted changes
    in ``kdpipe/`` or in the files or folders ``also`` (a script that calls it, say; those
    outside the checkout are not looked at); None outside a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit, top = subprocess.run(
            ["git", "rev-parse", "HEAD", "--show-toplevel"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        inside = [str(q) for q in (Path(p).resolve() for p in also) if q.is_relative_to(top)]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", *inside],
            cwd=here.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def earlier_run(out: Path) -> list[Path]:
    """The files of an earlier run in ``out``: its report, JSON and plots, as far as present."""
    from kdpipe.reproduce.plots import FIGURES

    names = ("results.json", "REPORT.md", *FIGURES)
    return [out / name for name in names if (out / name).is_file()]


def refuse_earlier_run(
    out: Path, overwrite: bool, *, words: tuple[str, str] = ("overwrite=True", "another out")
) -> list[Path]:
    """An earlier run's files in ``out``, which a run replaces at its first write; an
    :class:`~kdpipe.errors.InputError` without ``overwrite``: a new run writes only its
    own experiments, and would leave the old plots beside its report. ``words``: how the
    caller spells the overwrite option and the out folder."""
    earlier = earlier_run(out)
    if earlier and not overwrite:
        raise InputError(
            f"{out} holds an earlier run ({', '.join(p.name for p in earlier[:3])}"
            f"{' ...' if len(earlier) > 3 else ''}); pass {words[0]} to replace it, or choose "
            f"{words[1]} folder"
        )
    return earlier


def run(
    profile: str | Profile = "smoke",
    *,
    experiments: Sequence[int | str] | None = None,
    seeds: int | None = None,
    device: str = "auto",
    out: str | os.PathLike[str] = DEFAULT_OUT,
    data_dir: str | os.PathLike[str] | None = None,
    verbose: bool = True,
    command: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the paper's experiments and write ``REPORT.md``, ``results.json`` and plots.

    Parameters
    ----------
    profile : {"smoke", "cpu", "paper"} or Profile, default="smoke"
        Sizes and training lengths (see :data:`kdpipe.reproduce.settings.PROFILES`); a
        :class:`~kdpipe.reproduce.settings.Profile` of your own, e.g. one of those with
        fields replaced (``dataclasses.replace``), to try other recipes.
        ``smoke`` runs on scikit-learn's digits in seconds and gives no verdicts.
    experiments : sequence of int, optional
        Experiment numbers; every implemented one by default.
    seeds : int, optional
        Student seeds per number; the profile's by default.
    device : str, default="auto"
        Where teachers and students run: CUDA when available by default.
    out : path, default="kdpipe-results/reproduce"
        Folder the report, JSON and plots are written to (created if needed). One that
        holds an earlier run's report or JSON is refused unless ``overwrite``.
    data_dir : path, optional
        Folder of the Fashion-MNIST idx files; Debian's location by default.
    verbose : bool, default=True
        Print progress.
    command : str, optional
        The command line to print in the report.
    overwrite : bool, default=False
        Replace an earlier run's files in ``out`` (its report, JSON and plots; nothing
        else there is touched), once the first experiment has finished: a run that fails
        before leaves them as they were.

    Returns
    -------
    dict
        Everything written to the JSON file, plus ``paths``: the files written.
    """
    import torch

    from kdpipe import __version__
    from kdpipe.devices import describe_machine, resolve_device
    from kdpipe.reproduce.data import load_splits
    from kdpipe.reproduce.experiments import RUNNERS
    from kdpipe.reproduce.lab import Lab
    from kdpipe.reproduce.plots import draw
    from kdpipe.reproduce.report import write_json, write_markdown

    chosen = parse_experiments(experiments)
    settings = get_profile(profile, seeds=seeds)
    resolve_device(device)  # a device this machine lacks fails before any work
    say = print if verbose else (lambda message: None)
    out = Path(out)
    replaced = refuse_earlier_run(out, overwrite)  # deleted at the first write, not before
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # read once, before any work: the record is rewritten after every experiment, and a
    # commit made while a run goes on is not the code that ran
    machine, commit = describe_machine(), git_commit()
    splits = load_splits(
        settings.dataset,
        n_train=settings.n_train,
        n_val=settings.n_val,
        n_test=settings.n_test,
        data_dir=data_dir,
    )
    say(f"{settings.dataset}: {splits.sizes()}")
    results: dict[int, dict[str, Any]] = {}

    def write(lab: Lab) -> tuple[dict[str, Any], dict[int, list[Path]] | None, list[Path]]:
        """The record so far, written out: a run stopped part-way leaves the experiments it finished."""
        while replaced:  # the earlier run's files go once this run has something to write
            replaced.pop().unlink(missing_ok=True)
        record: dict[str, Any] = {
            "command": command
            or f"kdpipe.reproduce.run(profile={settings.name!r}"
            f"{'' if isinstance(profile, str) else ' with the fields below'}, "
            f"experiments={list(chosen)})",
            "kdpipe_version": __version__,
            "git_commit": commit,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "machine": machine,
            "device": str(resolve_device(device)),
            "finished_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "wall_seconds": time.perf_counter() - start,
            "profile": settings.to_dict(),
            "data": {
                "name": splits.name,
                "sizes": splits.sizes(),
                "classes": list(splits.class_names),
            },
            "timings": lab.timings(),
            "experiments": {str(n): results[n] for n in sorted(results)},  # the paper's order
            "not_implemented": {str(n): name for n, name in NOT_IMPLEMENTED.items()},
            "pending": [n for n in chosen if n not in results],
        }
        figures = draw(dict(sorted(results.items())), out)
        paths = [
            write_json(record, out / "results.json"),
            write_markdown(record, figures, out / "REPORT.md"),
        ]
        return record, figures, paths

    cache_root = Path(tempfile.mkdtemp(prefix="kdpipe-reproduce-"))
    try:
        with torch.random.fork_rng(devices=[]):  # a run leaves the caller's torch RNG as it was
            lab = Lab(settings, splits, cache_root, device=device, say=say)
            for number in chosen:
                began = time.perf_counter()
                say(f"experiment {number} ...")
                results[number] = RUNNERS[number](lab)
                results[number]["seconds"] = time.perf_counter() - began
                say(
                    f"experiment {number}: {results[number]['headline']} "
                    f"({results[number]['seconds']:.1f}s)"
                )
                record, figures, paths = write(lab)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    if figures is None:
        say("matplotlib is not installed: the report has no plots (pip install kdpipe[plots])")
    else:
        paths += sorted({p for group in figures.values() for p in group})
    for path in paths:
        say(f"wrote {path.resolve()}")
    record["paths"] = paths
    return record
