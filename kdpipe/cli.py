"""The ``kdpipe`` command. Each subcommand lives in its own module with a ``register``.

Errors a user causes (kdpipe's own errors, a missing or unreadable file) end the command
with one line on stderr, ``kdpipe: error: ...``, and a non-zero exit status:

====  ================================================================================
0     success
1     the command failed: a missing file, a cache that does not match, a corrupt cache
2     the command line is wrong (unknown option, missing argument, unusable option value)
130   interrupted (Ctrl-C); an interrupted ``build-cache`` resumes when rerun
====  ================================================================================

Errors of object storage's client libraries (botocore's ``NoCredentialsError``, an
fsspec error) are one line too. Anything else is a bug in kdpipe and shows its traceback. ``--debug`` (or the environment
variable ``KDPIPE_DEBUG=1``) shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from kdpipe import __version__
from kdpipe.errors import KdpipeError, UsageError

__all__ = [
    "HelpFormatter",
    "build_parser",
    "main",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# modules that define ``register(subparsers)``; each adds its own subcommands
_COMMAND_MODULES = (
    "kdpipe.quickstart",
    "kdpipe.cache.cli",
    "kdpipe.reproduce.cli",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, and descriptions with their line breaks.

    A default of None, False or "" (an option that is off unless given) says nothing,
    so it is not shown. The scripts in ``pipelines/`` and ``examples/`` use it too.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if (
            action.default is None
            or action.default is False
            or action.default == ""
            or action.required
        ):
            return action.help or ""
        return super()._get_help_string(action) or ""


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: shows defaults, as the top-level one does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``kdpipe`` command."""
    parser = argparse.ArgumentParser(
        prog="kdpipe",
        description="Knowledge distillation with an offline logit cache.",
        epilog="Exit status: 0 success, 1 failure, 2 bad command line, 130 interrupted.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kdpipe {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of every error (also: KDPIPE_DEBUG=1)",
    )
    subparsers = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_CommandParser,
    )
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# packages whose errors are a user's setup (credentials, endpoint, bucket), not a bug in kdpipe
_STORAGE_PACKAGES = (
    "botocore",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "gcsfs",
    "adlfs",
    "azure",
    "google",
)


def _is_storage_error(exc: BaseException) -> bool:
    """An error raised by object storage's client libraries (``NoCredentialsError``...)."""
    return any(cls.__module__.split(".", 1)[0] in _STORAGE_PACKAGES for cls in type(exc).__mro__)


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line: OS errors as 'reason: file', others as their message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kdpipe`` command; return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after ``kdpipe``; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 1 when the command failed, 2 for a bad command line, 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad command line argparse reported
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    debug = args.debug or os.environ.get("KDPIPE_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        resume = getattr(args, "resume_hint", None)
        print(f"kdpipe: interrupted{'; ' + resume if resume else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug or not (isinstance(exc, (KdpipeError, OSError)) or _is_storage_error(exc)):
            raise
        print(f"kdpipe: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
