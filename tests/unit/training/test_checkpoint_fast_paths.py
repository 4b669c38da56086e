"""The cheaper checkpoint write/read paths keep every promise: the marker's checksum is the
file's (XXH3-64, or CRC32 without xxhash), torch's global CRC option is left as it was, write
failures name state.pt, one sync thread serves every background save, corruption is still
caught."""

from __future__ import annotations

import json
import threading
import zlib

import pytest
import torch
import xxhash

import dwi_mtl.training.checkpoint as checkpoint
from dwi_mtl.errors import CheckpointError
from dwi_mtl.training import checksums
from dwi_mtl.training.checkpoint import (
    MARKER_FILE,
    STATE_FILE,
    CheckpointManager,
    read_state_folder,
    write_state_folder,
)


def _state(value: float) -> dict:
    return {"weights": torch.full((300, 300), value), "series": torch.arange(5000.0),
            "epoch": int(value)}


@pytest.mark.parametrize("sync", [True, False])
def test_marker_holds_the_size_and_xxh3_of_the_written_file(tmp_path, sync):
    folder = tmp_path / "step"
    write_state_folder(folder, _state(2.0), {"extra.json": "{}"}, sync=sync)
    data = (folder / STATE_FILE).read_bytes()
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["format_version"] == 3 and marker["checksum"] == "xxh3_64"
    assert marker["size"] == len(data) and marker["digest"] == xxhash.xxh3_64_intdigest(data)
    assert marker["files"]["extra.json"] == {"size": 2,
                                             "digest": xxhash.xxh3_64_intdigest(b"{}")}
    state = read_state_folder(folder)
    assert torch.equal(state["weights"], torch.full((300, 300), 2.0)) and state["epoch"] == 2


def test_without_xxhash_checkpoints_are_written_and_read_with_crc32(tmp_path, monkeypatch):
    monkeypatch.setattr(checksums, "xxhash", None)
    folder = tmp_path / "step"
    write_state_folder(folder, _state(3.0), {"extra.json": "{}"})
    data = (folder / STATE_FILE).read_bytes()
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["checksum"] == "crc32" and marker["digest"] == zlib.crc32(data)
    assert read_state_folder(folder)["epoch"] == 3


def test_an_xxh3_checkpoint_without_xxhash_names_the_package(tmp_path, monkeypatch):
    folder = tmp_path / "step"
    write_state_folder(folder, _state(1.0))
    monkeypatch.setattr(checksums, "xxhash", None)
    with pytest.raises(CheckpointError, match="install the 'xxhash' package"):
        read_state_folder(folder)


def test_a_plain_weights_only_torch_load_reads_the_state(tmp_path):
    """Users load ``best_model/state.pt`` with ``torch.load(path)`` (weights-only by default
    since torch 2.6): the pickle protocol must be one its unpickler reads (not 4 or 5)."""
    folder = tmp_path / "step"
    write_state_folder(folder, {"model": {"w": torch.arange(4.0)}, "epoch": 3})
    reader = torch._C.PyTorchFileReader(str(folder / STATE_FILE))  # no record CRC check
    assert reader.get_record("data.pkl")[:2] == bytes([0x80, checkpoint.PICKLE_PROTOCOL])
    state = torch.load(folder / STATE_FILE, weights_only=True)
    assert torch.equal(state["model"]["w"], torch.arange(4.0)) and state["epoch"] == 3


@pytest.mark.parametrize("flag", [True, False])
def test_torch_crc_option_is_restored_after_a_save(tmp_path, flag):
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(flag)
    try:
        write_state_folder(tmp_path / "a", _state(1.0))
        assert torch.serialization.get_crc32_options() is flag
    finally:
        torch.serialization.set_crc32_options(previous)


def test_crc_option_is_restored_when_torch_save_fails(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", failing)
    with pytest.raises(CheckpointError, match=r"state\.pt.*file write failed"):
        write_state_folder(tmp_path / "step", _state(1.0))
    assert torch.serialization.get_crc32_options() is True
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_flipped_byte_in_a_tensor_record_is_caught(tmp_path):
    """torch.load itself does not check record CRCs: our whole-file checksum must."""
    manager = CheckpointManager(tmp_path / "checkpoint")
    manager.save(_state(1.0), 1)
    manager.save(_state(2.0), 2)
    manager.wait()
    latest = manager.list()[-1].path / STATE_FILE
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights record, the size unchanged
    latest.write_bytes(bytes(data))
    state, info = manager.load_latest()
    assert info.step == 1 and state["epoch"] == 1


def test_background_saves_share_one_sync_thread(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoint", keep_last=2)
    names = set()
    original = manager._sync_then_prune

    def recording(folder):
        names.add(threading.current_thread().ident)
        original(folder)

    manager._sync_then_prune = recording  # type: ignore[method-assign]
    for step in range(1, 6):
        manager.save(_state(float(step)), step)
    manager.wait()
    assert len(names) == 1
    assert [info.step for info in manager.list()] == [4, 5]  # pruned once synced


def test_a_background_sync_failure_is_reported_by_the_next_wait(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "checkpoint")

    def failing(folder):
        raise OSError(5, "Input/output error", str(folder))

    monkeypatch.setattr(checkpoint, "sync_state_folder", failing)
    manager.save(_state(1.0), 1)
    with pytest.raises(CheckpointError, match="Input/output error"):
        manager.wait()
    manager.wait()  # reported once
