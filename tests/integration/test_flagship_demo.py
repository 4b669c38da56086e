"""The flagship demo runs end to end in a reduced size: train (MTL), evaluate, track, plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np

from dwi_mtl.cli import track_from_model
from dwi_mtl.cli.common import run_cli
from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.training.experiment import free_experiment_name

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flagship_demo.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flagship_demo", EXAMPLE)
    if spec is None or spec.loader is None:
        raise ImportError(EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_flagship_trains_tracks_and_reports(tmp_path: Path) -> None:
    example = _example()
    argv = ["--experiments_path", str(tmp_path / "exp"), "--quick",
            "--cache_dir", str(tmp_path / "cache"), "--log_level", "WARNING"]
    assert run_cli(example.main, argv) == 0
    folder = tmp_path / "exp" / "flagship"
    results = json.loads((folder / "results.json").read_text())
    assert 0.0 < results["held_out_angular_error"] < 180.0
    assert results["tracked_streamlines"] > 0
    assert 0.0 <= results["share_inside_mask"] <= 1.0
    assert results["teacher_share_inside_mask"] > 0.9
    logs = load_npy_logs(folder / "logs")
    for key in ("training_direction_loss_per_epoch", "training_eos_loss_per_epoch",
                "validation_direction_angular_error_per_epoch", "validation_eos_loss_per_epoch",
                "training_weight_eos_per_epoch"):
        assert logs[key].shape == (2,) and np.isfinite(logs[key]).all(), key
    pngs = sorted(p.name for p in (folder / "plots").glob("*.png"))
    assert "direction_angular_error.png" in pngs and "loss.png" in pngs
    tractogram = nib.streamlines.load(results["tractogram"])
    assert len(tractogram.streamlines) == results["tracked_streamlines"]
    assert tuple(tractogram.header["dimensions"]) == (6, 10, 10)
    assert free_experiment_name(tmp_path / "exp", "flagship") == "flagship_2"
    # the trained model tracks again through dwi_mtl_track_from_model
    out = tmp_path / "again.tck"
    assert track_from_model.main([str(folder), "tracking_model", str(out), "--seeding_group",
                                  "fa", "--seeding_threshold", "0.1", "--min_length", "5",
                                  "--max_length", "60", "--log_level", "WARNING"]) == 0
    assert len(nib.streamlines.load(str(out)).streamlines) > 0


def test_dwi_mtl_demo_runs_the_flagship_and_resumes(tmp_path: Path) -> None:
    from dwi_mtl.cli import demo

    base = ["--quick", "--experiments_path", str(tmp_path), "--cache_dir",
            str(tmp_path / "cache"), "--log_level", "WARNING"]
    assert demo.main([*base, "--max_epochs", "1"]) == 0
    assert demo.main([*base, "--max_epochs", "2", "--resume"]) == 0
    logs = load_npy_logs(tmp_path / "demo" / "logs")
    assert logs["validation_direction_angular_error_per_epoch"].shape == (2,)
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["best_epoch"] in (0, 1)
    assert demo.main([*base, "--max_epochs", "0"]) == 2
    assert demo.main([*base, "--experiment_name", "absent", "--resume"]) == 2
