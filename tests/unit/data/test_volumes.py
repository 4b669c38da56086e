"""Standardization modes and volume-group loading (grid checks, masks)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dwi_mtl.data.volumes import load_volume_group, standardize
from dwi_mtl.errors import DataError


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.array([1.0, 10.0, 100.0, 0.5], dtype=np.float32)
    return (rng.standard_normal((5, 4, 3, 4)).astype(np.float32) * scales + scales)


def test_independent_gives_zero_mean_unit_std_per_feature() -> None:
    volume = _volume()
    means, stds = standardize(volume, "independent", [4])
    flat = volume.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(axis=0), 1.0, atol=1e-5)
    assert means.shape == stds.shape == (4,)


def test_all_uses_one_mean_and_std() -> None:
    volume = _volume()
    original = volume.copy()
    means, stds = standardize(volume, "all", [4])
    assert len(set(means.tolist())) == 1 and len(set(stds.tolist())) == 1
    assert abs(volume.astype(np.float64).mean()) < 1e-5
    assert abs(volume.astype(np.float64).std() - 1.0) < 1e-5
    np.testing.assert_allclose(volume, (original - means[0]) / stds[0], rtol=1e-5, atol=1e-5)


def test_per_file_uses_one_mean_and_std_per_file() -> None:
    volume = _volume()
    means, _ = standardize(volume, "per_file", [1, 3])
    assert means[1] == means[2] == means[3] != means[0]
    assert abs(volume[..., 1:].astype(np.float64).mean()) < 1e-5
    assert abs(volume[..., :1].astype(np.float64).std() - 1.0) < 1e-5


def test_mask_restricts_statistics_and_constant_features_are_centred() -> None:
    volume = _volume()
    volume[..., 3] = 7.0
    mask = np.zeros(volume.shape[:3], dtype=bool)
    mask[:2] = True
    original = volume.copy()
    standardize(volume, "independent", [4], mask)
    inside = volume[mask].astype(np.float64)
    np.testing.assert_allclose(inside[:, :3].mean(axis=0), 0.0, atol=1e-5)
    assert not np.allclose(volume[~mask][:, :3].mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_array_equal(volume[..., 3], original[..., 3] - 7.0)


def test_none_keeps_values() -> None:
    volume = _volume()
    original = volume.copy()
    standardize(volume, "none", [4])
    np.testing.assert_array_equal(volume, original)


def test_group_concatenates_files_and_checks_grids(tmp_path: Path) -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), dtype=np.float32), affine), str(a))
    nib.save(nib.Nifti1Image(np.full((3, 3, 3, 2), 2, dtype=np.int16), affine), str(b))
    loaded = load_volume_group([a, b], "none")
    assert loaded.data.shape == (3, 3, 3, 3) and loaded.data.dtype == np.float32
    np.testing.assert_array_equal(loaded.voxres, [2.0, 2.0, 2.0])
    c = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 4), dtype=np.float32), affine), str(c))
    with pytest.raises(DataError, match=r"c.nii.gz': grid \(3, 3, 4\) differs"):
        load_volume_group([a, c], "none")
    shifted = affine.copy()
    shifted[0, 3] = 1.0
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), dtype=np.float32), shifted), str(c))
    with pytest.raises(DataError, match="c.nii.gz': affine differs"):
        load_volume_group([a, c], "none")
    empty_mask = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), dtype=np.uint8), affine), str(empty_mask))
    with pytest.raises(DataError, match="select no voxel"):
        load_volume_group([a], "all", [empty_mask])
