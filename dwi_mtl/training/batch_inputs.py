"""Interpolating a batch's volume inputs, per subject, on the CPU or on a torch device.

Used by :class:`~dwi_mtl.training.batch_loader.BatchLoader`: in DataLoader workers with numpy,
or in the main process on the training device when interpolation is deferred there. Points
are voxel coordinates, corner origin; each point's neighbourhood (centre first) is
interpolated and the features concatenated: ``(P, M * F)``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from dwi_mtl.data.interpolation import interpolate_volume_numpy, interpolate_volume_torch
from dwi_mtl.data.neighborhood import expand_points


def interpolate_items_numpy(
    points: np.ndarray,
    point_ranges: list[tuple[int, int, int]],
    get_volume: Any,
    offsets: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Interpolate each subject's volume at its points and neighbours (numpy).

    Args:
        points: ``(P, 3)`` packed points of the batch.
        point_ranges: ``(subject_index, start, stop)`` point ranges, one per batch item.
        get_volume: ``subject_index -> (X, Y, Z, F)`` float32 array.
        offsets: ``(M, 3)`` neighbourhood offsets.
        out: optional ``(P, M * F)`` float32 array to write into (the batch's shared buffer).

    Returns:
        ``(P, M * F)`` float32 features.
    """
    for subject, start, stop in point_ranges:
        volume = get_volume(subject)
        m, f = len(offsets), volume.shape[3]
        if out is None:
            out = np.empty((len(points), m * f), dtype=np.float32)
        coords = points[start:stop] if m == 1 else expand_points(points[start:stop], offsets)
        values = interpolate_volume_numpy(volume, coords, origin="corner")
        out[start:stop] = values.reshape(stop - start, m * f)
    if out is None:
        return np.zeros((len(points), 0), dtype=np.float32)
    return out


class DeviceVolumeCache:
    """LRU of volumes already copied to a torch device, keyed by (context, subject, device)."""

    def __init__(self, capacity: int) -> None:
        """Keep at most ``capacity`` volumes (at least 1)."""
        self.capacity = max(1, int(capacity))
        self._volumes: OrderedDict[tuple[str, int, str], torch.Tensor] = OrderedDict()

    def get(self, key: tuple[str, int, str], load: Any, device: torch.device) -> torch.Tensor:
        """Return the cached tensor, loading ``load()`` onto ``device`` on a miss."""
        if key in self._volumes:
            self._volumes.move_to_end(key)
            return self._volumes[key]
        while len(self._volumes) >= self.capacity:
            self._volumes.popitem(last=False)
        tensor = torch.from_numpy(np.ascontiguousarray(load(), dtype=np.float32)).to(device)
        self._volumes[key] = tensor
        return tensor

    def clear(self) -> None:
        """Drop every cached volume."""
        self._volumes.clear()


def interpolate_batch_torch(
    points: torch.Tensor,
    point_subjects: torch.Tensor,
    get_volume: Any,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """Interpolate on the points' device, one subject at a time.

    Args:
        points: ``(P, 3)`` tensor.
        point_subjects: ``(P,)`` subject index of each point.
        get_volume: ``subject_index -> (X, Y, Z, F)`` tensor on the points' device.
        offsets: ``(M, 3)`` tensor on the points' device.

    Returns:
        ``(P, M * F)`` float32 tensor.
    """
    m = offsets.shape[0]
    out: torch.Tensor | None = None
    for subject in torch.unique(point_subjects).tolist():
        mask = point_subjects == subject
        volume = get_volume(int(subject))
        if out is None:
            out = torch.empty(
                (points.shape[0], m * volume.shape[3]), dtype=torch.float32, device=points.device
            )
        sub = points[mask]
        coords = (sub[:, None, :] + offsets[None, :, :]).reshape(-1, 3) if m > 1 else sub
        values = interpolate_volume_torch(volume, coords, origin="corner")
        out[mask] = values.reshape(sub.shape[0], -1)
    if out is None:
        return torch.zeros((points.shape[0], 0), dtype=torch.float32, device=points.device)
    return out
