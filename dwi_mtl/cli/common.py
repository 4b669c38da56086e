"""Shared plumbing of the command-line tools: logging set-up and one clear error per failure."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from dwi_mtl.errors import DwiMtlError

#: Exit code for bad input (configuration, data, arguments, checkpoint).
EXIT_BAD_INPUT = 2

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_logging_arg(parser: argparse.ArgumentParser) -> None:
    """Add the ``--log_level`` option shared by every script."""
    parser.add_argument(
        "--log_level", choices=LOG_LEVELS, default="INFO", help="Logging verbosity (default: INFO)."
    )


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger for a command-line run (one line per message, to stderr)."""
    logging.basicConfig(
        level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s", force=True
    )


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Run a script's ``main`` and turn dwi_mtl errors into one message and a non-zero exit.

    Args:
        main: the script body, taking ``argv`` and returning an exit code (or None for 0).
        argv: arguments (``sys.argv[1:]`` when None).

    Returns:
        The process exit code: the body's own, or :data:`EXIT_BAD_INPUT` for a
        :class:`~dwi_mtl.errors.DwiMtlError`.
    """
    try:
        code = main(argv)
    except DwiMtlError as exc:
        logging.getLogger("dwi_mtl").error("%s", exc)
        sys.stderr.flush()
        return EXIT_BAD_INPUT
    return int(code or 0)
