"""Neighbourhood offsets: shapes, centre first, and refused arguments."""

from __future__ import annotations

import numpy as np
import pytest

from dwi_mtl.data.neighborhood import expand_points, get_neighborhood_offsets
from dwi_mtl.errors import ConfigError


def test_no_neighborhood_is_the_centre() -> None:
    np.testing.assert_array_equal(get_neighborhood_offsets(None, None), np.zeros((1, 3)))


@pytest.mark.parametrize(("radius", "count"), [(1.0, 7), (0.5, 7), ([1.0, 2.0], 13), (2, 7)])
def test_axes_shapes(radius: object, count: int) -> None:
    offsets = get_neighborhood_offsets("axes", radius)
    assert offsets.shape == (count, 3)
    np.testing.assert_array_equal(offsets[0], 0)
    # every non-centre offset lies on one axis
    assert np.all(np.count_nonzero(offsets[1:], axis=1) == 1)
    radii = [radius] if np.isscalar(radius) else radius
    assert sorted(set(np.abs(offsets[1:]).max(axis=1))) == sorted(float(r) for r in radii)


@pytest.mark.parametrize(("radius", "count"), [(1, 27), (2, 125)])
def test_grid_shapes(radius: int, count: int) -> None:
    offsets = get_neighborhood_offsets("grid", radius)
    assert offsets.shape == (count, 3)
    np.testing.assert_array_equal(offsets[0], 0)
    assert len({tuple(o) for o in offsets}) == count
    assert np.abs(offsets).max() == radius


@pytest.mark.parametrize(
    ("kind", "radius", "match"),
    [
        ("axes", None, "needs a neighborhood_radius"),
        ("grid", None, "needs a neighborhood_radius"),
        (None, 1.0, "neighborhood_type is None"),
        ("sphere", 1.0, "neighborhood_type must be"),
        ("grid", 1.5, "integer >= 1"),
        ("grid", 0, "integer >= 1"),
        ("axes", -1.0, "positive"),
        ("axes", [], "positive"),
        ("axes", "1", "positive"),
    ],
)
def test_bad_arguments(kind: str | None, radius: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_neighborhood_offsets(kind, radius)  # type: ignore[arg-type]


def test_expand_points_is_point_major() -> None:
    offsets = get_neighborhood_offsets("axes", 1.0)
    points = np.array([[1, 1, 1], [5, 5, 5]], dtype=np.float32)
    expanded = expand_points(points, offsets)
    assert expanded.shape == (14, 3)
    np.testing.assert_array_equal(expanded[0], points[0])
    np.testing.assert_array_equal(expanded[7], points[1])
    np.testing.assert_array_equal(expanded[1], points[0] + offsets[1])
