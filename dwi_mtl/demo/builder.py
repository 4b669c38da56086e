"""Build (once) and cache the demo datasets, offline and deterministically.

- :func:`build_demo_dataset`: four real diffusion subjects (see
  :mod:`dwi_mtl.demo.dwi_subjects`): ``sub-64D`` and ``sub-101D`` (training),
  ``sub-64D-mirror`` (validation), ``sub-101D-mirror`` (testing, held out). Groups: ``sh``
  (28 SH coefficients, standardized per feature inside the brain), ``fa`` (1 feature),
  ``streamlines`` (DTI tracking resampled to 1 mm steps at creation).
- :func:`build_bundles_dataset`: dipy's ``minimal_bundles`` (see
  :mod:`dwi_mtl.demo.bundle_subjects`): ``sub_1``-``sub_3`` training, ``sub_4`` validation,
  ``sub_5`` testing. Groups: ``density`` (track-density volume), ``bundles`` (150
  streamlines, ``data_per_streamline/bundle`` = 0 AF_L, 1 CST_R, 2 CC_ForcepsMajor).

Both go through :func:`dwi_mtl.data.create_hdf5_dataset` from NIfTI + .trk files written to a
temporary folder. Files are cached under ``$DWI_MTL_CACHE`` (default ``~/.cache/dwi_mtl``)
with the builder version in their name; a cached file is returned without rebuilding.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from dwi_mtl.data.hdf5_creation import create_hdf5_dataset
from dwi_mtl.demo import bundle_subjects, dwi_subjects
from dwi_mtl.demo.tracts_io import save_trk

logger = logging.getLogger(__name__)

#: Bump when the demo content changes: the cached file name changes with it.
DEMO_VERSION = 1
DWI_FILE = f"demo_dwi_v{DEMO_VERSION}.hdf5"
BUNDLES_FILE = f"demo_bundles_v{DEMO_VERSION}.hdf5"
SH_GROUP, FA_GROUP, STREAMLINE_GROUP = "sh", "fa", "streamlines"
DENSITY_GROUP, BUNDLE_GROUP, BUNDLE_LABEL = "density", "bundles", "bundle"
DWI_SPLITS = {"training": ["sub-64D", "sub-101D"], "validation": ["sub-64D-mirror"],
              "testing": ["sub-101D-mirror"]}
BUNDLE_SPLITS = {"training": ["sub_1", "sub_2", "sub_3"], "validation": ["sub_4"],
                 "testing": ["sub_5"]}


def demo_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$DWI_MTL_CACHE``, else ``~/.cache/dwi_mtl``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DWI_MTL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dwi_mtl"


def build_demo_dataset(cache_dir: str | os.PathLike[str] | None = None,
                       force: bool = False) -> Path:
    """Return the cached real multi-subject DWI demo dataset, building it if needed.

    Args:
        cache_dir: folder of the cached file (default: see :func:`demo_cache_dir`).
        force: rebuild even when the cached file exists.

    Returns:
        Path of the HDF5 file (open it with :class:`dwi_mtl.data.MultiSubjectDataset`).
    """
    output = demo_cache_dir(cache_dir) / DWI_FILE
    if output.is_file() and not force:
        return output
    logger.info("building the DWI demo dataset in %s", output)
    with tempfile.TemporaryDirectory(prefix="dwi_mtl_demo_") as tmp:
        root = Path(tmp)
        base = {"sub-64D": dwi_subjects.load_dipy_subject("small_64D", "sub-64D"),
                "sub-101D": dwi_subjects.load_dipy_subject("small_101D", "sub-101D")}
        subjects = [base["sub-64D"], base["sub-101D"],
                    dwi_subjects.mirrored(base["sub-64D"], "sub-64D-mirror"),
                    dwi_subjects.mirrored(base["sub-101D"], "sub-101D-mirror")]
        for subject in subjects:
            _write_dwi_subject(root / subject.name, subject)
        config: dict[str, Any] = {
            SH_GROUP: {"type": "volume", "files": ["sh.nii.gz"],
                       "standardization": "independent", "std_mask": ["mask.nii.gz"]},
            FA_GROUP: {"type": "volume", "files": ["fa.nii.gz"]},
            STREAMLINE_GROUP: {"type": "streamlines", "files": ["tracts.trk"]},
        }
        create_hdf5_dataset(root, config, output, DWI_SPLITS["training"],
                            DWI_SPLITS["validation"], DWI_SPLITS["testing"], step_size=1.0,
                            remove_invalid=True, force=True)
    return output


def _write_dwi_subject(folder: Path, subject: dwi_subjects.DwiSubject) -> None:
    folder.mkdir(parents=True)
    affine = subject.affine
    nib.save(nib.Nifti1Image(dwi_subjects.sh_features(subject), affine), str(folder / "sh.nii.gz"))
    _, fa = dwi_subjects.fit_dti(subject)
    nib.save(nib.Nifti1Image(fa, affine), str(folder / "fa.nii.gz"))
    mask = dwi_subjects.brain_mask(subject).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, affine), str(folder / "mask.nii.gz"))
    save_trk(folder / "tracts.trk", dwi_subjects.track(subject), affine, subject.data.shape[:3])


def build_bundles_dataset(cache_dir: str | os.PathLike[str] | None = None,
                          force: bool = False) -> Path:
    """Return the cached labelled-bundle dataset (from ``minimal_bundles``), building it if needed.

    Args:
        cache_dir: folder of the cached file (default: see :func:`demo_cache_dir`).
        force: rebuild even when the cached file exists.
    """
    output = demo_cache_dir(cache_dir) / BUNDLES_FILE
    if output.is_file() and not force:
        return output
    logger.info("building the bundles demo dataset in %s", output)
    with tempfile.TemporaryDirectory(prefix="dwi_mtl_bundles_") as tmp:
        raw = bundle_subjects.extract_minimal_bundles(Path(tmp) / "raw")
        bundles = bundle_subjects.load_bundles(raw)
        affine, shape = bundle_subjects.reference_grid(bundles)
        root = Path(tmp) / "subjects"
        for subject, lines in bundles.items():
            bundle_subjects.write_bundle_subject(root / subject, lines, affine, shape)
        config: dict[str, Any] = {
            DENSITY_GROUP: {"type": "volume", "files": ["density.nii.gz"]},
            BUNDLE_GROUP: {"type": "streamlines",
                           "files": [f"{b}.trk" for b in bundle_subjects.BUNDLES],
                           "file_label": BUNDLE_LABEL},
        }
        create_hdf5_dataset(root, config, output, BUNDLE_SPLITS["training"],
                            BUNDLE_SPLITS["validation"], BUNDLE_SPLITS["testing"], force=True)
    return output
