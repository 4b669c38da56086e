"""NpyHistory state dicts: incremental float64 snapshots, exact round trips, old checkpoints."""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from dwi_mtl.logging.npy_history import NpyHistory, load_npy_logs


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_each_snapshot_holds_exactly_the_series_at_that_time(tmp_path):
    history = NpyHistory(tmp_path)
    history.append_batch("training", {"loss": 0.1})
    first = history.state_dict()
    history.append_batch("training", {"loss": 0.2, "grad_norm": 1.5})
    second = history.state_dict()
    history.append_batch("training", {"grad_norm": 2.5})
    third = history.state_dict()
    assert first["batch_series"]["training_loss_per_batch"].tolist() == [0.1]
    assert second["batch_series"]["training_loss_per_batch"].tolist() == [0.1, 0.2]
    loss = third["batch_series"]["training_loss_per_batch"].tolist()
    assert loss[:2] == [0.1, 0.2] and math.isnan(loss[2])
    grad = third["batch_series"]["training_grad_norm_per_batch"].tolist()
    assert math.isnan(grad[0]) and grad[1:] == [1.5, 2.5]


def test_series_are_saved_as_float64_tensors_and_restored_bit_for_bit(tmp_path):
    history = NpyHistory(tmp_path)
    values = [0.1 + i / 3 for i in range(1000)] + [math.nan, 1e-300]
    for value in values:
        history.append_batch("training", {"loss": value})
    history.append_epoch("training", {"loss": 1 / 7})
    state = _round_trip(history.state_dict())
    series = state["batch_series"]["training_loss_per_batch"]
    assert isinstance(series, torch.Tensor) and series.dtype == torch.float64
    restored = NpyHistory(tmp_path)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.batch_values("training", "loss"), values)
    assert restored.epoch_values("training", "loss") == [1 / 7]
    restored.append_batch("training", {"loss": 5.0})  # the cache restarts from the restore
    assert restored.state_dict()["batch_series"]["training_loss_per_batch"][-1] == 5.0


def test_a_restore_to_an_earlier_state_drops_the_cached_tail(tmp_path):
    history = NpyHistory(tmp_path)
    history.append_batch("training", {"loss": 1.0})
    early = _round_trip(history.state_dict())
    history.append_batch("training", {"loss": 2.0})
    history.state_dict()
    history.load_state_dict(early)
    history.append_batch("training", {"loss": 3.0})
    assert history.state_dict()["batch_series"]["training_loss_per_batch"].tolist() == [1.0, 3.0]
    history.save()
    np.testing.assert_array_equal(load_npy_logs(tmp_path)["training_loss_per_batch"], [1.0, 3.0])


def test_older_checkpoints_with_numpy_series_still_load(tmp_path):
    """Checkpoints written before the series became tensors hold float64 numpy arrays."""
    old_state = {
        "batch_series": {"training_loss_per_batch": np.array([0.5, math.nan])},
        "epoch_series": {"training_loss_per_epoch": np.array([0.5])},
        "nb_batches": {"training": 2},
        "nb_epochs": {"training": 1},
        "names": [["training", "per_batch", {"loss": "training_loss_per_batch"}],
                  ["training", "per_epoch", {"loss": "training_loss_per_epoch"}]],
    }
    history = NpyHistory(tmp_path)
    history.load_state_dict(_round_trip(old_state))
    loss = history.batch_values("training", "loss")
    assert loss[0] == 0.5 and math.isnan(loss[1])
    history.append_batch("training", {"loss": 0.25})
    assert history.batch_values("training", "loss")[-1] == 0.25
