"""``dwi_mtl_visualize_logs``: plot the .npy logs of one or several experiments side by side.

Reads ``<experiment>/logs/*.npy`` (per-epoch and per-batch: loss, per-task losses, task
weights, learning rate, gradient norms, epoch-hook and downstream results of MTL runs, ...) and
writes one PNG per metric and granularity, every experiment on the same axes; per-batch curves
are smoothed (exponential moving average, the raw curve drawn faint). ``--save_to_csv`` also
writes the raw series as CSV tables and ``--show`` opens the figures when a display is
available.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging
from dwi_mtl.errors import ConfigError
from dwi_mtl.logging.visualize import (
    GRANULARITIES,
    display_available,
    load_experiment_logs,
    plot_experiments,
    select_metrics,
    unique_names,
    write_csv_tables,
)

logger = logging.getLogger("dwi_mtl.cli.visualize_logs")


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(
        prog="dwi_mtl_visualize_logs", description=__doc__.split("\n\n")[0],
        epilog="Example: dwi_mtl_visualize_logs exps/run_a exps/run_b --metrics loss 'loss_*' "
               "'*_loss' lr 'hook_*' 'downstream_*' --out_dir comparison --save_to_csv",
    )
    parser.add_argument("experiments", nargs="+",
                        help="Experiment folders (each holding logs/*.npy), or logs folders.")
    parser.add_argument("--out_dir",
                        help="Output folder of the PNG (and CSV) files. Default: "
                             "<experiment>/plots for one experiment; required for several.")
    parser.add_argument("--metrics", nargs="+", metavar="NAME",
                        help="Metrics to plot: names or shell patterns such as 'loss_*', "
                             "'hook_*' (epoch hooks), 'downstream_*' (downstream evaluations); "
                             "see --list_metrics. Default: all, plus task_losses/task_weights "
                             "figures.")
    parser.add_argument("--granularity", nargs="+", choices=GRANULARITIES,
                        default=list(GRANULARITIES),
                        help="Per-epoch and/or per-batch figures (default: both).")
    parser.add_argument("--smoothing", type=float, default=0.6,
                        help="Exponential smoothing weight of per-batch curves, in [0, 1) "
                             "(0: none; default: 0.6).")
    parser.add_argument("--save_to_csv", action="store_true",
                        help="Also write the raw series as CSV tables in the output folder.")
    parser.add_argument("--show", action="store_true",
                        help="Open the figures in a window when a display is available.")
    parser.add_argument("--list_metrics", action="store_true",
                        help="Only log the metrics each experiment has, write nothing.")
    add_logging_arg(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.out_dir is None and len(args.experiments) > 1 and not args.list_metrics:
        raise ConfigError("--out_dir is required to compare several experiments")
    experiments = [load_experiment_logs(path, name)
                   for path, name in zip(args.experiments, unique_names(args.experiments))]
    if args.list_metrics:
        for exp in experiments:
            for granularity in GRANULARITIES:
                logger.info("%s per %s: %s", exp.name, granularity,
                            ", ".join(exp.metrics(granularity)) or "-")
        return 0
    for granularity in args.granularity:  # unknown --metrics fail here, nothing written yet
        select_metrics(experiments, args.metrics, granularity)
    out_dir = Path(args.out_dir) if args.out_dir else experiments[0].logs_dir.parent / "plots"
    if args.show and not display_available():
        logger.warning("--show: no display available; writing the PNG files only")
    written = plot_experiments(experiments, out_dir, args.metrics, args.granularity,
                               args.smoothing, args.show)
    if args.save_to_csv:
        written += write_csv_tables(experiments, out_dir)
    logger.info("wrote %d files to %s", len(written), out_dir.resolve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``dwi_mtl_visualize_logs``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
