"""dwi_mtl_upload_logs_to_comet on real offline archives, offline only (the network is blocked)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dwi_mtl.cli.common import EXIT_BAD_INPUT
from dwi_mtl.cli.upload_logs_to_comet import (
    EXIT_UPLOAD_FAILED,
    find_archives,
    main,
    read_archive,
    upload_order,
)
from dwi_mtl.errors import DataError
from dwi_mtl.logging.comet import CometSink

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> Path:
    """An experiment folder with the real archives of a run and of its resume (same key)."""
    experiment = tmp_path_factory.mktemp("comet_run") / "exp"
    sink = CometSink("offline", experiment / "comet", project_name="dwi", experiment_name="exp")
    sink.log_parameters({"lr": 0.01})
    sink.log_epoch(0, {"loss": 1.0})
    state = sink.state_dict()
    sink.close()
    resumed = CometSink("offline", experiment / "comet", project_name="dwi",
                        experiment_name="exp")
    resumed.load_state_dict(state)
    resumed.log_epoch(1, {"loss": 0.5})
    resumed.close()
    return experiment


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails the test."""
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"network access attempted in a test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0]))
    return attempts


@pytest.fixture
def no_api_key(tmp_path, monkeypatch):
    """No COMET_API_KEY and no .comet.config in the home or working folder."""
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COMET_CONFIG", str(tmp_path / "no.comet.config"))
    monkeypatch.chdir(tmp_path)


def test_archives_of_a_run_and_its_resume(offline_run):
    archives = [read_archive(p) for p in find_archives([offline_run])]
    assert len(archives) == 2
    assert len({a.experiment_key for a in archives}) == 1
    ordered = upload_order(list(reversed(archives)))
    assert [a.creates for a in ordered] == [True, False]
    assert ordered[0].start_time <= ordered[1].start_time
    assert all(a.project_name == "dwi" and a.nb_messages > 0 for a in archives)


def test_dry_run_lists_in_upload_order_without_network(offline_run, capsys, no_network):
    assert main([str(offline_run), "--dry_run"]) == 0
    err = capsys.readouterr().err
    creating = [p for p in (offline_run / "comet").glob("*.zip") if "-" not in p.stem][0]
    lines = [line for line in err.splitlines() if "/2 " in line]
    assert len(lines) == 2
    assert str(creating) in lines[0] and "creates it" in lines[0]
    assert "resumed run" in lines[1]
    assert "nothing sent" in err
    assert no_network == []


def test_the_same_archives_found_from_every_kind_of_path(offline_run):
    zips = sorted((offline_run / "comet").glob("*.zip"))
    by_folder = find_archives([offline_run])
    assert find_archives([offline_run / "comet"]) == by_folder
    assert sorted(find_archives([*zips, offline_run])) == sorted(by_folder)


def test_missing_path_and_empty_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--dry_run"]) == EXIT_BAD_INPUT
    assert f"'{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    (tmp_path / "exp" / "comet").mkdir(parents=True)
    assert main([str(tmp_path / "exp"), "--dry_run"]) == EXIT_BAD_INPUT
    assert "no offline Comet archive" in capsys.readouterr().err


def test_a_file_that_is_not_an_archive(tmp_path, capsys):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"not a zip")
    assert main([str(bad), "--dry_run"]) == EXIT_BAD_INPUT
    assert f"'{bad}' is not an offline Comet archive" in capsys.readouterr().err
    with pytest.raises(DataError, match="broken.zip"):
        read_archive(bad)


def test_upload_without_api_key_is_refused_offline(offline_run, capsys, no_network,
                                                    no_api_key):
    assert main([str(offline_run)]) == EXIT_BAD_INPUT
    assert "no Comet API key" in capsys.readouterr().err
    assert no_network == []
    assert len(list((offline_run / "comet").glob("*.zip"))) == 2  # archives kept


def test_upload_hands_the_archives_to_comet_in_order(offline_run, monkeypatch, tmp_path,
                                                     no_network):
    """comet_ml's upload function (it needs the network) replaced by a recorder."""
    import comet_ml.offline

    calls = []
    monkeypatch.setenv("COMET_API_KEY", "0123456789abcdef0123456789")
    monkeypatch.setattr(comet_ml.offline, "main_upload",
                        lambda archives, force, **kwargs: calls.append((archives, force, kwargs)))
    assert main([str(offline_run), "--project_name", "other", "--force_upload"]) == 0
    archives, force, kwargs = calls[0]
    assert [read_archive(Path(p)).creates for p in archives] == [True, False]
    assert force is True
    assert kwargs == {"override_workspace": None, "override_project_name": "other"}

    def fail(*args, **kwargs):
        raise comet_ml.offline.OfflineExperimentUploadFailed("server said no")

    monkeypatch.setattr(comet_ml.offline, "main_upload", fail)
    copy = shutil.copytree(offline_run, tmp_path / "copy")
    assert main([str(copy)]) == EXIT_UPLOAD_FAILED
    assert no_network == []


def test_arguments_and_script(offline_run):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    script = REPO / "scripts" / "upload_logs_to_comet.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "--dry_run" in result.stdout
    result = subprocess.run([sys.executable, str(script), str(offline_run / "missing")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == EXIT_BAD_INPUT and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
