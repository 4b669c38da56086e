"""Loading the NIfTI files of a volume group and standardizing them.

A group's files (same grid) are concatenated on the last axis; a 3D file counts as one
feature. Standardization (z-scoring) statistics are computed over the voxels of the mask (all
voxels without mask) and the transform is applied to every voxel, so it stays an exact affine
map of the input. Modes, as in dwi_ml:

- ``all``: one mean and one std over every feature of every file;
- ``independent``: one mean and std per feature;
- ``per_file``: one mean and std per input file (over that file's features);
- ``none``: stored as read (as float32).

A feature with std 0 is only centred (divided by 1). The statistics are returned so they can be
stored as attributes (``means``, ``stds``) for later use on new data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from dwi_mtl.errors import DataError

logger = logging.getLogger(__name__)

#: Largest difference (mm) between two affines considered the same grid.
AFFINE_TOLERANCE = 1e-3


@dataclass
class LoadedVolume:
    """A group's volume, ready to store."""

    data: np.ndarray
    affine: np.ndarray
    voxres: np.ndarray
    means: np.ndarray
    stds: np.ndarray


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load a NIfTI file as float32 ``(data, affine, zooms[:3])``, naming it in every error."""
    if not path.is_file():
        raise DataError(f"volume file '{path}' does not exist")
    try:
        image: Any = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
        affine = np.asarray(image.affine, dtype=np.float64)
        zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise DataError(f"volume file '{path}' cannot be read: {exc}") from exc
    if data.ndim not in (3, 4):
        raise DataError(f"volume file '{path}': expected a 3D or 4D image, got shape {data.shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"volume file '{path}': {bad} NaN or infinite value(s)")
    return data, affine, zooms


def load_mask(paths: Sequence[Path], shape: tuple[int, ...],
              affine: np.ndarray) -> np.ndarray | None:
    """Union of binary masks (None without files), checked against the volume's grid."""
    if not paths:
        return None
    mask = np.zeros(shape[:3], dtype=bool)
    for path in paths:
        data, mask_affine, _ = load_nifti(path)
        check_same_grid(path, data.shape, mask_affine, shape, affine)
        mask |= (data.reshape(*data.shape[:3], -1) > 0).any(axis=-1)
    if not mask.any():
        raise DataError(f"mask file(s) {[str(p) for p in paths]} select no voxel")
    return mask


def check_same_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray,
                    ref_shape: tuple[int, ...], ref_affine: np.ndarray) -> None:
    """Raise when ``path``'s 3D grid differs from the reference grid."""
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        raise DataError(f"'{path}': grid {tuple(shape[:3])} differs from the group's first "
                        f"file {tuple(ref_shape[:3])}")
    if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE):
        raise DataError(f"'{path}': affine differs from the group's first file by "
                        f"{np.abs(affine - ref_affine).max():.4g} mm")


def load_volume_group(files: Sequence[Path], standardization: str,
                      mask_files: Sequence[Path] = ()) -> LoadedVolume:
    """Load, concatenate and standardize the files of one volume group."""
    arrays: list[np.ndarray] = []
    affine = voxres = None
    shape: tuple[int, ...] = ()
    for path in files:
        data, file_affine, zooms = load_nifti(path)
        if affine is None:
            affine, voxres, shape = file_affine, zooms, data.shape
        else:
            check_same_grid(path, data.shape, file_affine, shape, affine)
        arrays.append(data if data.ndim == 4 else data[..., None])
    if affine is None or voxres is None:
        raise DataError("a volume group needs at least one file")
    mask = load_mask(list(mask_files), shape, affine)
    sizes = [a.shape[-1] for a in arrays]
    volume = np.concatenate(arrays, axis=-1).astype(np.float32, copy=False)
    means, stds = standardize(volume, standardization, sizes, mask)
    return LoadedVolume(volume, affine, voxres, means, stds)


def standardize(volume: np.ndarray, mode: str, file_sizes: Sequence[int],
                mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardize ``volume`` (X, Y, Z, F) in place; return the per-feature means and stds.

    Args:
        volume: float32 data, modified in place.
        mode: ``all``, ``independent``, ``per_file`` or ``none``.
        file_sizes: number of features of each concatenated file (for ``per_file``).
        mask: voxels used for the statistics (None: all voxels).
    """
    nb_features = volume.shape[-1]
    if mode == "none":
        return np.zeros(nb_features), np.ones(nb_features)
    samples = volume[mask] if mask is not None else volume.reshape(-1, nb_features)
    samples = samples.astype(np.float64)
    if mode == "independent":
        means, stds = samples.mean(axis=0), samples.std(axis=0)
    elif mode == "all":
        means = np.full(nb_features, samples.mean())
        stds = np.full(nb_features, samples.std())
    elif mode == "per_file":
        means, stds = np.empty(nb_features), np.empty(nb_features)
        start = 0
        for size in file_sizes:
            block = samples[:, start:start + size]
            means[start:start + size], stds[start:start + size] = block.mean(), block.std()
            start += size
    else:
        raise DataError(f"unknown standardization {mode!r}")
    flat = stds <= np.finfo(np.float32).tiny
    if flat.any():
        logger.warning("standardization: %d constant feature(s) are only centred", int(flat.sum()))
        stds = np.where(flat, 1.0, stds)
    volume -= means.astype(np.float32)
    volume /= stds.astype(np.float32)
    return means, stds
