"""Synthetic multi-subject HDF5 files: the benchmarks' "standard workload" and test fixtures.

The file has the real layout (written by :mod:`dwi_mtl.data.hdf5_writer`), so everything that
reads a dataset runs unchanged on it. Content, per subject:

- ``input``: a smooth float32 volume (sums of low-frequency sinusoids plus a little noise),
  ``volume_shape`` x ``nb_features``, 1 mm isotropic voxels;
- ``streamlines``: ``nb_streamlines`` smooth random curves at ``step_size`` mm, all inside the
  volume, with lengths drawn from ``min_length_mm + (max - min) * Beta(2, 3)`` (mean 100 mm for
  the 60-160 mm default, i.e. ~100 points at 1 mm, the size of real bundles' streamlines);
  ``data_per_streamline/label`` is an int64 class in [0, 4) (for classification tests).

Everything is derived from ``seed`` with :func:`dwi_mtl.state.derive_generator`, so the same
arguments always give byte-identical arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dwi_mtl.data.hdf5_layout import SPLITS
from dwi_mtl.data.hdf5_writer import (
    atomic_hdf5,
    write_file_attrs,
    write_streamline_group,
    write_volume_group,
)
from dwi_mtl.errors import ConfigError
from dwi_mtl.state import derive_generator

VOLUME_GROUP = "input"
STREAMLINE_GROUP = "streamlines"
NB_LABELS = 4


def subject_name(index: int) -> str:
    """Name of the synthetic subject ``index`` (``subj-00``, ``subj-01``, ...)."""
    return f"subj-{index:02d}"


def default_splits(nb_subjects: int) -> dict[str, list[str]]:
    """Default splits: the last subject tests, the one before validates, the rest train.

    With fewer than three subjects, testing (then validation) stays empty.
    """
    names = [subject_name(i) for i in range(nb_subjects)]
    if nb_subjects >= 3:
        return {"training": names[:-2], "validation": [names[-2]], "testing": [names[-1]]}
    if nb_subjects == 2:
        return {"training": names[:1], "validation": names[1:], "testing": []}
    return {"training": names, "validation": [], "testing": []}


def synthetic_volume(shape: Sequence[int], nb_features: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Return a smooth random (X, Y, Z, F) float32 volume."""
    axes = [np.linspace(0.0, 2.0 * np.pi, n, dtype=np.float32) for n in shape]
    freqs = rng.uniform(0.5, 2.0, size=(nb_features, 3)).astype(np.float32)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(nb_features, 3)).astype(np.float32)
    x = np.sin(axes[0][:, None] * freqs[:, 0] + phases[:, 0])  # (X, F)
    y = np.sin(axes[1][:, None] * freqs[:, 1] + phases[:, 1])  # (Y, F)
    z = np.sin(axes[2][:, None] * freqs[:, 2] + phases[:, 2])  # (Z, F)
    volume = x[:, None, None, :] + y[None, :, None, :] * z[None, None, :, :]
    volume += 0.05 * rng.standard_normal(volume.shape, dtype=np.float32)
    return volume.astype(np.float32)


