"""Tractogram helpers: resampling checks, invalid streamlines, voxel conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dwi_mtl.data.tractograms import (
    check_resampling,
    find_invalid,
    read_tractogram,
    resample,
    to_voxel_corner,
)
from dwi_mtl.errors import ConfigError, DataError


def test_check_resampling() -> None:
    check_resampling(None, None, None)
    check_resampling(1.0, None, None)
    with pytest.raises(ConfigError, match="choose one"):
        check_resampling(1.0, None, 0.1)
    with pytest.raises(ConfigError, match="nb_points"):
        check_resampling(None, 1, None)
    with pytest.raises(ConfigError, match="step_size must be positive"):
        check_resampling(-1.0, None, None)


def test_resample_step_size_and_short_streamlines() -> None:
    line = np.stack([np.linspace(0, 10, 11), np.zeros(11), np.zeros(11)], axis=1)
    single = np.zeros((1, 3))
    out = resample([line, single], step_size=2.5)
    np.testing.assert_allclose(np.diff(out[0][:, 0]), 2.5)
    assert out[1] is single
    assert len(resample([line], nb_points=4)[0]) == 4
    assert len(resample([line], compress=0.1)[0]) == 2


def test_to_voxel_corner_and_find_invalid() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-4.0, 0.0, 0.0]
    inside = np.array([[-4.0, 0.0, 0.0], [0.0, 2.0, 2.0]])  # voxel centres (0,0,0), (2,1,1)
    outside = np.array([[-4.0, 0.0, 0.0], [100.0, 0.0, 0.0]])
    nan = np.array([[np.nan, 0.0, 0.0], [0.0, 0.0, 0.0]])
    points, lengths = to_voxel_corner([inside, outside, nan, inside[:1]], affine)
    np.testing.assert_allclose(points[:2], [[0.5, 0.5, 0.5], [2.5, 1.5, 1.5]])
    assert lengths.tolist() == [2, 2, 2, 1]
    assert find_invalid(points, lengths, (4, 4, 4)).tolist() == [False, True, True, True]


def test_read_tractogram_rejects_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported format '.vtk'"):
        read_tractogram(tmp_path / "lines.vtk")
    with pytest.raises(DataError, match="lines.trk' does not exist"):
        read_tractogram(tmp_path / "lines.trk")
