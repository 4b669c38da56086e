"""``dwi_mtl_demo``: the flagship demo, multi-task tractography on real diffusion data (CPU).

Builds (or finds in the cache) the demo HDF5 dataset made offline from real diffusion MRI data
shipped in dipy (:func:`dwi_mtl.demo.build_demo_dataset`: two training subjects, one
validation, one held out), then (:mod:`dwi_mtl.tracking.flagship`):

- trains a GRU direction model shared by two tasks with the MTLTrainer: the next-step
  direction and the end of the streamline (uncertainty weighting);
- reports the held-out subject's mean angular error against the teacher streamlines;
- tracks the held-out subject with the trained model and reports the share of tracked
  streamlines that stay inside its FA mask;
- writes PNG training curves, ``results.json`` and the tractogram in the experiment folder.

A couple of minutes on a laptop CPU; ``--quick`` takes seconds. ``--resume`` continues an
interrupted (or finished, with a larger ``--max_epochs``) run exactly from its checkpoint.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging
from dwi_mtl.errors import ConfigError
from dwi_mtl.training.experiment import free_experiment_name
from dwi_mtl.training.signals import CheckpointedOnSignal

logger = logging.getLogger("dwi_mtl.cli.demo")


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(prog="dwi_mtl_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments_path", default="dwi_mtl_experiments",
                        help="Parent folder of the experiment (created; default: "
                             "./dwi_mtl_experiments).")
    parser.add_argument("--experiment_name", default="demo",
                        help="Experiment name; a numbered suffix is added if it exists "
                             "(unless --resume).")
    parser.add_argument("--max_epochs", type=int,
                        help="Epochs (default: 12; 2 with --quick).")
    parser.add_argument("--quick", action="store_true",
                        help="A few tiny batches per epoch (seconds; for tests).")
    parser.add_argument("--resume", action="store_true",
                        help="Continue the experiment --experiment_name from its checkpoint.")
    parser.add_argument("--cache_dir", help="Demo data cache (default: ~/.cache/dwi_mtl).")
    parser.add_argument("--comet_mode", choices=("online", "offline", "disabled"),
                        default="disabled", help="Comet.ml logging (default: disabled).")
    add_logging_arg(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from dwi_mtl.tracking.flagship import FlagshipSettings, run_flagship

    settings = FlagshipSettings.quick() if args.quick else FlagshipSettings()
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            raise ConfigError(f"--max_epochs must be >= 1, got {args.max_epochs}")
        settings.max_epochs = args.max_epochs
    experiments_path = Path(args.experiments_path)
    experiments_path.mkdir(parents=True, exist_ok=True)
    name = args.experiment_name if args.resume else free_experiment_name(experiments_path,
                                                               args.experiment_name)
    try:
        result = run_flagship(experiments_path, name, settings, args.cache_dir, args.resume,
                              args.comet_mode)
    except CheckpointedOnSignal as exc:
        logger.warning("%s", exc)
        return exc.exit_code
    folder = Path(result.experiment)
    logger.info("best epoch %d; held-out subject: mean angular error %.1f degrees "
                "(validation subject %.1f)", result.best_epoch, result.held_out_angular_error,
                result.validation_angular_error)
    logger.info("tracked %d streamlines on the held-out subject: %.1f%% stay inside its mask "
                "(teacher streamlines %.1f%%)", result.tracked_streamlines,
                100 * result.share_inside_mask, 100 * result.teacher_share_inside_mask)
    logger.info("experiment folder: %s", folder.resolve())
    logger.info("training curves (PNG): %s", (folder / "plots").resolve())
    logger.info("tractogram: %s", Path(result.tractogram).resolve())
    logger.info("continue it with: dwi_mtl_demo --resume --experiments_path %s "
                "--experiment_name %s --max_epochs %d", experiments_path, name,
                settings.max_epochs + 5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``dwi_mtl_demo``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
