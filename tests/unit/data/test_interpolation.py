"""Trilinear interpolation in numpy and torch against scipy.ndimage.map_coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from dwi_mtl.data.interpolation import (
    interpolate_volume_numpy,
    interpolate_volume_torch,
    outside_volume,
)
from dwi_mtl.errors import ConfigError, DataError


def _scipy(volume: np.ndarray, centre_coords: np.ndarray) -> np.ndarray:
    return np.stack([map_coordinates(volume[..., f], centre_coords.T, order=1, mode="nearest")
                     for f in range(volume.shape[3])], axis=1)


@pytest.fixture()
def volume() -> np.ndarray:
    return np.random.default_rng(0).random((7, 6, 5, 4), dtype=np.float32)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_inside_matches_scipy(volume: np.ndarray, backend: str) -> None:
    rng = np.random.default_rng(1)
    corner = (rng.random((500, 3)) * (np.array(volume.shape[:3]) - 1) + 0.5).astype(np.float32)
    expected = _scipy(volume, corner - 0.5)
    if backend == "numpy":
        got = interpolate_volume_numpy(volume, corner)
    else:
        got = interpolate_volume_torch(torch.from_numpy(volume), torch.from_numpy(corner)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_outside_is_clamped_to_the_edge(volume: np.ndarray, backend: str) -> None:
    rng = np.random.default_rng(2)
    centre = (rng.random((500, 3)) * 14 - 4).astype(np.float32)  # far outside on all sides
    expected = _scipy(volume, np.clip(centre, 0, np.array(volume.shape[:3]) - 1))
    if backend == "numpy":
        got = interpolate_volume_numpy(volume, centre, origin="center")
    else:
        got = interpolate_volume_torch(torch.from_numpy(volume), torch.from_numpy(centre),
                                       origin="center").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, _scipy(volume, centre), rtol=1e-5, atol=1e-6)


def test_voxel_centres_give_voxel_values(volume: np.ndarray) -> None:
    idx = np.array([[0, 0, 0], [6, 5, 4], [3, 2, 1]])
    got = interpolate_volume_numpy(volume, idx.astype(np.float32) + 0.5, origin="corner")
    np.testing.assert_array_equal(got, volume[idx[:, 0], idx[:, 1], idx[:, 2]])


def test_single_voxel_axes_and_integer_volumes() -> None:
    vol = np.arange(2 * 1 * 3 * 2, dtype=np.int16).reshape(2, 1, 3, 2)
    coords = np.array([[0.7, 0.3, 1.2], [1.0, 0.0, 2.0]], dtype=np.float32)
    got = interpolate_volume_numpy(vol, coords, origin="center")
    np.testing.assert_allclose(got, _scipy(vol.astype(np.float32), coords), atol=1e-5)
    assert got.dtype == np.float32


def test_bad_inputs_are_refused(volume: np.ndarray) -> None:
    with pytest.raises(DataError, match="volume"):
        interpolate_volume_numpy(volume[..., 0], np.zeros((1, 3), np.float32))
    with pytest.raises(DataError, match="coordinates"):
        interpolate_volume_numpy(volume, np.zeros((1, 2), np.float32))
    with pytest.raises(ConfigError, match="origin"):
        interpolate_volume_numpy(volume, np.zeros((1, 3), np.float32), origin="middle")


def test_outside_volume_mask() -> None:
    coords = np.array([[0, 0, 0], [6.99, 5.99, 4.99], [7, 1, 1], [-0.01, 1, 1]], np.float32)
    np.testing.assert_array_equal(outside_volume(coords, (7, 6, 5)), [False, False, True, True])
    np.testing.assert_array_equal(outside_volume(coords - 0.5, (7, 6, 5), origin="center"),
                                  [False, False, True, True])
