"""Tracking with an MTLTracker: re-reading each streamline at every step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dwi_mtl.data.interpolation import interpolate_volume_torch
from dwi_mtl.errors import ConfigError
from dwi_mtl.models.mtl_tracker import MTLTracker
from dwi_mtl.models.streamline_encoders import PackedStreamlines
from dwi_mtl.tracking import Tracker, TrackingOptions

NB_FEATURES = 4
#: Causal configurations (the prediction at a point depends on the points before it only).
CAUSAL: dict[str, dict[str, Any]] = {
    "hps": {},
    "mmoe_point_gate": {"architecture": "mmoe", "architecture_args": {"num_experts": 2},
                        "gate": "point"},
    "cross_stitch": {"architecture": "cross_stitch"},
    "previous_dirs_and_points": {"encoder": {"nb_previous_dirs": 2, "use_points": True}},
}


def _volume() -> np.ndarray:
    return np.random.default_rng(0).random((12, 12, 12, NB_FEATURES)).astype(np.float32)


def _model(tasks: list[Any] | None = None, **kwargs: Any) -> MTLTracker:
    torch.manual_seed(0)
    return MTLTracker(NB_FEATURES, tasks or ["direction", "eos"], **kwargs).eval()


def _options(**kwargs: Any) -> TrackingOptions:
    values = {"step_size": 0.5, "max_angle": 180.0, "min_length": 0.0, "max_length": 4.0,
              "eos_threshold": 1.0, "bidirectional": False, **kwargs}
    return TrackingOptions(**values)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_each_step_follows_the_model_read_on_the_whole_streamline(name: str) -> None:
    model, volume = _model(**CAUSAL[name]), _volume()
    tracker = Tracker(model, volume, np.ones(3), _options())
    lines = tracker.track(np.array([[6.0, 6.0, 6.0], [5.2, 6.7, 4.9], [7.1, 5.3, 6.4]]))
    assert lines and all(len(line) == 9 for line in lines)  # 4 mm in 0.5 mm steps
    points = torch.as_tensor(np.concatenate(lines))
    lengths = torch.as_tensor([len(line) for line in lines])
    inputs = interpolate_volume_torch(torch.as_tensor(volume), points)
    with torch.no_grad():
        predicted = model(PackedStreamlines(points, lengths, inputs))["direction"]
    # step i of a streamline went along the prediction read at its point i
    starts = torch.cumsum(lengths, 0) - lengths
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        steps = points[start + 1:start + length] - points[start:start + length - 1]
        expected = torch.nn.functional.normalize(predicted[start:start + length - 1], dim=-1)
        torch.testing.assert_close(steps / 0.5, expected, atol=1e-4, rtol=1e-4)


def test_the_backward_half_reads_the_flipped_forward_half_first() -> None:
    model, volume = _model(**CAUSAL["previous_dirs_and_points"]), _volume()
    seeds = np.array([[6.0, 6.0, 5.5], [5.2, 6.7, 6.5], [7.1, 5.3, 7.4]])
    mask = np.ones(volume.shape[:3], bool)
    mask[:, :, 8:] = False  # a wall: forward halves of different lengths (padded state)
    options = {"max_length": 3.0}
    halves = Tracker(model, volume, np.ones(3), _options(**options),
                     stopping_mask=mask).track(seeds)
    lines = Tracker(model, volume, np.ones(3), _options(**options, bidirectional=True),
                    stopping_mask=mask).track(seeds)
    assert len({len(half) for half in halves}) > 1
    backward_steps = 0
    for half, line in zip(halves, lines, strict=True):
        k = len(half)
        np.testing.assert_allclose(line[:k], half[::-1], atol=1e-6)  # the flipped first half
        points = torch.as_tensor(line)
        inputs = interpolate_volume_torch(torch.as_tensor(volume), points)
        with torch.no_grad():
            predicted = model(PackedStreamlines(points, torch.as_tensor([len(line)]),
                                                inputs))["direction"]
        # each backward step (from point k - 1 on) was taken reading the line before it
        steps = (points[k:] - points[k - 1:-1]) / 0.5
        expected = torch.nn.functional.normalize(predicted[k - 1:-1], dim=-1)
        torch.testing.assert_close(steps, expected, atol=1e-4, rtol=1e-4)
        backward_steps += len(steps)
    assert backward_steps > 0


def test_the_eos_task_stops_the_streamlines() -> None:
    model = _model()
    with torch.no_grad():
        model.architecture.decoders["eos"][-1].bias.fill_(20.0)  # the model says "stop" everywhere
    tracker = Tracker(model, _volume(), np.ones(3), _options(eos_threshold=0.5))
    assert all(len(line) == 1 for line in tracker.track(np.array([[6.0, 6.0, 6.0]])))


def test_without_an_eos_task_only_the_tracking_options_stop() -> None:
    model = _model(["direction"])
    tracker = Tracker(model, _volume(), np.ones(3), _options(eos_threshold=0.5))
    assert all(len(line) == 9 for line in tracker.track(np.array([[6.0, 6.0, 6.0]])))


def test_a_model_without_a_direction_task_is_refused_with_a_clear_error() -> None:
    model = _model([{"type": "classification", "name": "bundle", "key": "label",
                     "nb_classes": 2}, "eos"])
    tracker = Tracker(model, _volume(), np.ones(3), _options())
    with pytest.raises(ConfigError, match="no direction task"):
        tracker.track(np.array([[6.0, 6.0, 6.0]]))


def test_a_rep_grad_model_keeps_no_representation_while_tracking() -> None:
    model = _model(rep_grad=True)
    Tracker(model, _volume(), np.ones(3), _options()).track(np.array([[6.0, 6.0, 6.0]]))
    assert model.architecture._representation == {}


def test_streamlines_that_stop_early_leave_the_others_running() -> None:
    mask = np.ones((12, 12, 12), bool)
    mask[1:4, 1:4, 1:4] = False
    mask[2, 2, 2] = True  # the first seed's voxel, walled in: it stops within a step or two
    lines = Tracker(_model(), _volume(), np.ones(3), _options(max_length=3.0),
                    stopping_mask=mask).track(
        np.array([[2.5, 2.5, 2.5], [8.0, 8.0, 8.0], [8.5, 7.0, 6.5]]))
    assert len(lines[0]) <= 3
    assert [len(line) for line in lines[1:]] == [7, 7]  # 3 mm in 0.5 mm steps
