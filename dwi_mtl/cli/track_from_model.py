"""``dwi_mtl_track_from_model``: track streamlines on a subject with a trained direction model.

Example::

    dwi_mtl_track_from_model experiments/ my_run tracked.trk --subject sub-101D-mirror \\
        --seeding_group fa --seeding_threshold 0.1 --tracking_group fa \\
        --tracking_threshold 0.1 --step_size 1.0 --max_angle 45 --algo det

The model is rebuilt from the experiment's ``parameters.json`` with its best weights (or the
latest checkpoint); the subject's input volume and grid come from the HDF5 dataset the model
was trained on (``--hdf5_file`` to use another file of the same layout). Seeds come from a
mask (a NIfTI file on the subject's grid, or a volume group of the HDF5 thresholded) or from a
text/.npy file of RAS-mm points. The output .trk/.tck is in the subject volume's RAS-mm space.
Exit codes: 0 done, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dwi_mtl.cli.common import add_logging_arg, run_cli, setup_logging
from dwi_mtl.errors import ConfigError, DataError

logger = logging.getLogger("dwi_mtl.cli.track_from_model")


def build_parser() -> argparse.ArgumentParser:
    """Return the script's argument parser."""
    parser = argparse.ArgumentParser(prog="dwi_mtl_track_from_model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments_path", help="Parent folder of the experiment.")
    parser.add_argument("experiment_name", help="The trained experiment's folder.")
    parser.add_argument("out_tractogram", help="Output .trk or .tck file.")
    parser.add_argument("--hdf5_file", help="Dataset (default: the experiment's).")
    parser.add_argument("--subject", help="Subject to track (default: first testing subject).")
    parser.add_argument("--which", choices=("best", "checkpoint"), default="best",
                        help="Weights: best_model/ (default) or the latest checkpoint.")
    seeding = parser.add_argument_group("seeding (one of)")
    seeding.add_argument("--seeding_mask", help="NIfTI mask on the subject's grid.")
    seeding.add_argument("--seeding_group", help="HDF5 volume group, thresholded (feature 0).")
    seeding.add_argument("--seeds", help="Text or .npy file of (S, 3) RAS-mm seed points.")
    seeding.add_argument("--seeding_threshold", type=float, default=0.0,
                         help="Voxels above it are seeded (default: 0).")
    seeding.add_argument("--seeds_per_voxel", type=int, default=1)
    stopping = parser.add_argument_group("stopping mask (optional, one of)")
    stopping.add_argument("--tracking_mask", help="NIfTI mask on the subject's grid.")
    stopping.add_argument("--tracking_group", help="HDF5 volume group, thresholded (feature 0).")
    stopping.add_argument("--tracking_threshold", type=float, default=0.0)
    options = parser.add_argument_group("propagation")
    options.add_argument("--algo", choices=("det", "prob"), default="det",
                         help="det: most likely direction; prob: sampled (default: det).")
    options.add_argument("--step_size", type=float, default=1.0, help="mm (default: 1).")
    options.add_argument("--max_angle", type=float, default=60.0, help="Degrees per step.")
    options.add_argument("--min_length", type=float, default=10.0, help="mm (default: 10).")
    options.add_argument("--max_length", type=float, default=200.0, help="mm (default: 200).")
    options.add_argument("--eos_threshold", type=float, default=0.5,
                         help="Stop when the model's end-of-streamline probability exceeds it.")
    options.add_argument("--unidirectional", action="store_true",
                         help="Track from the seed in one direction only.")
    options.add_argument("--batch_size", type=int, default=1000, help="Streamlines at once.")
    options.add_argument("--seed", type=int, default=1234, help="Seeding and sampling seed.")
    options.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default: cpu).")
    parser.add_argument("-f", dest="overwrite", action="store_true",
                        help="Overwrite an existing output file.")
    add_logging_arg(parser)
    return parser


def _load_mask(subset: Any, subject: int, path: str | None, group: str | None,
               threshold: float, what: str) -> np.ndarray | None:
    """A boolean mask on the subject's grid from a NIfTI file or an HDF5 volume group."""
    if path is not None and group is not None:
        raise ConfigError(f"give either --{what}_mask or --{what}_group, not both")
    if group is not None:
        return subset.get_volume(subject, group)[..., 0] > threshold
    if path is None:
        return None
    import nibabel as nib

    if not Path(path).is_file():
        raise DataError(f"--{what}_mask '{path}' does not exist")
    try:
        image: Any = nib.load(path)
        data = np.asarray(image.get_fdata())
    except Exception as exc:  # nibabel raises many types for a broken file
        raise DataError(f"--{what}_mask '{path}' cannot be read: {exc}") from exc
    return data.reshape(data.shape[:3]) > threshold


