"""Evaluating a tracking model: angular error on reference streamlines, streamlines in a mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dwi_mtl.errors import DataError
from dwi_mtl.training.batch import BatchItem


@torch.no_grad()
def angular_error_on_subset(model: Any, loader: Any, subset: str = "testing",
                            batch_size: int = 500, device: str = "cpu") -> float:
    """Mean angle (degrees) between the model's and the reference streamlines' next directions.

    Every streamline of every subject of ``subset`` goes through ``loader.load_batch`` (no
    augmentation outside training) and the model's ``angular_error``; the mean is over all
    points that have a next step.

    Raises:
        DataError: when the subset has no streamline.
    """
    dataset_subset = getattr(loader.dataset, subset)
    model = model.to(device).eval()
    total, count = 0.0, 0
    for subject in range(len(dataset_subset)):
        nb = dataset_subset.nb_streamlines(subject, loader.streamline_group)
        for start in range(0, nb, batch_size):
            ids = np.arange(start, min(start + batch_size, nb))
            batch = loader.load_batch([BatchItem(subject, ids, context=subset)])
            errors = model.angular_error(loader.to_device(batch, device))
            total += float(errors.sum())
            count += int(errors.numel())
    if count == 0:
        raise DataError(f"the {subset} subset has no streamline to evaluate")
    return total / count


def fraction_inside_mask(streamlines: Sequence[np.ndarray],
                         mask: np.ndarray) -> tuple[float, float]:
    """Share of streamlines with every point in the mask, and mean share of points in it.

    Points are voxel coordinates (corner origin); a point is inside when its voxel is in the
    volume and non-zero in ``mask``. Returns ``(0.0, 0.0)`` for no streamline.
    """
    if not streamlines:
        return 0.0, 0.0
    mask = np.asarray(mask) > 0
    dims = np.asarray(mask.shape)
    whole, shares = 0, []
    for line in streamlines:
        voxel = np.floor(np.asarray(line)).astype(np.int64)
        valid = np.all((voxel >= 0) & (voxel < dims), axis=1)
        inside = np.zeros(len(voxel), dtype=bool)
        inside[valid] = mask[tuple(voxel[valid].T)]
        whole += bool(inside.all())
        shares.append(float(inside.mean()))
    return whole / len(streamlines), float(np.mean(shares))
