"""Progress reporting (log lines off a terminal, tqdm on one) and PNG plots from .npy logs."""

from __future__ import annotations

import io
import logging

import pytest

from dwi_mtl.errors import DataError
from dwi_mtl.logging.npy_history import NpyHistory
from dwi_mtl.logging.plots import plot_training_curves
from dwi_mtl.logging.progress import ProgressReporter


def test_plain_log_lines_when_not_a_terminal(caplog):
    reporter = ProgressReporter(stream=io.StringIO(), log_every_n_batches=2)
    assert not reporter.use_tqdm
    with caplog.at_level(logging.INFO, logger="dwi_mtl.progress"):
        reporter.start_phase("training", 3, total=4)
        for loss in (1.0, 0.5, 0.25, 0.125):
            reporter.update(loss)
        reporter.end_phase({"loss": 0.47})
    assert "epoch 3 training: batch 2/4, loss 0.5" in caplog.text
    assert "epoch 3 training done: loss 0.47" in caplog.text


def test_tqdm_bar_when_forced():
    stream = io.StringIO()
    reporter = ProgressReporter(use_tqdm=True, stream=stream)
    reporter.start_phase("validation", 0, total=3, done=1)
    reporter.update(0.5)
    reporter.end_phase({"loss": 0.5})
    assert "epoch 0 validation" in stream.getvalue()


def test_plots_one_png_per_metric(tmp_path):
    history = NpyHistory(tmp_path / "logs")
    for epoch in range(3):
        history.append_epoch("training", {"loss": 1.0 / (epoch + 1), "lr": 0.1})
        history.append_epoch("validation", {"loss": 1.5 / (epoch + 1)})
    history.save()
    written = plot_training_curves(tmp_path / "logs", tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "lr.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_logs_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no per-epoch"):
        plot_training_curves(tmp_path, tmp_path / "plots")
