"""``dwi_mtl_resume_training_from_checkpoint``: continue an experiment from its checkpoint.

Example::

    dwi_mtl_resume_training_from_checkpoint experiments/ my_run --new_max_epochs 40

Everything (dataset, sampler, loader, model, trainer) is rebuilt from ``parameters.json`` and
restored from the latest complete checkpoint; the run continues exactly where it stopped. A
resume that would stop at once (max_epochs reached, patience exhausted) is refused with a
message saying which option to raise. Exit codes: 0 done, 2 bad input, 3 checkpointed on a
signal (resume again).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from dwi_mtl.cli.common import add_logging_arg, run_cli, run_training, setup_logging
from dwi_mtl.errors import ConfigError

logger = logging.getLogger("dwi_mtl.cli.resume_training")


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(
        prog="dwi_mtl_resume_training_from_checkpoint", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 done, 2 bad input, 3 checkpointed on a signal (resume me).")
    parser.add_argument("experiments_path", help="Parent folder of the experiment.")
    parser.add_argument("experiment_name", help="The experiment folder to resume.")
    parser.add_argument("--new_max_epochs", type=int, help="Raise the number of epochs.")
    parser.add_argument("--new_patience", type=int, help="Raise the patience.")
    parser.add_argument("--hdf5_file", help="New path of the dataset, if it moved.")
    parser.add_argument("--plots", action="store_true", help="Write PNG curves at the end.")
    add_logging_arg(parser)
    return parser


def rebuild(args: argparse.Namespace) -> Any:
    """Rebuild the trainer with the options' overrides and refuse a resume that would stop."""
    from dwi_mtl.training.trainer import AbstractTrainer

    overrides: dict[str, Any] = {}
    if args.new_max_epochs is not None:
        overrides["max_epochs"] = args.new_max_epochs
    if args.new_patience is not None:
        overrides["patience"] = args.new_patience
    if args.hdf5_file is not None:
        overrides["hdf5_file"] = args.hdf5_file
    trainer = AbstractTrainer.init_from_checkpoint(
        args.experiments_path, args.experiment_name, **overrides
    )
    reason = trainer.stop_reason()
    if reason:
        hint = "--new_max_epochs" if "max_epochs" in reason else "--new_patience"
        raise ConfigError(
            f"resuming '{trainer.experiment.path}' would stop at once: {reason} "
            f"(epoch {trainer.epoch} done); raise it with {hint}"
        )
    return trainer


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)

    def resume() -> Any:
        trainer = rebuild(args)
        trainer.train_and_validate()
        return trainer

    return run_training(resume, args.plots)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``dwi_mtl_resume_training_from_checkpoint``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
