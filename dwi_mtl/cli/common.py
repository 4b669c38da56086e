"""Shared plumbing of the command-line tools: logging set-up and one clear error per failure."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

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


def run_training(train: Callable[[], Any], plots: bool) -> int:
    """Run a training body under torch.distributed when launched so, and report where it went.

    One process per device under ``torchrun`` / ``srun`` (a single process otherwise): the
    process group is set up before ``train`` and torn down after it, with no barrier when the
    body failed (other ranks may be gone). A run stopped by SIGTERM/SIGUSR1 after its
    checkpoint returns the requeue exit code; rank 0 alone writes the PNG curves.

    Args:
        train: builds the trainer, trains, and returns it.
        plots: write PNG curves of the logs into ``<experiment>/plots`` when done.

    Returns:
        The process exit code (0, or ``EXIT_CHECKPOINTED_ON_SIGNAL`` after a signal).
    """
    from dwi_mtl.training import distributed
    from dwi_mtl.training.signals import CheckpointedOnSignal

    log = logging.getLogger("dwi_mtl.cli")
    context = distributed.init_from_environment()  # torchrun / srun: one process per device
    try:
        trainer = train()
    except CheckpointedOnSignal as exc:
        distributed.shutdown()
        log.warning("%s", exc)
        return exc.exit_code
    except BaseException:
        distributed.shutdown(synchronize=False)  # other ranks may be gone: no barrier
        raise
    distributed.shutdown()
    if context is not None and not context.is_main:
        return 0
    if plots:
        from dwi_mtl.logging.plots import plot_training_curves

        plot_training_curves(trainer.experiment.logs, trainer.experiment.plots)
    log.info("experiment folder: %s", trainer.experiment.path)
    return 0
