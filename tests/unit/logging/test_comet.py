"""Comet sink: offline archive with no network at all; continued experiment; disabled mode."""

from __future__ import annotations

import socket

import pytest

from dwi_mtl.errors import ConfigError
from dwi_mtl.logging.comet import CometSink


@pytest.fixture
def no_network(monkeypatch):
    """Make every connection attempt fail at once, and count them."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_offline_writes_archives_and_continues_the_same_experiment(tmp_path, no_network):
    sink = CometSink("offline", tmp_path / "comet", project_name="p", experiment_name="run")
    sink.log_parameters({"lr": 0.1})
    sink.log_batch("training", 0, {"loss": 1.0})
    sink.log_epoch(0, {"training_loss": 1.0})
    state = sink.state_dict()
    sink.close()
    key = state["experiment_key"]
    assert key and (tmp_path / "comet" / f"{key}.zip").is_file()
    resumed = CometSink("offline", tmp_path / "comet", project_name="p")
    resumed.load_state_dict(state)
    resumed.log_batch("training", 1, {"loss": 0.5})
    resumed.close()
    assert resumed.experiment_key == key
    archives = sorted(p.name for p in (tmp_path / "comet").glob("*.zip"))
    assert len(archives) == 2 and all(name.startswith(key) for name in archives)
    assert no_network == []


def test_disabled_does_nothing(tmp_path):
    sink = CometSink("disabled", tmp_path / "comet")
    sink.log_batch("training", 0, {"loss": 1.0})
    sink.close()
    assert not sink.enabled and not (tmp_path / "comet").exists()


@pytest.mark.parametrize(("mode", "folder"), [("cloud", "x"), ("offline", None)])
def test_bad_settings_are_config_errors(mode, folder):
    with pytest.raises(ConfigError, match="comet"):
        CometSink(mode, folder)
