"""Streamline operations on packed arrays: resampling, compression, split, reverse, noise."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.tracking.streamlinespeed import length
from hypothesis import given, settings
from hypothesis import strategies as st

from dwi_mtl.data import streamline_ops as ops
from dwi_mtl.errors import ConfigError


def _random_streamlines(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 60, size=n)
    steps = rng.normal(size=(int(lengths.sum()), 3)).astype(np.float32)
    steps /= np.linalg.norm(steps, axis=1, keepdims=True)
    streamlines = [np.cumsum(s, axis=0) for s in ops.unpack(steps, lengths)]
    return ops.pack(streamlines)


def test_pack_unpack_roundtrip() -> None:
    points, lengths = _random_streamlines()
    again_points, again_lengths = ops.pack(ops.unpack(points, lengths))
    np.testing.assert_array_equal(again_points, points)
    np.testing.assert_array_equal(again_lengths, lengths)
    assert ops.offsets_of(lengths)[-1] == lengths[:-1].sum()
    assert ops.unpack(points[:0], lengths[:0]) == []


def test_resample_nb_points_keeps_end_points() -> None:
    points, lengths = _random_streamlines()
    new_points, new_lengths = ops.resample(points, lengths, nb_points=12)
    assert np.all(new_lengths == 12)
    for old, new in zip(ops.unpack(points, lengths), ops.unpack(new_points, new_lengths)):
        np.testing.assert_allclose(new[[0, -1]], old[[0, -1]], atol=1e-5)


def test_resample_step_size_within_tolerance_and_predicted() -> None:
    points, lengths = _random_streamlines(seed=1)
    step = 0.7
    new_points, new_lengths = ops.resample(points, lengths, step_size=step)
    mm = np.asarray(length(ops.unpack(points, lengths)))
    predicted = ops.points_after_resampling(lengths, mm, step, None)
    np.testing.assert_array_equal(new_lengths, predicted)
    for streamline, arc in zip(ops.unpack(new_points, new_lengths), mm):
        steps = np.linalg.norm(np.diff(streamline, axis=0), axis=1)
        # Points are equally spaced along the arc: each chord is at most the arc step, and the
        # arc step differs from the request by at most half a step spread over the segments.
        arc_step = arc / (len(streamline) - 1)
        assert np.all(steps <= arc_step + 1e-4)
        assert abs(arc_step - step) <= step / 2 / (len(streamline) - 1) + 1e-6 or arc < step


def test_resample_argument_errors() -> None:
    points, lengths = _random_streamlines()
    with pytest.raises(ConfigError, match="exactly one"):
        ops.resample(points, lengths)
    with pytest.raises(ConfigError, match="step_size"):
        ops.resample(points, lengths, step_size=-1.0)
    with pytest.raises(ConfigError, match="nb_points"):
        ops.resample(points, lengths, nb_points=1)


def test_compress_keeps_end_points_and_reduces() -> None:
    t = np.linspace(0, 1, 50, dtype=np.float32)
    line = np.stack([t * 4, t * 2, np.zeros_like(t)], axis=1)  # straight, short: 2 points
    points, lengths = ops.pack([line, line[::-1].copy()])
    new_points, new_lengths = ops.compress(points, lengths, tol_error=0.01)
    assert np.all(new_lengths == 2)
    np.testing.assert_allclose(new_points[:2], line[[0, -1]], atol=1e-5)
    with pytest.raises(ConfigError, match="tol_error"):
        ops.compress(points, lengths, 0.0)


def test_split_loses_no_point_and_keeps_short_streamlines_whole() -> None:
    lengths = np.array([2, 5, 6, 40, 100], dtype=np.int64)
    rng = np.random.default_rng(0)
    for _ in range(50):
        uniforms = rng.random(len(lengths))
        new_lengths, source = ops.split(lengths, np.ones(len(lengths), bool), uniforms)
        assert new_lengths.sum() == lengths.sum()
        np.testing.assert_array_equal(np.bincount(source, weights=new_lengths), lengths)
        # the two short ones stay whole; the others give two halves of >= MIN points
        assert list(source[:2]) == [0, 1]
        assert np.all(new_lengths[2:] >= ops.MIN_SPLIT_POINTS)
        assert len(new_lengths) == 8
    unchanged, source = ops.split(lengths, np.zeros(len(lengths), bool), rng.random(5))
    np.testing.assert_array_equal(unchanged, lengths)
    np.testing.assert_array_equal(source, np.arange(5))


def test_split_points_cover_extreme_uniforms() -> None:
    lengths = np.array([6, 6], dtype=np.int64)
    new_lengths, _ = ops.split(lengths, np.array([True, True]), np.array([0.0, 0.999999]))
    np.testing.assert_array_equal(new_lengths, [3, 3, 3, 3])


def test_reverse_is_exact() -> None:
    points, lengths = _random_streamlines()
    flip = np.arange(len(lengths)) % 2 == 0
    flipped = ops.reverse(points, lengths, flip)
    for i, (old, new) in enumerate(zip(ops.unpack(points, lengths),
                                       ops.unpack(flipped, lengths))):
        np.testing.assert_array_equal(new, old[::-1] if flip[i] else old)
    np.testing.assert_array_equal(ops.reverse(flipped, lengths, flip), points)


def test_directions_are_next_steps_per_streamline() -> None:
    a = np.array([[0, 0, 0], [1, 0, 0], [1, 2, 0]], dtype=np.float32)
    b = np.array([[5, 5, 5]], dtype=np.float32)
    c = np.array([[0, 0, 0], [0, 0, 3]], dtype=np.float32)
    points, lengths = ops.pack([a, b, c])
    dirs, counts = ops.directions(points, lengths)
    np.testing.assert_array_equal(counts, [2, 0, 1])
    np.testing.assert_array_equal(dirs, [[1, 0, 0], [0, 2, 0], [0, 0, 3]])


def test_truncated_gaussian_is_truncated_and_scaled() -> None:
    u = np.random.default_rng(0).random(200_000)
    noise = ops.truncated_gaussian(u, sigma=0.5, truncation=2.0)
    assert noise.dtype == np.float32
    assert np.abs(noise).max() <= 1.0
    # std of a standard normal truncated at +-2 sigma is ~0.880
    assert abs(noise.std() / 0.5 - 0.880) < 0.01
    assert abs(noise.mean()) < 0.01


def test_points_after_resampling_modes() -> None:
    stored = np.array([10, 20])
    np.testing.assert_array_equal(ops.points_after_resampling(stored, None, None, None), stored)
    np.testing.assert_array_equal(ops.points_after_resampling(stored, None, None, 7), [7, 7])
    np.testing.assert_array_equal(
        ops.points_after_resampling(stored, np.array([9.0, 0.1]), 1.0, None), [10, 2])
    with pytest.raises(ConfigError):
        ops.points_after_resampling(stored, None, 1.0, None)


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=0, max_size=20), seed=st.integers(0, 999))
def test_split_and_reverse_properties(lengths: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths_a = np.array(lengths, dtype=np.int64)
    points = rng.normal(size=(int(lengths_a.sum()), 3)).astype(np.float32)
    do = rng.random(len(lengths_a)) < 0.5
    new_lengths, source = ops.split(lengths_a, do, rng.random(len(lengths_a)))
    assert new_lengths.sum() == lengths_a.sum()
    np.testing.assert_array_equal(np.bincount(source, weights=new_lengths,
                                              minlength=len(lengths_a)), lengths_a)
    split_sources = np.flatnonzero(np.bincount(source, minlength=len(lengths_a)) == 2)
    assert np.all(do[split_sources])
    assert np.all(lengths_a[split_sources] >= 2 * ops.MIN_SPLIT_POINTS)
    assert np.all(new_lengths[np.isin(source, split_sources)] >= ops.MIN_SPLIT_POINTS)
    flip = rng.random(len(new_lengths)) < 0.5
    flipped = ops.reverse(points, new_lengths, flip)
    np.testing.assert_array_equal(ops.reverse(flipped, new_lengths, flip), points)
    dirs, counts = ops.directions(points, new_lengths)
    assert len(dirs) == counts.sum() == np.maximum(new_lengths - 1, 0).sum()
