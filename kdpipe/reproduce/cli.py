"""``kdpipe reproduce``: the paper's experiments in one command, with a report and plots."""

from __future__ import annotations

import argparse
import shlex
import sys

from kdpipe.errors import UsageError

__all__ = ["register"]


def _main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kdpipe.devices import resolve_device
    from kdpipe.errors import InputError
    from kdpipe.reproduce.runner import refuse_earlier_run, run
    from kdpipe.reproduce.settings import get_profile, parse_experiments

    try:
        parse_experiments(args.experiments)
        get_profile(args.profile, seeds=args.seeds)
        resolve_device(args.device)
        refuse_earlier_run(Path(args.out), args.overwrite, words=("--overwrite", "another --out"))
    except (ValueError, InputError) as exc:
        raise UsageError(str(exc)) from None
    record = run(
        args.profile,
        experiments=args.experiments,
        seeds=args.seeds,
        device=args.device,
        out=args.out,
        data_dir=args.data_dir,
        verbose=not args.quiet,
        command="kdpipe " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None,
        overwrite=args.overwrite,
    )
    if args.quiet:  # run() printed them otherwise
        for path in record["paths"]:
            print(path.resolve())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` subcommand."""
    from kdpipe.reproduce.runner import DEFAULT_OUT
    from kdpipe.reproduce.settings import EXPERIMENTS, NOT_IMPLEMENTED, PROFILES

    listing = "\n".join(f"  {n}. {name}" for n, name in EXPERIMENTS.items())
    listing += "".join(
        f"\n  {n}. {name} (not implemented yet)" for n, name in NOT_IMPLEMENTED.items()
    )
    parser = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiments; write a report, a JSON file and plots",
        description=f"{__doc__}\n\nExperiments:\n{listing}",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="smoke",
        help="sizes: smoke (seconds, digits, no verdicts), cpu (Fashion-MNIST on a "
        "CPU), paper (the paper's sizes, for a GPU)",
    )
    parser.add_argument(
        "--experiments",
        nargs="+",
        default=None,
        metavar="N",
        help="experiment numbers, run in the order given (default: all, 1 to 6)",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="student seeds (default: the profile's)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="folder for REPORT.md, results.json, plots"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Fashion-MNIST idx files (default: /usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's report, JSON and plots in --out",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the paths written")
    parser.set_defaults(func=_main)
