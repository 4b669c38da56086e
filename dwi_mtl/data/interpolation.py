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


def _corner_offsets(shape: tuple[int, ...]) -> np.ndarray:
    """Flat index offsets of the 8 corners from the low corner, x-major then y then z.

    On an axis of a single voxel the "high" corner is the low one (offset 0 on that axis).
    """
    x, y, z = (int(n) for n in shape[:3])
    step = [1 if x > 1 else 0, 1 if y > 1 else 0, 1 if z > 1 else 0]
    strides = (y * z, z, 1)
    return np.array(
        [dx * step[0] * strides[0] + dy * step[1] * strides[1] + dz * step[2] * strides[2]
         for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)],
        dtype=np.int64,
    )


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
    c = np.array(coords, dtype=np.float32)  # a copy, modified in place below
    if origin == "corner":
        c -= np.float32(0.5)
    np.clip(c, np.float32(0.0), (dims - 1).astype(np.float32), out=c)
    low = c.astype(np.int64)  # truncation is floor: c >= 0 here
    np.minimum(low, np.maximum(dims - 2, 0), out=low)
    frac = c - low.astype(np.float32)
    base = low[:, 0] * (dims[1] * dims[2]) + low[:, 1] * dims[2] + low[:, 2]
    index = (base[:, None] + _corner_offsets(volume.shape)[None, :]).reshape(-1)
    weights = _corner_weights_numpy(frac)
    flat = np.ascontiguousarray(volume).reshape(-1, volume.shape[3])
    if not np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(np.float32)
    corners = np.take(flat, index, axis=0).reshape(len(c), 8, flat.shape[1])
    return np.matmul(weights.astype(flat.dtype, copy=False)[:, None, :], corners)[:, 0, :]


def _corner_weights_numpy(frac: np.ndarray) -> np.ndarray:
    """``(P, 8)`` trilinear weights of the corners (same order as :func:`_corner_offsets`)."""
    p = len(frac)
    pairs = [np.stack([1 - frac[:, a], frac[:, a]], axis=1) for a in range(3)]
    xy = (pairs[0][:, :, None] * pairs[1][:, None, :]).reshape(p, 4)
    return (xy[:, :, None] * pairs[2][:, None, :]).reshape(p, 8)


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
    x, y, z = (int(n) for n in volume.shape[:3])
    upper = torch.tensor([x - 1, y - 1, z - 1], dtype=volume.dtype, device=coords.device)
    c = coords.to(volume.dtype)
    if origin == "corner":
        c = c - 0.5
    c = torch.minimum(c.clamp_min(0.0), upper)
    low_max = torch.tensor([max(x - 2, 0), max(y - 2, 0), max(z - 2, 0)], device=coords.device)
    low = torch.minimum(c.to(torch.int64), low_max)  # truncation is floor: c >= 0 here
    frac = c - low.to(c.dtype)
    base = low[:, 0] * (y * z) + low[:, 1] * z + low[:, 2]
    offsets = torch.from_numpy(_corner_offsets(tuple(volume.shape))).to(coords.device)
    index = (base[:, None] + offsets[None, :]).reshape(-1)
    pairs = [torch.stack([1 - frac[:, a], frac[:, a]], dim=1) for a in range(3)]
    xy = (pairs[0][:, :, None] * pairs[1][:, None, :]).reshape(-1, 4)
    weights = (xy[:, :, None] * pairs[2][:, None, :]).reshape(-1, 1, 8)
    flat = volume.reshape(-1, volume.shape[3])
    corners = flat[index].reshape(c.shape[0], 8, flat.shape[1])
    return torch.bmm(weights, corners)[:, 0, :]


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
