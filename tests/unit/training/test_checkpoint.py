"""Atomic checkpoint folders: completeness marker, keep-last-N, corruption fallback, devices."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from dwi_mtl.errors import CheckpointError
from dwi_mtl.training.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    MARKER_FILE,
    STATE_FILE,
    CheckpointManager,
    read_state_folder,
    recover_replaced_folder,
    replace_folder_atomically,
    write_state_folder,
)


def _state(value: float) -> dict:
    return {"weights": torch.full((4, 3), value), "rng": np.random.get_state(), "epoch": int(value)}


def test_save_then_load_roundtrip(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoint")
    manager.save(_state(1.0), step=1)
    state, info = manager.load_latest()
    assert info.step == 1 and state["epoch"] == 1
    assert torch.equal(state["weights"], torch.full((4, 3), 1.0))
    marker = json.loads((info.path / MARKER_FILE).read_text())
    assert marker["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert marker["size"] == (info.path / STATE_FILE).stat().st_size


def test_keeps_only_the_last_n(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 6):
        manager.save(_state(float(step)), step)
    manager.wait()
    assert [info.step for info in manager.list()] == [4, 5]


def test_truncated_latest_falls_back_to_previous_with_warning(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(_state(1.0), 1)
    latest = manager.save(_state(2.0), 2)
    data = (latest / STATE_FILE).read_bytes()
    (latest / STATE_FILE).write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        state, info = manager.load_latest()
    assert info.step == 1 and state["epoch"] == 1
    assert "corrupt" in caplog.text and str(latest) in caplog.text


def test_flipped_byte_is_detected_by_the_checksum(tmp_path):
    folder = tmp_path / "step"
    write_state_folder(folder, _state(3.0))
    data = bytearray((folder / STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / STATE_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_state_folder(folder)


def test_every_checkpoint_corrupt_is_one_clear_error(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.save(_state(1.0), 1)
    (path / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="every checkpoint is corrupt"):
        manager.load_latest()


def test_folder_without_marker_is_ignored_and_temporaries_cleaned(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(_state(1.0), 1)
    (tmp_path / "step_0000000009").mkdir()  # a crash before the rename leaves no such folder,
    (tmp_path / ".tmp-step_0000000002-1").mkdir()  # but a temporary folder may remain
    assert [info.step for info in manager.list()] == [1]
    manager.save(_state(2.0), 2)
    assert not (tmp_path / ".tmp-step_0000000002-1").exists()


def test_unknown_format_version_is_refused(tmp_path):
    folder = tmp_path / "step"
    write_state_folder(folder, _state(1.0))
    marker = json.loads((folder / MARKER_FILE).read_text())
    (folder / MARKER_FILE).write_text(json.dumps({**marker, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        read_state_folder(folder)


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(_state(1.0), 7)
    manager.save(_state(2.0), 7)
    state, info = manager.load_latest()
    assert info.step == 7 and state["epoch"] == 2


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(CheckpointError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_no_checkpoint_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        CheckpointManager(tmp_path).load_latest()


def test_replace_folder_atomically_and_recover(tmp_path):
    best = tmp_path / "best_model"
    replace_folder_atomically(best, {"epoch": 1}, {"best_epoch_losses.json": "{}"})
    replace_folder_atomically(best, {"epoch": 2}, {"best_epoch_losses.json": "{}"})
    assert read_state_folder(best)["epoch"] == 2
    assert sorted(os.listdir(tmp_path)) == ["best_model"]
    os.rename(best, tmp_path / ".best_model.old")  # a crash between the two renames
    recover_replaced_folder(best)
    assert read_state_folder(best)["epoch"] == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_checkpoint_loads_on_cpu(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save({"weights": torch.ones(3, device="cuda")}, 1)
    state, _ = manager.load_latest(map_location="cpu")
    assert state["weights"].device.type == "cpu"


@pytest.mark.parametrize("durability", ["background", "sync", "none"])
def test_durability_modes_keep_the_last_n(tmp_path, durability):
    manager = CheckpointManager(tmp_path, keep_last=2, durability=durability)
    for step in range(1, 5):
        manager.save(_state(float(step)), step)
    manager.wait()
    assert [info.step for info in manager.list()] == [3, 4]
    assert manager.load_latest()[0]["epoch"] == 4


def test_unknown_durability_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="durability"):
        CheckpointManager(tmp_path, durability="maybe")
