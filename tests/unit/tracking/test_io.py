"""Tractogram output: .trk/.tck reload with nibabel in the reference volume's RAS-mm space."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dwi_mtl.errors import ConfigError
from dwi_mtl.tracking import save_tractogram
from dwi_mtl.tracking.space import voxel_to_rasmm

AFFINE = np.array([[0.0, -2.0, 0.0, 20.0], [-1.9, 0.0, -0.5, 25.0], [-0.5, 0.0, 1.9, 12.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (10, 12, 8)


def lines() -> list[np.ndarray]:
    return [np.array([[0.5, 0.5, 0.5], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32),
            np.array([[9.9, 11.9, 7.9], [5.0, 5.0, 5.0]], np.float32)]


@pytest.mark.parametrize("suffix", [".trk", ".tck"])
def test_written_tractograms_reload_in_rasmm(tmp_path: Path, suffix: str) -> None:
    path = save_tractogram(tmp_path / f"out{suffix}", lines(), AFFINE, SHAPE)
    loaded = nib.streamlines.load(str(path))
    assert len(loaded.streamlines) == 2
    for got, line in zip(loaded.streamlines, lines(), strict=True):
        np.testing.assert_allclose(got, voxel_to_rasmm(line, AFFINE), atol=1e-4)
    # the first point is the centre of voxel (0, 0, 0): the affine's translation
    np.testing.assert_allclose(loaded.streamlines[0][0], AFFINE[:3, 3], atol=1e-4)
    if suffix == ".trk":
        header = loaded.header
        assert tuple(header["dimensions"]) == SHAPE
        np.testing.assert_allclose(header["voxel_to_rasmm"], AFFINE, atol=1e-4)
    assert not list(tmp_path.glob(".*tmp*"))


def test_trk_lines_up_with_the_reference_volume(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)
    nib.save(image, str(tmp_path / "ref.nii.gz"))
    save_tractogram(tmp_path / "out.trk", lines(), AFFINE, SHAPE)
    from dipy.io.streamline import load_tractogram

    sft = load_tractogram(str(tmp_path / "out.trk"), str(tmp_path / "ref.nii.gz"))
    sft.to_vox()
    sft.to_corner()
    np.testing.assert_allclose(sft.streamlines[1], lines()[1], atol=1e-4)


def test_empty_tractogram_and_bad_extension(tmp_path: Path) -> None:
    path = save_tractogram(tmp_path / "empty.tck", [], AFFINE, SHAPE)
    assert len(nib.streamlines.load(str(path)).streamlines) == 0
    with pytest.raises(ConfigError, match=".trk"):
        save_tractogram(tmp_path / "out.vtk", lines(), AFFINE, SHAPE)
    assert not (tmp_path / "out.vtk").exists()