def synthetic_streamlines(shape: Sequence[int], nb_streamlines: int, min_length_mm: float,
                          max_length_mm: float, step_size: float,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random walks inside the volume (1 mm voxels), reflected at its walls.

    Returns:
        ``(points, lengths)``: packed (P, 3) float32 voxel coordinates (corner origin) and
        (N,) int64 numbers of points.
    """
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    fraction = rng.beta(2.0, 3.0, size=nb_streamlines)
    lengths_mm = min_length_mm + (max_length_mm - min_length_mm) * fraction
    lengths = np.maximum(np.round(lengths_mm / step_size).astype(np.int64) + 1, 2)
    max_len = int(lengths.max()) if nb_streamlines else 0
    walk = np.empty((max_len, nb_streamlines, 3), dtype=np.float64)
    position = rng.uniform(0.5, upper, size=(nb_streamlines, 3))
    direction = _unit(rng.standard_normal((nb_streamlines, 3)))
    for step in range(max_len):
        walk[step] = position
        direction = _unit(direction + 0.15 * rng.standard_normal((nb_streamlines, 3)))
        candidate = position + step_size * direction
        outside = (candidate < 0.5) | (candidate > upper)
        direction = np.where(outside, -direction, direction)
        position = np.clip(position + step_size * direction, 0.5, upper)
    mask = np.arange(max_len)[:, None] < lengths[None, :]
    points = walk.transpose(1, 0, 2)[mask.T]
    return points.astype(np.float32), lengths


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def write_synthetic_hdf5(path: str | os.PathLike[str], nb_subjects: int = 3,
                         volume_shape: Sequence[int] = (64, 64, 48), nb_features: int = 28,
                         nb_streamlines: int = 5000, min_length_mm: float = 60.0,
                         max_length_mm: float = 160.0, step_size: float = 1.0, seed: int = 0,
                         splits: Mapping[str, Sequence[str]] | None = None,
                         points_chunks: int | None = None, compression: str | None = None,
                         force: bool = True) -> Path:
    """Write a synthetic multi-subject dataset and return its path.

    Args:
        path: output HDF5 file (written to a temporary name, renamed at the end).
        nb_subjects: number of subjects (``subj-00``, ``subj-01``, ...).
        volume_shape: (X, Y, Z) of the ``input`` volume group.
        nb_features: features per voxel of ``input``.
        nb_streamlines: streamlines per subject in the ``streamlines`` group.
        min_length_mm: shortest streamline length.
        max_length_mm: longest streamline length.
        step_size: distance between consecutive points (mm); stored as the file's step_size.
        seed: every array is derived from it.
        splits: split name -> subject names; default: see :func:`default_splits`.
        points_chunks: rows per chunk of the points dataset (None: contiguous; benchmarks).
        compression: h5py compression filter of the points dataset (benchmarks).
        force: overwrite an existing file.

    Raises:
        ConfigError: bad sizes, lengths or splits (naming the argument).
    """
    _check_arguments(nb_subjects, volume_shape, nb_features, nb_streamlines,
                     min_length_mm, max_length_mm, step_size)
    names = [subject_name(i) for i in range(nb_subjects)]
    chosen = (default_splits(nb_subjects) if splits is None
              else {k: list(v) for k, v in splits.items()})
    _check_splits(chosen, names)
    affine = np.eye(4)
    affine[:3, 3] = -np.asarray(volume_shape, dtype=np.float64) / 2.0
    config = {VOLUME_GROUP: {"type": "volume", "files": ["synthetic"], "standardization": "none"},
              STREAMLINE_GROUP: {"type": "streamlines", "files": ["synthetic"]}}
    with atomic_hdf5(path, force=force) as h5:
        write_file_attrs(h5, chosen, step_size=step_size, compress=None, config=config)
        for index, name in enumerate(names):
            rng = derive_generator(seed, index)
            subject = h5.create_group(name)
            volume = synthetic_volume(volume_shape, nb_features, rng)
            write_volume_group(subject, VOLUME_GROUP, volume, affine, (1.0, 1.0, 1.0))
            points, lengths = synthetic_streamlines(volume_shape, nb_streamlines, min_length_mm,
                                                    max_length_mm, step_size, rng)
            labels = rng.integers(0, NB_LABELS, size=nb_streamlines, dtype=np.int64)
            write_streamline_group(subject, STREAMLINE_GROUP, points, lengths, affine,
                                   volume_shape, (1.0, 1.0, 1.0),
                                   data_per_streamline={"label": labels},
                                   points_chunks=points_chunks, compression=compression)
    return Path(path)


def _check_arguments(nb_subjects: int, volume_shape: Sequence[int], nb_features: int,
                     nb_streamlines: int, min_length_mm: float, max_length_mm: float,
                     step_size: float) -> None:
    if nb_subjects < 1:
        raise ConfigError(f"nb_subjects must be >= 1, got {nb_subjects}")
    if len(volume_shape) != 3 or min(volume_shape) < 2:
        raise ConfigError(f"volume_shape must be 3 sizes >= 2, got {tuple(volume_shape)}")
    if nb_features < 1:
        raise ConfigError(f"nb_features must be >= 1, got {nb_features}")
    if nb_streamlines < 1:
        raise ConfigError(f"nb_streamlines must be >= 1, got {nb_streamlines}")
    if step_size <= 0:
        raise ConfigError(f"step_size must be > 0, got {step_size}")
    if not 0 < min_length_mm <= max_length_mm:
        raise ConfigError("need 0 < min_length_mm <= max_length_mm, "
                          f"got {min_length_mm}, {max_length_mm}")


def _check_splits(splits: Mapping[str, Sequence[str]], names: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for split, members in splits.items():
        if split not in SPLITS:
            raise ConfigError(f"splits: unknown split {split!r} (expected one of {SPLITS})")
        for member in members:
            if member not in names:
                raise ConfigError(f"splits[{split!r}]: unknown subject {member!r} "
                                  f"(have {list(names)})")
            if member in seen:
                raise ConfigError(f"splits: subject {member!r} is in both {seen[member]!r} "
                                  f"and {split!r}")
            seen[member] = split
