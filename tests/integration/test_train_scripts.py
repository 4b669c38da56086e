"""The train, resume and demo scripts: configs, overrides, refusals, exit codes, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dwi_mtl.cli import demo, resume_training, train_model
from dwi_mtl.logging.npy_history import load_npy_logs
from tests.unit.training.trainer_setup import make_hdf5

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripts")
    hdf5 = make_hdf5(folder)
    config = folder / "config.yaml"
    config.write_text(
        "batch_sampler: {batch_size_training: 10, seed: 3}\n"
        "batch_loader: {noise_gaussian_size: 0.05}\n"
        "model: {hidden_size: 8, dropout: 0.1}\n"
        "trainer: {max_epochs: 5, device: cpu, progress_bar: false}\n"
    )
    return folder, hdf5, config


def test_train_with_overrides_then_resume(setup, capsys):
    folder, hdf5, config = setup
    code = train_model.main([
        str(config), str(folder), "run", "--hdf5_file", str(hdf5), "--max_epochs", "2",
        "--learning_rates", "0.01*1", "0.005", "--set", "batch_loader.reverse_ratio=0.5",
        "--plots",
    ])
    assert code == 0
    params = json.loads((folder / "run" / "parameters.json").read_text())
    assert params["batch_loader"]["config"]["reverse_ratio"] == 0.5
    assert params["model"]["config"]["nb_features"] == 4  # taken from the dataset
    logs = load_npy_logs(folder / "run" / "logs")
    np.testing.assert_array_equal(logs["run_lr_per_epoch"], [0.01, 0.005])
    assert (folder / "run" / "plots" / "loss.png").is_file()

    assert train_model.main([str(config), str(folder), "run", "--hdf5_file", str(hdf5)]) == 2
    assert "already exists" in capsys.readouterr().err

    assert resume_training.main([str(folder), "run"]) == 2
    assert "would stop at once" in capsys.readouterr().err
    assert resume_training.main([str(folder), "run", "--new_max_epochs", "3"]) == 0
    logs = load_npy_logs(folder / "run" / "logs")
    np.testing.assert_array_equal(logs["run_lr_per_epoch"], [0.01, 0.005, 0.005])


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("trainer: {max_epochs: 1}\nbogus: 1\n", [], "unknown keys ['bogus']"),
        ("trainer: [1, 2]\n", [], "section 'trainer' must be a mapping"),
        ("trainer: {max_epochz: 1}\n", [], "max_epochz"),
        ("model: {hidden_size: 0}\n", [], "hidden_size"),
        ("trainer: {}\n", ["--set", "nosection.key=1"], "unknown section"),
        ("trainer: {}\n", ["--learning_rates", "fast"], "learning rate item 'fast'"),
    ],
)
def test_bad_configs_exit_2_naming_the_field(setup, tmp_path, capsys, content, extra, message):
    _, hdf5, _ = setup
    config = tmp_path / "bad.yaml"
    config.write_text("batch_sampler: {batch_size_training: 10}\n" + content)
    argv = [str(config), str(tmp_path), "bad", "--hdf5_file", str(hdf5), *extra]
    assert train_model.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_missing_files_exit_2(setup, tmp_path, capsys):
    folder, hdf5, config = setup
    assert train_model.main([str(tmp_path / "none.yaml"), str(tmp_path), "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert resume_training.main([str(tmp_path), "nothing"]) == 2
    assert "parameters.json" in capsys.readouterr().err
    assert train_model.main([str(config), str(tmp_path), "x",
                             "--hdf5_file", str(tmp_path / "none.hdf5")]) == 2


def test_demo_quick_trains_and_writes_plots(tmp_path, caplog):
    assert demo.main(["--quick", "--max_epochs", "2", "--experiments_path", str(tmp_path)]) == 0
    assert (tmp_path / "demo" / "best_model").is_dir()
    assert (tmp_path / "demo" / "plots" / "loss.png").is_file()
    assert demo.main(["--quick", "--max_epochs", "1", "--experiments_path", str(tmp_path)]) == 0
    assert (tmp_path / "demo_2" / "checkpoint").is_dir()


@pytest.mark.parametrize(
    "script", ["train_model.py", "resume_training_from_checkpoint.py", "demo.py"]
)
def test_scripts_have_help(script):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout
