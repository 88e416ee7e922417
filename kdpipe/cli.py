"""The ``kdpipe`` command. Each subcommand lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# modules that define ``register(subparsers)``; each adds its own subcommands
_COMMAND_MODULES = (
    "kdpipe.quickstart",
    "kdpipe.cache.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``kdpipe`` command."""
    parser = argparse.ArgumentParser(
        prog="kdpipe", description="Knowledge distillation with an offline logit cache."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kdpipe`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
