"""``dwi_mtl_train_model``: train a tracking model on an HDF5 dataset from a config file.

Example::

    dwi_mtl_train_model config.yaml experiments/ my_run --hdf5_file data.hdf5 \\
        --max_epochs 20 --learning_rates 0.001*3 0.0001 --set batch_loader.noise_gaussian_size=0.1

The config format is described in :mod:`dwi_mtl.cli.train_config`: the single-task reference
model by default, a multi-task MTLTracker (architecture and weighting chosen by name) with an
``mtl`` section. An existing experiment is never overwritten (exit code 2); resume it with
``dwi_mtl_resume_training_from_checkpoint``.
Exit codes: 0 done, 2 bad input, 3 checkpointed on SIGTERM/SIGUSR1 (requeue and resume).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from dwi_mtl.cli.common import add_logging_arg, run_cli, run_training, setup_logging
from dwi_mtl.cli.train_config import (
    apply_overrides,
    build_objects,
    load_config,
    trainer_arguments,
)
from dwi_mtl.errors import ConfigError, ExperimentExistsError
from dwi_mtl.training.experiment import ExperimentFolder

logger = logging.getLogger("dwi_mtl.cli.train_model")

#: Shortcut options -> ``section.key`` of the config.
SHORTCUTS = {
    "max_epochs": "trainer.max_epochs", "patience": "trainer.patience",
    "device": "trainer.device", "num_workers": "trainer.num_workers",
    "comet_mode": "trainer.comet_mode", "batch_size_training": "batch_sampler.batch_size_training",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(
        prog="dwi_mtl_train_model", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 done, 2 bad input, 3 checkpointed on a signal (resume me).")
    parser.add_argument("config_file", help="JSON or YAML training config (docs/trainers.md).")
    parser.add_argument("experiments_path", help="Parent folder of experiments (must exist).")
    parser.add_argument("experiment_name", help="New experiment folder name.")
    parser.add_argument("--hdf5_file", help="Dataset file (overrides the config's hdf5_file).")
    parser.add_argument("--learning_rates", nargs="+", metavar="LR",
                        help="Per-epoch rates, e.g. 0.001*3 0.0001.")
    parser.add_argument("--max_epochs", type=int)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--batch_size_training", type=float)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available).")
    parser.add_argument("--num_workers", type=int, help="DataLoader worker processes.")
    parser.add_argument("--comet_mode", choices=("online", "offline", "disabled"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Override any config key (repeatable).")
    parser.add_argument("--plots", action="store_true", help="Write PNG curves at the end.")
    add_logging_arg(parser)
    return parser


def collect_overrides(args: argparse.Namespace) -> list[str]:
    """Turn the shortcut options and ``--set`` items into ``section.key=value`` strings."""
    overrides = [] if args.hdf5_file is None else [f"hdf5_file={args.hdf5_file}"]
    for option, key in SHORTCUTS.items():
        value = getattr(args, option)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.learning_rates:
        overrides.append(f"trainer.learning_rates={' '.join(args.learning_rates)!r}")
    return overrides + list(args.set)


def train(config: dict[str, Any], experiments_path: str, experiment_name: str) -> Any:
    """Build everything from ``config`` and train; return the trainer."""
    from dwi_mtl.training.distributed import DistributedContext, shard_config

    experiment = ExperimentFolder(experiments_path, experiment_name)
    if experiment.path.exists():
        raise ExperimentExistsError(
            f"experiment '{experiment.path}' already exists; choose a new name or resume it "
            "with dwi_mtl_resume_training_from_checkpoint"
        )
    context = DistributedContext.current()
    if context is not None:  # every rank checked before rank 0 creates the folder
        context.barrier()
    config = {**config, "batch_sampler": {**config["batch_sampler"], **shard_config()}}
    _, sampler, loader, model = build_objects(config)
    trainer_class, options = trainer_arguments(config, model)
    try:
        trainer = trainer_class(model, experiments_path, experiment_name, sampler, loader,
                                **options)
    except TypeError as exc:
        raise ConfigError(f"config section 'trainer': {exc}") from exc
    trainer.train_and_validate()
    return trainer


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = apply_overrides(load_config(args.config_file), collect_overrides(args))
    return run_training(
        lambda: train(config, args.experiments_path, args.experiment_name), args.plots
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``dwi_mtl_train_model``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