def _subject_index(subset_names: dict[str, list[str]], subject: str | None) -> tuple[str, int]:
    if subject is None:
        for split in ("testing", "validation", "training"):
            if subset_names[split]:
                return split, 0
        raise DataError("the dataset has no subject")
    for split, names in subset_names.items():
        if subject in names:
            return split, names.index(subject)
    raise DataError(f"--subject '{subject}' is not in the dataset")


def _seeds(args: argparse.Namespace, subset: Any, subject: int, affine: np.ndarray,
           shape: tuple[int, ...]) -> np.ndarray:
    from dwi_mtl.tracking import seeds_from_mask, seeds_from_points

    given = [v for v in (args.seeding_mask, args.seeding_group, args.seeds) if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --seeding_mask, --seeding_group, --seeds")
    if args.seeds is not None:
        if not Path(args.seeds).is_file():
            raise DataError(f"--seeds '{args.seeds}' does not exist")
        try:
            points = np.load(args.seeds) if args.seeds.endswith(".npy") \
                else np.loadtxt(args.seeds, ndmin=2)
        except ValueError as exc:
            raise DataError(f"--seeds '{args.seeds}' cannot be read: {exc}") from exc
        return seeds_from_points(points, affine, shape)
    mask = _load_mask(subset, subject, args.seeding_mask, args.seeding_group,
                      args.seeding_threshold, "seeding")
    if mask is None or mask.shape != shape:
        raise DataError(f"the seeding mask has shape {None if mask is None else mask.shape}, "
                        f"the subject's volume {shape}")
    return seeds_from_mask(mask, args.seeds_per_voxel, args.seed)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from dwi_mtl.data import MultiSubjectDataset
    from dwi_mtl.data.neighborhood import get_neighborhood_offsets
    from dwi_mtl.tracking import Tracker, TrackingOptions, load_trained_model, save_tractogram

    out = Path(args.out_tractogram)
    if out.suffix not in (".trk", ".tck"):
        raise ConfigError(f"out_tractogram '{out}' must end with .trk or .tck")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"'{out}' exists; use -f to overwrite it")
    options = TrackingOptions(args.step_size, args.max_angle, args.min_length, args.max_length,
                              args.algo == "prob", args.eos_threshold, not args.unidirectional,
                              args.batch_size, args.seed)
    options.check()
    model, params = load_trained_model(args.experiments_path, args.experiment_name, args.which,
                                       args.device)
    loader_config = (params.get("batch_loader") or {}).get("config") or {}
    input_group = loader_config.get("input_group")
    if input_group is None:
        raise ConfigError("the experiment's batch loader has no input_group: not a tracking model")
    hdf5_file = args.hdf5_file or ((params.get("dataset") or {}).get("config") or {}).get(
        "hdf5_file")
    if not hdf5_file or not Path(hdf5_file).is_file():
        raise DataError(f"dataset '{hdf5_file}' not found; pass --hdf5_file")
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    split, subject = _subject_index({name: dataset.subset(name).subject_names
                                     for name in ("training", "validation", "testing")},
                                    args.subject)
    subset = dataset.subset(split)
    volume = subset.get_volume(subject, input_group)
    affine = subset.get_affine(subject, input_group)
    shape = tuple(volume.shape[:3])
    seeds = _seeds(args, subset, subject, affine, shape)
    stopping = _load_mask(subset, subject, args.tracking_mask, args.tracking_group,
                          args.tracking_threshold, "tracking")
    offsets = get_neighborhood_offsets(loader_config.get("neighborhood_type"),
                                       loader_config.get("neighborhood_radius"))
    tracker = Tracker(model, volume, subset.get_voxres(subject, input_group), options,
                      offsets, stopping, args.device)
    streamlines = tracker.track(seeds)
    save_tractogram(out, streamlines, affine, shape)
    logger.info("%d streamlines from %d seeds written to %s (subject %s)", len(streamlines),
                len(seeds), out, subset.subject_names[subject])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``dwi_mtl_track_from_model``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
