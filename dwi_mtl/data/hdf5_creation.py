"""Creating one HDF5 dataset from a folder of subjects, a JSON config and subject splits.

:func:`create_hdf5_dataset` reads, for every subject of the splits, the files each config group
names (NIfTI volumes through nibabel; .trk/.tck/.trx tractograms), validates everything, and
writes the layout of :mod:`dwi_mtl.data.hdf5_layout` (the dwi_ml layout). Output goes to a
temporary file renamed at the very end, so a failure on any subject leaves no output behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np

from dwi_mtl.data.creation_config import (
    StreamlineGroupConfig,
    VolumeGroupConfig,
    config_to_json,
    load_config,
)
from dwi_mtl.data.hdf5_layout import DPS_GROUP, SPLITS
from dwi_mtl.data.hdf5_writer import (
    atomic_hdf5,
    write_file_attrs,
    write_streamline_group,
    write_volume_group,
)
from dwi_mtl.data.tractograms import (
    check_header,
    check_resampling,
    find_invalid,
    read_tractogram,
    resample,
    to_voxel_corner,
)
from dwi_mtl.data.volumes import load_volume_group
from dwi_mtl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grid:
    """A reference voxel grid: vox->RAS mm affine, 3D shape, voxel sizes and its source file."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    voxel_sizes: np.ndarray
    source: Path


@dataclass(frozen=True)
class Resampling:
    """Resampling applied to every streamline at creation (at most one field set)."""

    step_size: float | None = None
    nb_points: int | None = None
    compress: float | None = None


def create_hdf5_dataset(subjects_dir: str | os.PathLike[str],
                        config: Mapping[str, Any] | str | os.PathLike[str],
                        output_file: str | os.PathLike[str],
                        training_subjects: Sequence[str],
                        validation_subjects: Sequence[str] = (),
                        testing_subjects: Sequence[str] = (),
                        step_size: float | None = None, nb_points: int | None = None,
                        compress: float | None = None, remove_invalid: bool = False,
                        force: bool = False) -> Path:
    """Create an HDF5 dataset file from subject folders.

    Args:
        subjects_dir: folder with one sub-folder per subject.
        config: group config (mapping or JSON file; see :mod:`dwi_mtl.data.creation_config`).
        output_file: the HDF5 file to write.
        training_subjects: subject folder names of the training split.
        validation_subjects: subject folder names of the validation split.
        testing_subjects: subject folder names of the testing split.
        step_size: resample every streamline to this step (mm).
        nb_points: resample every streamline to this number of points.
        compress: compress streamlines with this tolerance (mm).
        remove_invalid: drop (and count) streamlines outside the volume instead of failing.
        force: overwrite an existing ``output_file``.

    Returns:
        The path of the written file.

    Raises:
        ConfigError: bad config, splits or resampling options.
        DataError: a missing/unreadable/inconsistent input file (named in the message).
        ExperimentExistsError: ``output_file`` exists and ``force`` is False.
    """
    check_resampling(step_size, nb_points, compress)
    groups = load_config(config)
    root = Path(subjects_dir)
    if not root.is_dir():
        raise DataError(f"subjects folder '{root}' does not exist")
    splits = _check_splits(root, {"training": training_subjects,
                                  "validation": validation_subjects,
                                  "testing": testing_subjects})
    resampling = Resampling(step_size, nb_points, compress)
    with atomic_hdf5(output_file, force=force) as h5:
        write_file_attrs(h5, splits, step_size=step_size, compress=compress,
                         config=config_to_json(groups), nb_points=nb_points)
        for subject in (s for split in SPLITS for s in splits[split]):
            logger.info("subject %s", subject)
            _write_subject(h5.create_group(subject), root / subject, groups, resampling,
                           remove_invalid)
    logger.info("wrote %s", output_file)
    return Path(output_file)


