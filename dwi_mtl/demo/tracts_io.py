"""Saving RAS-mm streamlines as .trk files whose header describes a given voxel grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.streamlines import Tractogram


def save_trk(path: Path, streamlines: Sequence[np.ndarray], affine: np.ndarray,
             shape: Sequence[int]) -> Path:
    """Save streamlines (RAS mm) to ``path`` with the grid ``affine``/``shape`` in the header."""
    voxel_sizes = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    header = {"voxel_to_rasmm": affine, "dimensions": tuple(int(s) for s in shape[:3]),
              "voxel_sizes": voxel_sizes,
              "voxel_order": "".join(nib.aff2axcodes(affine))}
    nib.streamlines.save(Tractogram(list(streamlines), affine_to_rasmm=np.eye(4)), str(path),
                         header=header)
    return path
