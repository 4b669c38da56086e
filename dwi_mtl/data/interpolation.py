"""Vectorised trilinear interpolation of 4D volumes at many points, in numpy or torch.

Coordinates are voxel coordinates. With ``origin="corner"`` (the HDF5 streamline convention,
design.md §4) voxel ``i`` spans ``[i, i + 1)`` and its centre is ``i + 0.5``; with
``origin="center"`` voxel ``i`` is centred at ``i`` (scipy's convention). Inside the volume the
result equals ``scipy.ndimage.map_coordinates(volume[..., f], coords, order=1)`` (centre
convention) to float32 precision.

Outside the volume (any centre coordinate below 0 or above ``n - 1`` on some axis, i.e. in the
outer half voxel or beyond) the coordinate is *clamped* to the volume's edge on that axis:
the value is the one at the nearest point of the volume, which equals scipy's
``mode="nearest"``. Streamlines that leave the brain slightly therefore read edge values, not
zeros or garbage; callers that need to know use :func:`outside_volume`.

The numpy version runs in DataLoader workers (CPU); the torch version runs on the training
device (GPU) when the loader defers interpolation there. Both gather the 8 corners of every
point with one flat index each (one ``take`` of ``(8P, F)`` rows) and combine them with one
batched ``(1, 8) @ (8, F)`` product, so the cost is a few memory passes over ``(8P, F)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dwi_mtl.errors import ConfigError, DataError

_ORIGINS = ("corner", "center")


def _check(volume_shape: tuple[int, ...], coords_shape: tuple[int, ...], origin: str) -> None:
    """Validate a (X, Y, Z, F) volume, (P, 3) coordinates and the origin name."""
    if origin not in _ORIGINS:
        raise ConfigError(f"interpolation origin must be one of {_ORIGINS}, got {origin!r}")
    if len(volume_shape) != 4:
        raise DataError(f"interpolation needs a (X, Y, Z, F) volume, got shape {volume_shape}")
    if len(coords_shape) != 2 or coords_shape[1] != 3:
        raise DataError(f"interpolation needs (P, 3) coordinates, got shape {coords_shape}")


def interpolate_volume_numpy(
    volume: np.ndarray, coords: np.ndarray, origin: str = "corner"
) -> np.ndarray:
    """Trilinear interpolation of every feature of ``volume`` at ``coords`` (numpy, CPU).

    Args:
        volume: ``(X, Y, Z, F)`` array (float32 recommended; the result has its dtype,
            float32 at least for integer volumes).
        coords: ``(P, 3)`` voxel coordinates.
        origin: ``"corner"`` (voxel ``i`` centred at ``i + 0.5``) or ``"center"``.

    Returns:
        ``(P, F)`` interpolated features; points outside are clamped to the edge (module doc).
    """
    _check(volume.shape, coords.shape, origin)
    dims = np.asarray(volume.shape[:3], dtype=np.int64)
    c = np.asarray(coords, dtype=np.float32)
    if origin == "corner":
        c = c - np.float32(0.5)
    c = np.clip(c, 0.0, (dims - 1).astype(np.float32))
    low = np.minimum(np.floor(c).astype(np.int64), np.maximum(dims - 2, 0))
    frac = c - low.astype(np.float32)
    high = np.minimum(low + 1, dims - 1)
    strides = np.array([dims[1] * dims[2], dims[2], 1], dtype=np.int64)
    flat = np.ascontiguousarray(volume).reshape(-1, volume.shape[3])
    if not np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(np.float32)
    # (P, 2) corner offsets and weights per axis, combined into (P, 8) by broadcasting.
    ix, iy, iz = (np.stack([low[:, a], high[:, a]], axis=1) * strides[a] for a in range(3))
    wx, wy, wz = (np.stack([1 - frac[:, a], frac[:, a]], axis=1) for a in range(3))
    index = (ix[:, :, None, None] + iy[:, None, :, None] + iz[:, None, None, :]).reshape(-1)
    weights = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :])
    corners = np.take(flat, index, axis=0).reshape(len(c), 8, flat.shape[1])
    weights = weights.reshape(len(c), 1, 8).astype(flat.dtype, copy=False)
    return np.matmul(weights, corners)[:, 0, :]


def interpolate_volume_torch(volume: Any, coords: Any, origin: str = "corner") -> Any:
    """Trilinear interpolation on the tensors' device (same rules as the numpy version).

    Args:
        volume: ``(X, Y, Z, F)`` floating tensor.
        coords: ``(P, 3)`` tensor of voxel coordinates, on the same device.
        origin: ``"corner"`` or ``"center"``.

    Returns:
        ``(P, F)`` tensor of ``volume``'s dtype.
    """
    import torch

    _check(tuple(volume.shape), tuple(coords.shape), origin)
    dims = torch.tensor(volume.shape[:3], dtype=torch.int64, device=coords.device)
    c = coords.to(volume.dtype)
    if origin == "corner":
        c = c - 0.5
    c = torch.minimum(c.clamp_min(0.0), (dims - 1).to(c.dtype))
    low = torch.minimum(torch.floor(c).to(torch.int64), (dims - 2).clamp_min(0))
    frac = c - low.to(c.dtype)
    high = torch.minimum(low + 1, dims - 1)
    strides = (volume.shape[1] * volume.shape[2], volume.shape[2], 1)
    flat = volume.reshape(-1, volume.shape[3])
    ix, iy, iz = (torch.stack([low[:, a], high[:, a]], dim=1) * strides[a] for a in range(3))
    wx, wy, wz = (torch.stack([1 - frac[:, a], frac[:, a]], dim=1) for a in range(3))
    index = (ix[:, :, None, None] + iy[:, None, :, None] + iz[:, None, None, :]).reshape(-1)
    weights = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :])
    corners = flat[index].reshape(c.shape[0], 8, flat.shape[1])
    return torch.bmm(weights.reshape(c.shape[0], 1, 8), corners)[:, 0, :]


def outside_volume(
    coords: np.ndarray, volume_shape: tuple[int, ...], origin: str = "corner"
) -> np.ndarray:
    """Return a ``(P,)`` bool mask of points lying outside the volume's voxels.

    With ``origin="corner"`` the volume covers ``[0, n)`` on each axis; with ``"center"``,
    ``[-0.5, n - 0.5)``.
    """
    if origin not in _ORIGINS:
        raise ConfigError(f"interpolation origin must be one of {_ORIGINS}, got {origin!r}")
    dims = np.asarray(volume_shape[:3], dtype=np.float64)
    c = np.asarray(coords, dtype=np.float64)
    if origin == "center":
        c = c + 0.5
    return np.any((c < 0) | (c >= dims), axis=1)
