"""Real input files for creation tests, from data shipped inside dipy and nibabel (offline).

- dipy ``small_25``: a real DWI (10x8x2x26, 2 mm) and ``small_25_streamlines``
  (``EuDX_small_25.trk``, 60 real streamlines inside that volume, but with an identity header
  of dimensions 1x1x1: the original file is our real "header mismatch" case; re-saved with
  the volume's header it is a valid input);
- nibabel ``tests/data``: ``standard.trk``/``standard.tck`` (120 streamlines filling a 4x5x7
  grid with voxel sizes 1x3x2 mm), empty and broken-header files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from dipy.data import get_fnames
from nibabel.streamlines import Tractogram

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
STANDARD_AFFINE = np.diag([1.0, 3.0, 2.0, 1.0])
STANDARD_SHAPE = (4, 5, 7)


def small_25_files() -> tuple[Path, Path]:
    """Paths of dipy's small_25 DWI (.nii.gz) and its EuDX tractogram (.trk)."""
    return Path(get_fnames(name="small_25")[0]), Path(get_fnames(name="small_25_streamlines"))


def small_25_streamlines() -> list[np.ndarray]:
    """The 60 real small_25 streamlines in RAS mm."""
    return [np.asarray(s, dtype=np.float64)
            for s in nib.streamlines.load(str(small_25_files()[1])).streamlines]


def save_trk(path: Path, streamlines: list[np.ndarray], image: Any,
             dps: dict[str, np.ndarray] | None = None) -> Path:
    """Save RAS mm streamlines as .trk with ``image``'s grid in the header."""
    tractogram = Tractogram(streamlines, affine_to_rasmm=np.eye(4))
    for key, values in (dps or {}).items():
        tractogram.data_per_streamline[key] = values
    header = {"voxel_to_rasmm": image.affine, "dimensions": image.shape[:3],
              "voxel_sizes": image.header.get_zooms()[:3], "voxel_order": "RAS"}
    nib.streamlines.save(tractogram, str(path), header=header)
    return path


def save_tck(path: Path, streamlines: list[np.ndarray]) -> Path:
    """Save RAS mm streamlines as .tck (no grid in the header)."""
    nib.streamlines.save(Tractogram(streamlines, affine_to_rasmm=np.eye(4)), str(path))
    return path


def write_small_25_subject(folder: Path, flip: bool = False) -> Path:
    """A subject folder: dwi.nii.gz, mask.nii.gz, lines.trk (with 'score'), lines.tck.

    ``flip`` mirrors the DWI values on the x axis (a second, different but real subject).
    """
    folder.mkdir(parents=True, exist_ok=True)
    dwi_path, _ = small_25_files()
    image = nib.load(str(dwi_path))
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if flip:
        data = data[::-1].copy()
    image = nib.Nifti1Image(data, image.affine, image.header)
    nib.save(image, str(folder / "dwi.nii.gz"))
    mask = (data[..., 0] > np.median(data[..., 0])).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, image.affine), str(folder / "mask.nii.gz"))
    streamlines = small_25_streamlines()
    score = np.arange(len(streamlines), dtype=np.float32)[:, None]
    save_trk(folder / "lines.trk", streamlines, image, {"score": score})
    save_tck(folder / "lines.tck", streamlines)
    return folder


def write_standard_subject(folder: Path) -> Path:
    """A subject with nibabel's standard.trk/.tck and a NIfTI on their 4x5x7 grid."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.0, 10.0, size=(*STANDARD_SHAPE, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, STANDARD_AFFINE), str(folder / "t1.nii.gz"))
    shutil.copy(NIBABEL_DATA / "standard.trk", folder / "standard.trk")
    shutil.copy(NIBABEL_DATA / "standard.tck", folder / "standard.tck")
    return folder


def small_25_config() -> dict[str, Any]:
    """A config using every group feature on small_25 subjects."""
    return {
        "dwi": {"type": "volume", "files": ["dwi.nii.gz"], "standardization": "independent",
                "std_mask": "mask.nii.gz"},
        "tracts": {"type": "streamlines", "files": ["lines.trk"],
                   "data_per_streamline": ["score"]},
        "tracts_tck": {"type": "streamlines", "files": ["lines.tck"]},
    }


def write_json(path: Path, value: Any) -> Path:
    """Write ``value`` as JSON and return the path."""
    path.write_text(json.dumps(value), encoding="utf-8")
    return path
