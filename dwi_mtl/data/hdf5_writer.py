"""Writing the HDF5 layout: atomic output file, file attributes, volume and streamline groups.

Both the real creation (:mod:`dwi_mtl.data.hdf5_creation`) and the synthetic benchmark files
(:mod:`dwi_mtl.data.synthetic`) go through these functions, so there is one writer of the
layout described in :mod:`dwi_mtl.data.hdf5_layout`.

Storage choice: the points dataset is stored *contiguous* (no chunking, no compression) by
default. Random batch reads then cost one seek per coalesced range; chunked or compressed
points make every small read decompress a whole chunk (see benchmarks/bench_dataset.py,
which measures the alternatives).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dwi_mtl.data.hdf5_layout import (
    DPS_GROUP,
    FORMAT_VERSION,
    SPLIT_ATTRS,
    SPLITS,
    STREAMLINES,
    VOLUME,
)
from dwi_mtl.errors import ExperimentExistsError


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike[str], force: bool = False) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file next to ``path`` and rename it to ``path`` on success.

    On any exception the temporary file is removed, so no half-written output remains.

    Args:
        path: final output path.
        force: overwrite an existing ``path``; otherwise an existing file is an error.

    Raises:
        ExperimentExistsError: ``path`` exists and ``force`` is False.
    """
    final = Path(path)
    if final.exists() and not force:
        raise ExperimentExistsError(
            f"output file '{final}' already exists (use -f/force to overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as h5:
            yield h5
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_file_attrs(h5: h5py.File, splits: Mapping[str, Sequence[str]],
                     step_size: float | None, compress: float | None,
                     config: Mapping[str, Any], nb_points: int | None = None) -> None:
    """Write the file-level attributes: version, subject splits, resampling and config."""
    h5.attrs["version"] = FORMAT_VERSION
    for split in SPLITS:
        names = [str(n) for n in splits.get(split, [])]
        h5.attrs[SPLIT_ATTRS[split]] = np.array(names, dtype=h5py.string_dtype())
    h5.attrs["step_size"] = "None" if step_size is None else float(step_size)
    h5.attrs["compress"] = "None" if compress is None else float(compress)
    h5.attrs["nb_points"] = "None" if nb_points is None else int(nb_points)
    h5.attrs["config"] = json.dumps(dict(config), sort_keys=True)


def write_volume_group(subject: h5py.Group, name: str, data: np.ndarray,
                       affine: np.ndarray,
                       voxres: Sequence[float] | np.ndarray) -> h5py.Group:
    """Write a 4D float32 volume group (``data``, ``affine``, ``voxres``, ``nb_features``)."""
    if data.ndim == 3:
        data = data[..., None]
    group = subject.create_group(name)
    group.attrs["type"] = VOLUME
    group.attrs["affine"] = np.asarray(affine, dtype=np.float64)
    group.attrs["voxres"] = np.asarray(voxres, dtype=np.float64)
    group.attrs["nb_features"] = int(data.shape[-1])
    group.create_dataset("data", data=np.ascontiguousarray(data, dtype=np.float32))
    return group


def write_streamline_group(subject: h5py.Group, name: str, points: np.ndarray,
                           lengths: np.ndarray, affine: np.ndarray,
                           dimensions: Sequence[int],
                           voxel_sizes: Sequence[float] | np.ndarray,
                           voxel_order: str = "RAS",
                           data_per_streamline: Mapping[str, np.ndarray] | None = None,
                           points_chunks: int | None = None,
                           compression: str | None = None) -> h5py.Group:
    """Write a streamline group in voxel space with the corner origin.

    Args:
        subject: the subject's HDF5 group.
        name: the group name from the config.
        points: (P, 3) packed points, voxel coordinates, corner origin.
        lengths: (N,) number of points of each streamline (sums to P).
        affine: (4, 4) voxel-to-RAS-mm affine of the reference volume.
        dimensions: (3,) volume shape.
        voxel_sizes: (3,) voxel sizes in mm (to compute ``euclidean_lengths`` in mm).
        voxel_order: orientation code of the reference, stored for dwi_ml compatibility.
        data_per_streamline: key -> (N, ...) array stored under ``data_per_streamline/``.
        points_chunks: rows per chunk of the points dataset; None stores it contiguous.
        compression: an h5py compression filter for the points (None: uncompressed).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    points = np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 3)
    offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    group = subject.create_group(name)
    group.attrs["type"] = STREAMLINES
    group.attrs["space"] = "vox"
    group.attrs["origin"] = "corner"
    group.attrs["affine"] = np.asarray(affine, dtype=np.float64)
    group.attrs["dimensions"] = np.asarray(dimensions, dtype=np.int64)
    group.attrs["voxel_sizes"] = np.asarray(voxel_sizes, dtype=np.float64)
    group.attrs["voxel_order"] = voxel_order
    chunks = None
    if points_chunks is not None and len(points) > 0:
        chunks = (min(points_chunks, len(points)), 3)
    group.create_dataset("data", data=points, chunks=chunks, compression=compression)
    group.create_dataset("offsets", data=offsets)
    group.create_dataset("lengths", data=lengths)
    group.create_dataset("euclidean_lengths",
                         data=euclidean_lengths_mm(points, lengths, voxel_sizes))
    if data_per_streamline:
        dps = group.create_group(DPS_GROUP)
        for key, values in data_per_streamline.items():
            dps.create_dataset(key, data=np.asarray(values))
    return group


def euclidean_lengths_mm(points: np.ndarray, lengths: np.ndarray,
                         voxel_sizes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return the length in mm of each packed streamline (float32), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(len(lengths), dtype=np.float32)
    if len(points) < 2 or len(lengths) == 0:
        return out
    steps = np.diff(np.asarray(points, dtype=np.float64) * np.asarray(voxel_sizes), axis=0)
    seg = np.sqrt((steps**2).sum(axis=1))
    # Drop the "segments" that join the last point of one streamline to the next one's first.
    ends = np.cumsum(lengths)[:-1] - 1
    seg[ends[(ends >= 0) & (ends < len(seg))]] = 0.0
    cumulative = np.concatenate([[0.0], np.cumsum(seg)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    last = np.minimum(starts + np.maximum(lengths, 1) - 1, len(points) - 1)
    starts = np.minimum(starts, len(points) - 1)
    out[:] = cumulative[last] - cumulative[starts]
    return out
