"""NpyHistory: aligned series, .npy files, truncation on restore."""

from __future__ import annotations

import math

import numpy as np

from dwi_mtl.logging.npy_history import NpyHistory, load_npy_logs


def test_series_are_aligned_and_saved(tmp_path):
    history = NpyHistory(tmp_path / "logs")
    history.append_batch("training", {"loss": 1.0})
    history.append_batch("training", {"loss": 2.0, "grad_norm": 0.5})
    history.append_batch("training", {"grad_norm": 0.25})
    history.append_epoch("training", {"loss": 1.5})
    history.save()
    logs = load_npy_logs(tmp_path / "logs")
    np.testing.assert_array_equal(logs["training_loss_per_batch"], [1.0, 2.0, math.nan])
    np.testing.assert_array_equal(logs["training_grad_norm_per_batch"], [math.nan, 0.5, 0.25])
    assert history.epoch_values("training", "loss") == [1.5]
    assert history.batch_values("validation", "loss") == []


def test_restoring_a_state_truncates_the_files(tmp_path):
    history = NpyHistory(tmp_path)
    history.append_batch("training", {"loss": 1.0})
    state = history.state_dict()
    history.append_batch("training", {"loss": 2.0, "late_metric": 3.0})
    history.save()
    assert (tmp_path / "training_late_metric_per_batch.npy").exists()
    restored = NpyHistory(tmp_path)
    restored.load_state_dict(state)
    restored.save()
    logs = load_npy_logs(tmp_path)
    assert list(logs) == ["training_loss_per_batch"]
    np.testing.assert_array_equal(logs["training_loss_per_batch"], [1.0])


def test_padding_still_works_after_a_restore(tmp_path):
    history = NpyHistory(tmp_path)
    history.append_batch("training", {"loss": 1.0, "grad_norm": 2.0})
    restored = NpyHistory(tmp_path)
    restored.load_state_dict(history.state_dict())
    restored.append_batch("training", {"loss": 3.0})
    grad_norms = restored.batch_values("training", "grad_norm")
    assert grad_norms[0] == 2.0 and math.isnan(grad_norms[1])
    assert restored.batch_values("training", "loss") == [1.0, 3.0]
