"""Conversions between the library's voxel space (corner origin) and RAS millimetres.

A volume's affine maps voxel *centres* (index ``i``) to RAS mm; in the corner-origin voxel
space the centre of voxel ``i`` is at ``i + 0.5``, hence the half-voxel shifts.
"""

from __future__ import annotations

import numpy as np


def voxel_to_rasmm(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(P, 3)`` corner-origin voxel coordinates -> RAS mm."""
    centred = np.asarray(points, dtype=np.float64) - 0.5
    return centred @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def rasmm_to_voxel(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(P, 3)`` RAS mm -> corner-origin voxel coordinates."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return np.asarray(points, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3] + 0.5


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """``(3,)`` voxel sizes in mm (norms of the affine's columns)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
