"""Reading and validating the metadata of a dataset file (everything but the bulk arrays).

Metadata is small (per streamline: offset, length, euclidean length), so both lazy and
in-memory datasets hold it in memory; only points, volumes and data-per-streamline values
are read lazily. Every inconsistency found here is reported as a :class:`DataError` naming
the file, subject and group, so a malformed file fails at construction, not mid-training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dwi_mtl.data.hdf5_layout import (
    DPS_GROUP,
    SPLIT_ATTRS,
    SPLITS,
    STREAMLINES,
    group_type,
    normalize_origin,
    normalize_space,
    stored_to_voxel_corner,
    to_optional_float,
    to_str,
    to_str_list,
)
from dwi_mtl.data.hdf5_writer import euclidean_lengths_mm
from dwi_mtl.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeInfo:
    """Shape and geometry of one subject's volume group."""

    shape: tuple[int, ...]
    affine: np.ndarray
    voxres: np.ndarray
    nb_features: int


@dataclass(frozen=True)
class StreamlineInfo:
    """Per-streamline metadata and stored coordinate system of one streamline group."""

    offsets: np.ndarray
    lengths: np.ndarray
    euclidean_lengths: np.ndarray
    space: str
    origin: str
    affine: np.ndarray
    voxel_sizes: np.ndarray
    dps_keys: tuple[str, ...]


@dataclass
class DatasetMetadata:
    """Everything a :class:`~dwi_mtl.data.MultiSubjectDataset` needs besides bulk arrays."""

    path: Path
    version: str | None
    splits: dict[str, list[str]]
    step_size: float | None
    compress: float | None
    config: str | None
    volume_groups: list[str]
    streamline_groups: list[str]
    nb_features: dict[str, int]
    volumes: dict[tuple[str, str], VolumeInfo] = field(default_factory=dict)
    streamlines: dict[tuple[str, str], StreamlineInfo] = field(default_factory=dict)


def read_metadata(h5: h5py.File, path: Path) -> DatasetMetadata:
    """Read and validate the file attributes and every split subject's groups."""
    splits = {split: to_str_list(h5.attrs.get(SPLIT_ATTRS[split])) for split in SPLITS}
    _check_splits(splits, h5, path)
    subjects = [name for split in SPLITS for name in splits[split]]
    if not subjects:
        raise DataError(f"{path}: no subject in {list(SPLIT_ATTRS.values())} file attributes")
    groups = _group_types(h5, subjects[0], path)
    meta = DatasetMetadata(
        path=path,
        version=to_str(h5.attrs["version"]) if "version" in h5.attrs else None,
        splits=splits,
        step_size=to_optional_float(h5.attrs.get("step_size")),
        compress=to_optional_float(h5.attrs.get("compress")),
        config=to_str(h5.attrs["config"]) if "config" in h5.attrs else None,
        volume_groups=[g for g, t in groups.items() if t != STREAMLINES],
        streamline_groups=[g for g, t in groups.items() if t == STREAMLINES],
        nb_features={},
    )
    for subject in subjects:
        subject_groups = _group_types(h5, subject, path)
        if subject_groups != groups:
            raise DataError(f"{path}: subject '{subject}' has groups {subject_groups}, but "
                            f"'{subjects[0]}' has {groups}; every subject needs the same groups")
        for name in meta.volume_groups:
            info = _volume_info(h5[subject][name], f"{path}:/{subject}/{name}")
            expected = meta.nb_features.setdefault(name, info.nb_features)
            if info.nb_features != expected:
                raise DataError(f"{path}:/{subject}/{name}: {info.nb_features} features, but "
                                f"other subjects have {expected}")
            meta.volumes[(subject, name)] = info
        for name in meta.streamline_groups:
            where = f"{path}:/{subject}/{name}"
            meta.streamlines[(subject, name)] = _streamline_info(h5[subject][name], where)
    return meta


def _check_splits(splits: dict[str, list[str]], h5: h5py.File, path: Path) -> None:
    seen: dict[str, str] = {}
    for split, names in splits.items():
        for name in names:
            if name in seen:
                raise DataError(f"{path}: subject '{name}' is in both '{seen[name]}' and '{split}'")
            seen[name] = split
            if name not in h5 or not isinstance(h5[name], h5py.Group):
                raise DataError(f"{path}: subject '{name}' of '{SPLIT_ATTRS[split]}' has no group "
                                "in the file")


def _group_types(h5: h5py.File, subject: str, path: Path) -> dict[str, str]:
    return {name: group_type(h5[subject][name].attrs, f"{path}:/{subject}/{name}")
            for name in sorted(h5[subject].keys())}


