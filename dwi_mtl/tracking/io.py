"""Writing tracked streamlines as .trk / .tck in the reference volume's RAS-mm space (nibabel)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.streamlines import Tractogram

from dwi_mtl.errors import ConfigError
from dwi_mtl.tracking.space import voxel_sizes, voxel_to_rasmm

FORMATS = (".trk", ".tck")


def save_tractogram(path: str | Path, streamlines: Sequence[np.ndarray], affine: np.ndarray,
                    volume_shape: Sequence[int]) -> Path:
    """Save voxel-space (corner origin) streamlines to a ``.trk`` or ``.tck`` file.

    Points are converted to RAS mm with the reference ``affine``; a ``.trk`` header also
    records the reference grid (dimensions, voxel sizes, voxel order), so viewers and
    ``nibabel.streamlines.load`` place the streamlines on the volume. The file is written
    under a temporary name and renamed, so a failure leaves nothing half-written.

    Raises:
        ConfigError: for an extension other than ``.trk`` / ``.tck``.
    """
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ConfigError(f"output tractogram '{path}' must end with one of {FORMATS}")
    affine = np.asarray(affine, dtype=np.float64)
    lines = [voxel_to_rasmm(line, affine).astype(np.float32) for line in streamlines]
    tractogram = Tractogram(lines, affine_to_rasmm=np.eye(4))
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if path.suffix == ".trk":
        header = {"voxel_to_rasmm": affine, "dimensions": tuple(int(s) for s in volume_shape[:3]),
                  "voxel_sizes": tuple(float(v) for v in voxel_sizes(affine)),
                  "voxel_order": "".join(nib.aff2axcodes(affine))}
        nib.streamlines.save(tractogram, str(tmp), header=header)
    else:
        nib.streamlines.save(tractogram, str(tmp))
    tmp.replace(path)
    return path
