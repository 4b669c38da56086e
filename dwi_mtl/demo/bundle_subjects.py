"""Labelled bundles from dipy's ``minimal_bundles``: 5 subjects x 3 bundles x 50 streamlines.

The shipped .trk files carry a placeholder header (identity affine, 1x1x1 grid), so they are
placed on a common 2 mm reference grid that covers every subject's bundles (with a margin);
each subject gets a real derived volume on that grid, its track-density map (dipy's
``density_map``), and its bundles are re-saved with the grid's header. The bundle a streamline
comes from becomes its class label (``data_per_streamline/bundle``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from dwi_mtl.demo.tracts_io import save_trk

BUNDLES = ("AF_L", "CST_R", "CC_ForcepsMajor")
SUBJECTS = ("sub_1", "sub_2", "sub_3", "sub_4", "sub_5")
VOXEL_SIZE = 2.0
MARGIN_MM = 6.0


def extract_minimal_bundles(target: Path) -> Path:
    """Unzip dipy's ``minimal_bundles`` into ``target``; return the folder of subjects."""
    from dipy.data import get_fnames

    with zipfile.ZipFile(get_fnames(name="minimal_bundles")) as archive:
        archive.extractall(target)
    return target


def load_bundles(folder: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """subject -> bundle -> streamlines (RAS mm) read with nibabel."""
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for subject in SUBJECTS:
        out[subject] = {}
        for bundle in BUNDLES:
            tractogram = nib.streamlines.load(str(folder / subject / f"{bundle}.trk"))
            out[subject][bundle] = [np.asarray(s, dtype=np.float64)
                                    for s in tractogram.streamlines]
    return out


def reference_grid(
        bundles: dict[str, dict[str, list[np.ndarray]]]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A 2 mm RAS grid covering every streamline of every subject, with a margin."""
    points = np.concatenate([np.concatenate(lines) for subject in bundles.values()
                             for lines in subject.values()])
    low = np.floor((points.min(axis=0) - MARGIN_MM) / VOXEL_SIZE) * VOXEL_SIZE
    high = np.ceil((points.max(axis=0) + MARGIN_MM) / VOXEL_SIZE) * VOXEL_SIZE
    shape = tuple(int(n) for n in np.round((high - low) / VOXEL_SIZE))
    affine = np.diag([VOXEL_SIZE, VOXEL_SIZE, VOXEL_SIZE, 1.0])
    affine[:3, 3] = low + VOXEL_SIZE / 2.0  # centre of voxel (0, 0, 0)
    return affine, shape  # type: ignore[return-value]


def write_bundle_subject(folder: Path, bundles: dict[str, list[np.ndarray]], affine: np.ndarray,
                         shape: tuple[int, int, int]) -> None:
    """Write ``density.nii.gz`` and one .trk per bundle (grid header) into ``folder``."""
    from dipy.tracking.utils import density_map

    folder.mkdir(parents=True, exist_ok=True)
    all_lines = [s for lines in bundles.values() for s in lines]
    density = density_map(all_lines, affine, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(density, affine), str(folder / "density.nii.gz"))
    for bundle, lines in bundles.items():
        save_trk(folder / f"{bundle}.trk", lines, affine, shape)
