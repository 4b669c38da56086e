"""``dwi_mtl_demo``: train the reference model end to end on the embedded demo data (CPU).

Builds (or finds in the cache) the demo HDF5 dataset made offline from real diffusion MRI data
shipped in dipy (:func:`dwi_mtl.demo.build_demo_dataset`), trains a small
:class:`~dwi_mtl.models.recurrent_tracker.RecurrentTracker` to predict streamline directions
from spherical-harmonic features, writes PNG training curves and logs where the experiment
folder and the plots are. A couple of minutes on a laptop CPU; ``--quick`` takes seconds.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging
from dwi_mtl.training.signals import CheckpointedOnSignal

logger = logging.getLogger("dwi_mtl.cli.demo")


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(prog="dwi_mtl_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments_path", default="dwi_mtl_experiments",
                        help="Parent folder of the experiment (created; default: "
                             "./dwi_mtl_experiments).")
    parser.add_argument("--experiment_name", default="demo",
                        help="Experiment name; a numbered suffix is added if it exists.")
    parser.add_argument("--max_epochs", type=int, default=8, help="Epochs (default: 8).")
    parser.add_argument("--quick", action="store_true",
                        help="A few tiny batches per epoch (seconds; for tests).")
    parser.add_argument("--cache_dir", help="Demo data cache (default: ~/.cache/dwi_mtl).")
    parser.add_argument("--comet_mode", choices=("online", "offline", "disabled"),
                        default="disabled", help="Comet.ml logging (default: disabled).")
    add_logging_arg(parser)
    return parser


def demo_config(hdf5_file: Path, max_epochs: int, quick: bool, comet_mode: str) -> dict[str, Any]:
    """The training configuration of the demo (same format as dwi_mtl_train_model's)."""
    batch_size, train_batches, valid_batches = (20, 3, 2) if quick else (100, 20, 10)
    return {
        "hdf5_file": str(hdf5_file),
        "dataset": {"lazy": False},
        "batch_sampler": {"streamline_group": "streamlines", "batch_size_training": batch_size,
                          "seed": 1234},
        "batch_loader": {"input_group": "sh", "noise_gaussian_size": 0.1, "seed": 1234},
        "model": {"hidden_size": 32, "nb_layers": 1, "dropout": 0.1},
        "trainer": {
            "learning_rates": "0.005*3 0.002", "max_epochs": max_epochs,
            "max_batches_per_epoch_training": train_batches,
            "max_batches_per_epoch_validation": valid_batches,
            "patience": 4, "clip_grad": 1.0, "device": "cpu", "comet_mode": comet_mode,
            "log_every_n_batches": 10,
        },
    }


def free_name(experiments_path: Path, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``... when an experiment of that name exists."""
    candidate, index = name, 1
    while (experiments_path / candidate).exists():
        index += 1
        candidate = f"{name}_{index}"
    return candidate


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from dwi_mtl.cli.train_model import train, write_plots
    from dwi_mtl.demo import build_demo_dataset

    hdf5_file = build_demo_dataset(args.cache_dir)
    experiments_path = Path(args.experiments_path)
    experiments_path.mkdir(parents=True, exist_ok=True)
    name = free_name(experiments_path, args.experiment_name)
    config = demo_config(hdf5_file, args.max_epochs, args.quick, args.comet_mode)
    try:
        trainer = train(config, str(experiments_path), name)
    except CheckpointedOnSignal as exc:
        logger.warning("%s", exc)
        return exc.exit_code
    write_plots(trainer)
    folder = trainer.experiment.path
    logger.info("best epoch %s, validation loss %.4f",
                trainer.monitor.best_epoch, trainer.monitor.best_value)
    logger.info("experiment folder: %s", folder.resolve())
    logger.info("training curves (PNG): %s", trainer.experiment.plots.resolve())
    logger.info("continue it with: dwi_mtl_resume_training_from_checkpoint %s %s "
                "--new_max_epochs %d", experiments_path, name, args.max_epochs + 5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``dwi_mtl_demo``)."""
    return run_cli(_main, argv)
