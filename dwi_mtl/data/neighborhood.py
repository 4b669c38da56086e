"""Neighbourhoods of points at which volume features are interpolated (in voxel units).

A model that reads only the voxel under each point sees little context; interpolating at a few
offsets around each point and concatenating the features gives it more. Two shapes:

- ``"axes"``: the centre plus 6 points per radius, at ``+-r`` along each voxel axis; ``radius``
  is one positive float or a list of them (``1 + 6 * len(radii)`` points);
- ``"grid"``: every integer offset in ``[-r, r]^3`` for an integer ``r >= 1``
  (``(2r + 1)^3`` points).

The centre offset ``(0, 0, 0)`` is always first, so the first ``F`` features of a point are the
features at the point itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dwi_mtl.errors import ConfigError

NEIGHBORHOOD_TYPES = ("axes", "grid")


def get_neighborhood_offsets(
    neighborhood_type: str | None, radius: float | int | Sequence[float] | None
) -> np.ndarray:
    """Return the ``(M, 3)`` float32 offsets of a neighbourhood, centre first.

    Args:
        neighborhood_type: ``"axes"``, ``"grid"`` or None (only the centre).
        radius: see the module doc; required with a type, refused without one.

    Returns:
        ``(M, 3)`` offsets in voxels; ``[[0, 0, 0]]`` when ``neighborhood_type`` is None.

    Raises:
        ConfigError: naming ``neighborhood_type`` or ``neighborhood_radius`` when invalid.
    """
    if neighborhood_type is None:
        if radius is not None:
            raise ConfigError(
                "neighborhood_radius is set but neighborhood_type is None; "
                f"give neighborhood_type in {NEIGHBORHOOD_TYPES}"
            )
        return np.zeros((1, 3), dtype=np.float32)
    if neighborhood_type not in NEIGHBORHOOD_TYPES:
        raise ConfigError(
            f"neighborhood_type must be one of {NEIGHBORHOOD_TYPES} or None, "
            f"got {neighborhood_type!r}"
        )
    if radius is None:
        raise ConfigError(f"neighborhood_type={neighborhood_type!r} needs a neighborhood_radius")
    if neighborhood_type == "axes":
        return _axes_offsets(radius)
    return _grid_offsets(radius)


def _axes_offsets(radius: Any) -> np.ndarray:
    """Centre plus +-r along x, y and z for each radius."""
    radii: list[Any] = [radius] if np.isscalar(radius) else list(radius)
    if not radii or any(not _is_positive_number(r) for r in radii):
        raise ConfigError(
            f"neighborhood_radius for 'axes' must be a positive float or a list of them, "
            f"got {radius!r}"
        )
    offsets = [np.zeros(3)]
    for r in radii:
        for axis in range(3):
            for sign in (1.0, -1.0):
                offset = np.zeros(3)
                offset[axis] = sign * float(r)
                offsets.append(offset)
    return np.asarray(offsets, dtype=np.float32)


def _grid_offsets(radius: Any) -> np.ndarray:
    """Every integer offset in [-r, r]^3, centre first."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ConfigError(
            f"neighborhood_radius for 'grid' must be an integer >= 1, got {radius!r}"
        )
    r = int(radius)
    axis = np.arange(-r, r + 1, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    centre = np.all(grid == 0, axis=1)
    return np.concatenate([grid[centre], grid[~centre]]).astype(np.float32)


def _is_positive_number(value: Any) -> bool:
    """True for a finite number > 0 (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value) and value > 0)


def expand_points(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Return the ``(P * M, 3)`` coordinates of every point's neighbours (point-major).

    Interpolating them and reshaping to ``(P, M * F)`` gives, for each point, the features of
    neighbour 0 (the centre), then neighbour 1, and so on.
    """
    return (points[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