def _check_splits(root: Path, splits: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for split, names in splits.items():
        if isinstance(names, str):
            raise ConfigError(f"{split} subjects must be a list of names, not the string {names!r}")
        out[split] = [str(n) for n in names]
        for name in out[split]:
            if name in seen:
                raise ConfigError(f"subject '{name}' is in both the {seen[name]} and the {split} "
                                  "subjects")
            seen[name] = split
            if not (root / name).is_dir():
                raise DataError(f"{split} subject '{name}' has no folder '{root / name}'")
    if not seen:
        raise ConfigError("no subject in the training, validation or testing lists")
    return out


def resolve_files(subject_dir: Path, patterns: Sequence[str], where: str) -> list[list[Path]]:
    """Expand each pattern (wildcards allowed) inside ``subject_dir``; each must match a file."""
    resolved: list[list[Path]] = []
    for pattern in patterns:
        matches = sorted(p for p in subject_dir.glob(pattern) if p.is_file())
        if not matches:
            raise DataError(f"{where}: no file matches '{pattern}' in '{subject_dir}'")
        resolved.append(matches)
    return resolved


def _write_subject(subject: h5py.Group, subject_dir: Path,
                   groups: Mapping[str, VolumeGroupConfig | StreamlineGroupConfig],
                   resampling: Resampling, remove_invalid: bool) -> None:
    first_grid: Grid | None = None
    for name, group in groups.items():
        if not isinstance(group, VolumeGroupConfig):
            continue
        where = f"subject '{subject_dir.name}' group '{name}'"
        files = [p for matches in resolve_files(subject_dir, group.files, where) for p in matches]
        masks = [p for m in resolve_files(subject_dir, group.std_mask, where) for p in m]
        volume = load_volume_group(files, group.standardization, masks)
        h5_group = write_volume_group(subject, name, volume.data, volume.affine, volume.voxres)
        h5_group.attrs["standardization"] = group.standardization
        h5_group.attrs["means"] = volume.means
        h5_group.attrs["stds"] = volume.stds
        h5_group.attrs["files"] = [str(p.relative_to(subject_dir)) for p in files]
        if first_grid is None:
            first_grid = Grid(volume.affine, tuple(volume.data.shape[:3]),  # type: ignore[arg-type]
                              volume.voxres, files[0])
    for name, group in groups.items():
        if isinstance(group, StreamlineGroupConfig):
            _write_streamlines(subject, subject_dir, name, group, first_grid, resampling,
                               remove_invalid)


def _reference_grid(subject_dir: Path, group: StreamlineGroupConfig, where: str,
                    default: Grid | None, files: Sequence[Path]) -> Grid:
    if group.reference is not None:
        matches = resolve_files(subject_dir, [group.reference], where)[0]
        return _grid_of_nifti(matches[0])
    if default is not None:
        return default
    for path in files:
        if path.suffix.lower() in (".trk", ".trx"):
            raw = read_tractogram(path)
            if raw.affine is not None and raw.dimensions is not None:
                sizes = np.sqrt((raw.affine[:3, :3] ** 2).sum(axis=0))
                return Grid(raw.affine, raw.dimensions, sizes, path)
    raise ConfigError(f"{where}: .tck files need a 'reference' volume or a volume group")


def _grid_of_nifti(path: Path) -> Grid:
    try:
        image: Any = nib.load(str(path))
        shape = tuple(int(s) for s in image.shape[:3])
        zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
        affine = np.asarray(image.affine, dtype=np.float64)
        return Grid(affine, shape, zooms, path)  # type: ignore[arg-type]
    except Exception as exc:
        raise DataError(f"reference volume '{path}' cannot be read: {exc}") from exc


def _write_streamlines(subject: h5py.Group, subject_dir: Path, name: str,
                       group: StreamlineGroupConfig, default_grid: Grid | None,
                       resampling: Resampling, remove_invalid: bool) -> None:
    where = f"subject '{subject_dir.name}' group '{name}'"
    entries = resolve_files(subject_dir, group.files, where)
    grid = _reference_grid(subject_dir, group, where, default_grid,
                           [p for m in entries for p in m])
    all_points, all_lengths, labels = [], [], []
    dps: dict[str, list[np.ndarray]] = {key: [] for key in group.data_per_streamline}
    removed = 0
    for label, matches in enumerate(entries):
        for path in matches:
            points, lengths, kept_dps, nb_removed = _load_one(path, group, grid, resampling,
                                                              remove_invalid)
            removed += nb_removed
            all_points.append(points)
            all_lengths.append(lengths)
            labels.append(np.full(len(lengths), label, dtype=np.int64))
            for key, values in kept_dps.items():
                dps[key].append(values)
    lengths = np.concatenate(all_lengths)
    if len(lengths) == 0:
        raise DataError(f"{where}: no streamline left after removing {removed} invalid ones")
    data_per_streamline = {key: _concatenate_dps(values, key, where) for key, values in dps.items()}
    if group.file_label is not None:
        data_per_streamline[group.file_label] = np.concatenate(labels)
    h5_group = write_streamline_group(
        subject, name, np.concatenate(all_points), lengths, grid.affine, grid.shape,
        grid.voxel_sizes, voxel_order="".join(nib.aff2axcodes(grid.affine)),
        data_per_streamline=data_per_streamline)
    h5_group.attrs["nb_removed_invalid"] = removed
    h5_group.attrs["files"] = [str(p.relative_to(subject_dir)) for m in entries for p in m]
    h5_group.attrs["reference"] = str(grid.source)
    if group.file_label is not None:
        h5_group[DPS_GROUP][group.file_label].attrs["names"] = list(group.files)


def _load_one(path: Path, group: StreamlineGroupConfig, grid: Grid, resampling: Resampling,
              remove_invalid: bool) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], int]:
    raw = read_tractogram(path, group.data_per_streamline)
    check_header(raw, grid.affine, grid.shape, grid.source)
    streamlines = resample(raw.streamlines, resampling.step_size, resampling.nb_points,
                           resampling.compress)
    points, lengths = to_voxel_corner(streamlines, grid.affine)
    invalid = find_invalid(points, lengths, grid.shape)
    nb_invalid = int(invalid.sum())
    if nb_invalid and not remove_invalid:
        raise DataError(f"tractogram '{path}': {nb_invalid} of {len(lengths)} streamlines are "
                        f"outside the volume of '{grid.source}' (or have < 2 points / NaN); "
                        "use --remove_invalid to drop them")
    if nb_invalid:
        logger.warning("tractogram '%s': removed %d of %d invalid streamlines", path, nb_invalid,
                       len(lengths))
        keep_points = np.repeat(~invalid, lengths)
        points, lengths = points[keep_points], lengths[~invalid]
    kept = {k: np.asarray(v)[~invalid] for k, v in raw.data_per_streamline.items()}
    return points, lengths, kept, nb_invalid


def _concatenate_dps(values: list[np.ndarray], key: str, where: str) -> np.ndarray:
    shapes = {v.shape[1:] for v in values}
    if len(shapes) > 1:
        raise DataError(f"{where}: data_per_streamline '{key}' has shapes {sorted(shapes)} "
                        "across files")
    return np.concatenate(values, axis=0)
