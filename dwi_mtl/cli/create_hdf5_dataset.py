"""``dwi_mtl_create_hdf5_dataset``: subject folders + JSON config + splits -> one HDF5 file.

Example::

    dwi_mtl_create_hdf5_dataset subjects/ dataset.hdf5 config.json \\
        training.txt validation.txt testing.txt --step_size 1.0 --remove_invalid

Subject list files hold one subject folder name per line (blank lines and ``#`` comments are
ignored; an empty file is an empty split). Bad input gives one error line naming the file or
field, exit code 2, and no output file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging
from dwi_mtl.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(
        prog="dwi_mtl_create_hdf5_dataset",
        description="Create one HDF5 dataset (dwi_ml layout) from a folder of subjects, a JSON "
                    "config of volume and streamline groups, and training/validation/testing "
                    "subject lists. See docs/data.md.")
    parser.add_argument("subjects_dir", help="Folder with one sub-folder per subject.")
    parser.add_argument("out_file", help="HDF5 file to write.")
    parser.add_argument("config_file", help="JSON config of the groups.")
    parser.add_argument("training_subjs", help="Text file: training subjects, one per line.")
    parser.add_argument("validation_subjs", help="Text file: validation subjects, one per line.")
    parser.add_argument("testing_subjs", help="Text file: testing subjects, one per line.")
    resampling = parser.add_mutually_exclusive_group()
    resampling.add_argument("--step_size", type=float, metavar="MM",
                            help="Resample streamlines to this step size (mm).")
    resampling.add_argument("--nb_points", type=int, metavar="N",
                            help="Resample streamlines to N points each.")
    resampling.add_argument("--compress", type=float, metavar="MM",
                            help="Compress streamlines with this tolerance (mm).")
    parser.add_argument("--remove_invalid", action="store_true",
                        help="Drop (and count) streamlines outside the volume instead of failing.")
    parser.add_argument("-f", "--force", action="store_true", help="Overwrite out_file.")
    add_logging_arg(parser)
    return parser


def read_subject_list(path: str | Path) -> list[str]:
    """Read a subject list file: one name per line, ``#`` comments and blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"subject list file '{path}' does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"subject list file '{path}' cannot be read: {exc}") from exc
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from dwi_mtl.data.hdf5_creation import create_hdf5_dataset

    create_hdf5_dataset(
        args.subjects_dir, args.config_file, args.out_file,
        read_subject_list(args.training_subjs), read_subject_list(args.validation_subjs),
        read_subject_list(args.testing_subjs), step_size=args.step_size,
        nb_points=args.nb_points, compress=args.compress,
        remove_invalid=args.remove_invalid, force=args.force)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (2 for bad input)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())
