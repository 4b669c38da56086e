"""Seeds for tracking: random points inside a mask's voxels, or given RAS-mm points.

Every position is in the library's voxel space with the corner origin (voxel ``(i, j, k)``
covers ``[i, i+1) x [j, j+1) x [k, k+1)``), like the streamlines of the HDF5 files.
"""

from __future__ import annotations

import numpy as np

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.state import derive_generator
from dwi_mtl.tracking.space import rasmm_to_voxel


def seeds_from_mask(mask: np.ndarray, seeds_per_voxel: int = 1, seed: int = 1234) -> np.ndarray:
    """``(S, 3)`` float32 seeds drawn uniformly inside every non-zero voxel of ``mask``.

    Args:
        mask: ``(X, Y, Z)`` array; non-zero voxels are seeded.
        seeds_per_voxel: seeds drawn in each voxel.
        seed: the draws are derived from ``(seed, "seeding")``, so they are reproducible.

    Raises:
        ConfigError: for ``seeds_per_voxel < 1``.
        DataError: for a mask that is not 3D or has no non-zero voxel.
    """
    if isinstance(seeds_per_voxel, bool) or int(seeds_per_voxel) < 1:
        raise ConfigError(f"seeds_per_voxel must be >= 1, got {seeds_per_voxel}")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise DataError(f"the seeding mask must be 3D, got shape {mask.shape}")
    voxels = np.argwhere(mask > 0)
    if voxels.shape[0] == 0:
        raise DataError("the seeding mask has no non-zero voxel")
    corners = np.repeat(voxels, int(seeds_per_voxel), axis=0).astype(np.float64)
    jitter = derive_generator(int(seed), "seeding").random(corners.shape)
    return (corners + jitter).astype(np.float32)


def seeds_from_points(points_rasmm: np.ndarray, affine: np.ndarray,
                      volume_shape: tuple[int, ...]) -> np.ndarray:
    """``(S, 3)`` float32 voxel seeds from RAS-mm points (e.g. a text file of coordinates).

    Raises:
        DataError: when the array is not ``(S, 3)``, or a point is outside the volume.
    """
    points = np.asarray(points_rasmm, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise DataError(f"seed points must be a non-empty (S, 3) array, got shape {points.shape}")
    voxels = rasmm_to_voxel(points, affine)
    dims = np.asarray(volume_shape[:3], dtype=np.float64)
    outside = np.any((voxels < 0) | (voxels >= dims), axis=1)
    if outside.any():
        raise DataError(f"{int(outside.sum())} seed point(s) lie outside the reference volume, "
                        f"e.g. {points[np.argmax(outside)].tolist()} mm")
    return voxels.astype(np.float32)
