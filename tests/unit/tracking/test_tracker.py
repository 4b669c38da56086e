"""Tracker: straight fibres give straight lines; step, angle, length, mask and EOS limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models import RecurrentDirectionModel, TransformerDirectionModel
from dwi_mtl.tracking import Tracker, TrackingOptions, seeds_from_mask, seeds_from_points
from dwi_mtl.tracking.space import rasmm_to_voxel, voxel_to_rasmm

SHAPE = (20, 10, 10)


def feature_model(cls=RecurrentDirectionModel, eos_bias: float | None = None, **kwargs):
    """A real model whose head outputs the input features as the direction (3 features)."""
    model = cls(3, **kwargs) if cls is RecurrentDirectionModel else cls(
        3, d_model=8, nb_heads=2, nb_layers=1, dim_feedforward=8, dropout=0.0, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.head.layer.bias[:3] = torch.tensor([1.0, 0.0, 0.0])
        if eos_bias is not None:
            model.head.layer.bias[-1] = eos_bias
    return model


def straight_volume() -> np.ndarray:
    volume = np.zeros((*SHAPE, 3), np.float32)
    volume[..., 0] = 1.0
    return volume


def box_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[2:18, 2:8, 2:8] = True
    return mask


@pytest.mark.parametrize("cls", [RecurrentDirectionModel, TransformerDirectionModel])
def test_straight_fibres_give_straight_lines_up_to_the_mask(cls) -> None:
    options = TrackingOptions(step_size=1.0, min_length=0.0, max_length=100.0)
    tracker = Tracker(feature_model(cls), straight_volume(), np.array([2.0, 2.0, 2.0]),
                      options, stopping_mask=box_mask())
    seeds = np.array([[9.5, 5.5, 5.5], [4.25, 3.5, 6.5]], np.float32)
    lines = tracker.track(seeds)
    assert len(lines) == 2
    for line, seed in zip(lines, seeds, strict=True):
        steps = np.diff(line, axis=0)
        # bidirectional: the backward half would turn by 180 degrees, so it stops at the seed
        np.testing.assert_allclose(steps, np.tile([[-0.5, 0, 0]], (len(steps), 1)), atol=1e-5)
        np.testing.assert_allclose(line[-1], seed, atol=1e-5)
        assert 17.5 <= line[0][0] < 18.0  # last point before leaving the mask at x = 18


def test_max_length_min_length_and_unidirectional() -> None:
    options = TrackingOptions(step_size=2.0, min_length=5.0, max_length=6.0, bidirectional=False)
    tracker = Tracker(feature_model(), straight_volume(), np.ones(3), options)
    lines = tracker.track(np.array([[1.5, 5, 5], [18.5, 5, 5]], np.float32))
    assert len(lines) == 1  # the second seed leaves the volume after one step (2 mm < 5 mm)
    np.testing.assert_allclose(lines[0][:, 0], [1.5, 3.5, 5.5, 7.5], atol=1e-5)


def test_max_angle_stops_sharp_turns() -> None:
    volume = straight_volume()
    volume[10:, ..., 0], volume[10:, ..., 1] = 0.0, 1.0  # turn by 90 degrees at x = 10
    model = _identity_features_model()  # predicts the fibre direction of the volume
    lines_sharp = Tracker(model, volume, np.ones(3), TrackingOptions(
        step_size=1.0, min_length=0.0, max_angle=30.0, bidirectional=False)).track(
        np.array([[5.5, 2.5, 5.5]], np.float32))
    lines_loose = Tracker(model, volume, np.ones(3), TrackingOptions(
        step_size=1.0, min_length=0.0, max_angle=95.0, bidirectional=False)).track(
        np.array([[5.5, 2.5, 5.5]], np.float32))
    assert lines_sharp[0][-1][0] < 11.0 and np.ptp(lines_sharp[0][:, 1]) == 0
    assert np.ptp(lines_loose[0][:, 1]) > 3.0


def _identity_features_model() -> RecurrentDirectionModel:
    """A GRU model with hidden = input features (0/1 volumes) and head = identity."""
    model = RecurrentDirectionModel(3, hidden_size=3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # GRU: z = 0 (update gate off -> h = n), r = 1, n = tanh(W x) with W = 10 I
        model.rnn.weight_ih_l0[6:9] = 10.0 * torch.eye(3)
        model.rnn.bias_hh_l0[0:3] = 10.0   # reset gate open
        model.rnn.bias_ih_l0[3:6] = -10.0  # update gate closed
        model.head.layer.weight.copy_(torch.eye(3))
    return model


def test_end_of_streamline_probability_stops_tracking() -> None:
    options = TrackingOptions(step_size=1.0, min_length=0.0, bidirectional=False)
    stopping = Tracker(feature_model(eos=True, eos_bias=5.0), straight_volume(), np.ones(3),
                       options).track(np.array([[2.5, 5, 5]], np.float32))
    going = Tracker(feature_model(eos=True, eos_bias=-5.0), straight_volume(), np.ones(3),
                    options).track(np.array([[2.5, 5, 5]], np.float32))
    assert len(stopping[0]) == 1 and len(going[0]) == 18


def test_sampled_tracking_is_reproducible() -> None:
    model = feature_model(direction_getter="fisher_von_mises")
    with torch.no_grad():
        model.head.layer.bias[3] = 3.0  # kappa ~ 3: wide spread
    options = TrackingOptions(step_size=0.5, min_length=0.0, max_angle=90.0, sample=True, seed=7)
    seeds = seeds_from_mask(box_mask(), 1, seed=3)[:50]
    runs = [Tracker(model, straight_volume(), np.ones(3), options,
                    stopping_mask=box_mask()).track(seeds) for _ in range(2)]
    assert len(runs[0]) == len(runs[1]) == 50
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(np.ptp(line[:, 1]) > 0.2 for line in runs[0])  # really sampled


def test_seeding_from_mask_and_points() -> None:
    mask = np.zeros(SHAPE, bool)
    mask[3, 4, 5] = mask[10, 1, 2] = True
    seeds = seeds_from_mask(mask, seeds_per_voxel=4, seed=1)
    assert seeds.shape == (8, 3)
    assert set(map(tuple, np.floor(seeds).astype(int))) == {(3, 4, 5), (10, 1, 2)}
    np.testing.assert_array_equal(seeds, seeds_from_mask(mask, 4, seed=1))
    affine = np.array([[2.0, 0, 0, -10], [0, 2, 0, 5], [0, 0, 2, 0], [0, 0, 0, 1]])
    rasmm = voxel_to_rasmm(seeds, affine)
    np.testing.assert_allclose(rasmm_to_voxel(rasmm, affine), seeds, atol=1e-5)
    np.testing.assert_allclose(seeds_from_points(rasmm, affine, SHAPE), seeds, atol=1e-5)
    with pytest.raises(DataError, match="outside"):
        seeds_from_points(np.array([[1000.0, 0, 0]]), affine, SHAPE)
    with pytest.raises(DataError, match="no non-zero"):
        seeds_from_mask(np.zeros(SHAPE), 1)


def test_bad_options_and_inputs_raise() -> None:
    with pytest.raises(ConfigError, match="step_size"):
        TrackingOptions(step_size=0).check()
    with pytest.raises(ConfigError, match="max_angle"):
        TrackingOptions(max_angle=200).check()
    with pytest.raises(ConfigError, match="min_length"):
        TrackingOptions(min_length=50, max_length=10).check()
    with pytest.raises(DataError, match="features per point"):
        Tracker(feature_model(), np.zeros((*SHAPE, 4), np.float32), np.ones(3))
    with pytest.raises(DataError, match="stopping mask"):
        Tracker(feature_model(), straight_volume(), np.ones(3), stopping_mask=np.ones((2, 2, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tracking_on_the_gpu_matches_the_cpu() -> None:
    options = TrackingOptions(step_size=1.0, min_length=0.0, max_length=100.0)
    seeds = seeds_from_mask(box_mask(), 1, seed=2)[:20]
    lines = {device: Tracker(feature_model(), straight_volume(), np.array([2.0, 2.0, 2.0]),
                             options, stopping_mask=box_mask(), device=device).track(seeds)
             for device in ("cpu", "cuda")}
    assert len(lines["cpu"]) == len(lines["cuda"])
    for a, b in zip(lines["cpu"], lines["cuda"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
