"""``python -m dwi_mtl.demo [--cache_dir DIR] [--force]``: build the demo files, log a summary."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging

logger = logging.getLogger("dwi_mtl.demo")


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dwi_mtl.demo",
                                     description="Build (or find in the cache) the demo datasets "
                                                 "and log what they contain.")
    parser.add_argument("--cache_dir", help="Cache folder (default: $DWI_MTL_CACHE or "
                                            "~/.cache/dwi_mtl).")
    parser.add_argument("--force", action="store_true", help="Rebuild even if cached.")
    add_logging_arg(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from dwi_mtl.data import MultiSubjectDataset
    from dwi_mtl.demo.builder import build_bundles_dataset, build_demo_dataset

    for build in (build_demo_dataset, build_bundles_dataset):
        path = build(args.cache_dir, force=args.force)
        dataset = MultiSubjectDataset(path, lazy=True)
        logger.info("%s", dataset)
        for set_name in ("training", "validation", "testing"):
            subset = dataset.subset(set_name)
            counts = {name: subset.nb_streamlines(i, dataset.streamline_groups[0])
                      for i, name in enumerate(subset.subject_names)}
            logger.info("  %s: streamlines per subject %s", set_name, counts)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
