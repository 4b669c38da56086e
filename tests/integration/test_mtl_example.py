"""The MTL example on the embedded bundles demo: pre-training, hooks, downstream, resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from dwi_mtl.cli.common import run_cli
from dwi_mtl.logging.npy_history import load_npy_logs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mtl_pretrain_downstream.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mtl_pretrain_downstream", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_pretrains_probes_and_evaluates_downstream_then_resumes(tmp_path: Path) -> None:
    example = _example()
    args = ["--experiments_path", str(tmp_path), "--name", "demo", "--downstream_every", "1",
            "--cache_dir", str(tmp_path / "cache"), "--log_level", "WARNING"]
    assert run_cli(example.main, [*args, "--epochs", "1"]) == 0
    assert run_cli(example.main, [*args, "--epochs", "2", "--resume"]) == 0
    logs = load_npy_logs(tmp_path / "demo" / "logs")
    for key in ("validation_direction_loss_per_epoch", "validation_bundle_loss_per_epoch",
                "validation_bundle_accuracy_per_epoch", "run_hook_rf_bundle_accuracy_per_epoch",
                "run_downstream_length_loss_per_epoch", "run_downstream_length_test_mse_per_epoch"):
        assert logs[key].shape == (2,) and np.isfinite(logs[key]).all(), key
    assert (tmp_path / "demo" / "best_model").is_dir()
    assert list((tmp_path / "demo" / "tensorboard").glob("events.out.tfevents.*"))


def test_example_refuses_a_missing_experiments_path(tmp_path: Path) -> None:
    example = _example()
    code = run_cli(example.main, ["--experiments_path", str(tmp_path / "missing"),
                                  "--cache_dir", str(tmp_path / "cache")])
    assert code == 2