def _numeric_dataset(group: h5py.Group, key: str, where: str, kind: str) -> h5py.Dataset:
    """``group[key]``, checked to be a dataset of numbers (not a group, not strings)."""
    if key not in group:
        raise DataError(f"{where}: {kind} group has no '{key}' dataset")
    dataset = group[key]
    if not isinstance(dataset, h5py.Dataset):
        raise DataError(f"{where}: '{key}' must be a dataset, found a {type(dataset).__name__}")
    if dataset.dtype.kind not in "iuf":
        raise DataError(f"{where}: '{key}' must hold numbers, found dtype {dataset.dtype}")
    return dataset


def _affine(attrs: Any, where: str) -> np.ndarray:
    """The ``affine`` attribute as a 4x4 float matrix (identity when absent)."""
    try:
        affine = np.asarray(attrs.get("affine", np.eye(4)), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: 'affine' attribute is not numeric: {exc}") from exc
    if affine.size != 16 or not np.isfinite(affine).all():
        raise DataError(f"{where}: 'affine' attribute must be 16 finite numbers (4x4), got "
                        f"shape {affine.shape}")
    return affine.reshape(4, 4)


def _volume_info(group: h5py.Group, where: str) -> VolumeInfo:
    shape = tuple(int(s) for s in _numeric_dataset(group, "data", where, "volume").shape)
    if len(shape) not in (3, 4):
        raise DataError(f"{where}: volume 'data' must be 3D or 4D, got shape {shape}")
    if "affine" not in group.attrs:
        raise DataError(f"{where}: volume group has no 'affine' attribute")
    affine = _affine(group.attrs, where)
    voxres = group.attrs.get("voxres")
    voxres = (np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) if voxres is None
              else np.asarray(voxres, dtype=np.float64).reshape(-1)[:3])
    nb_features = shape[3] if len(shape) == 4 else 1
    return VolumeInfo(shape=shape, affine=affine, voxres=voxres, nb_features=nb_features)


def _streamline_info(group: h5py.Group, where: str) -> StreamlineInfo:
    points_shape = _numeric_dataset(group, "data", where, "streamline").shape
    if len(points_shape) != 2 or points_shape[1] != 3:
        raise DataError(f"{where}: streamline 'data' must be (points, 3), got {points_shape}")
    offsets = _index_array(group, "offsets", where)
    lengths = _index_array(group, "lengths", where)
    nb_points = int(points_shape[0])
    if len(offsets) != len(lengths):
        raise DataError(f"{where}: {len(offsets)} offsets but {len(lengths)} lengths")
    if len(lengths) and lengths.min() < 0:
        raise DataError(f"{where}: negative streamline lengths")
    if len(lengths) and (offsets.min() < 0 or (offsets + lengths).max() > nb_points):
        raise DataError(f"{where}: offsets/lengths point past the {nb_points} stored points")
    affine = _affine(group.attrs, where)
    voxel_sizes = group.attrs.get("voxel_sizes")
    voxel_sizes = (np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) if voxel_sizes is None
                   else np.asarray(voxel_sizes, dtype=np.float64).reshape(-1)[:3])
    space = normalize_space(group.attrs.get("space"), where)
    origin = normalize_origin(group.attrs.get("origin"), where)
    if "euclidean_lengths" in group:
        euclidean = np.asarray(group["euclidean_lengths"][()], dtype=np.float32).reshape(-1)
    else:
        logger.warning("%s: no 'euclidean_lengths'; computing them from the points", where)
        euclidean = _euclidean_from_points(group, lengths, space, origin, affine, voxel_sizes)
    if len(euclidean) != len(lengths):
        raise DataError(f"{where}: {len(euclidean)} euclidean_lengths for {len(lengths)} "
                        "streamlines")
    dps_keys = tuple(sorted(group[DPS_GROUP].keys())) if DPS_GROUP in group else ()
    for key in dps_keys:
        rows = group[DPS_GROUP][key].shape[:1] if isinstance(group[DPS_GROUP][key],
                                                             h5py.Dataset) else None
        if rows != (len(lengths),):
            raise DataError(f"{where}: data_per_streamline '{key}' has {rows} rows for "
                            f"{len(lengths)} streamlines")
    return StreamlineInfo(offsets=offsets, lengths=lengths, euclidean_lengths=euclidean,
                          space=space, origin=origin, affine=affine, voxel_sizes=voxel_sizes,
                          dps_keys=dps_keys)


def _index_array(group: h5py.Group, key: str, where: str) -> np.ndarray:
    """``offsets`` / ``lengths`` as int64, refusing non-integer values (NaN, fractions)."""
    values = np.asarray(_numeric_dataset(group, key, where, "streamline")[()]).reshape(-1)
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and
                                         (values == np.round(values)).all()):
        raise DataError(f"{where}: '{key}' must hold integers")
    return values.astype(np.int64)


def _euclidean_from_points(group: h5py.Group, lengths: np.ndarray, space: str, origin: str,
                           affine: np.ndarray, voxel_sizes: np.ndarray) -> np.ndarray:
    points = stored_to_voxel_corner(np.asarray(group["data"][()]), space, origin, affine,
                                    voxel_sizes)
    return euclidean_lengths_mm(points, lengths, voxel_sizes)
