"""``dwi_mtl_train_model`` with an ``mtl`` section: every registered architecture by name, an
interrupted run resumed bit for bit, one clear error per bad config value, and torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

from dwi_mtl.cli import resume_training, track_from_model, train_model
from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.mtl.architectures import ARCHITECTURES
from dwi_mtl.training.trainer import AbstractTrainer
from tests.unit.training.trainer_setup import compare_runs, make_hdf5

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["direction", "eos",
         {"type": "classification", "name": "bundle", "key": "label", "nb_classes": 4}]
ARGS: dict[str, dict[str, Any]] = {
    "mmoe": {"num_experts": 2}, "cgc": {"num_experts": [1, 1]},
    "ple": {"num_experts": [1, 1], "stages": ["conv1", "points"]},
    "dselect_k": {"num_experts": 3, "num_nonzeros": 2},
}
#: A weighting per architecture, rep_grad ones included, so each path is covered once.
WEIGHTING: dict[str, tuple[str | None, dict[str, Any]]] = {
    "hps": ("mgda", {"rep_grad": True}), "cross_stitch": ("dwa", {}),
    "mmoe": ("upgrad", {"rep_grad": True}), "mtan": ("pcgrad", {}), "cgc": ("uw", {}),
    "ple": (None, {}), "dselect_k": ("cagrad", {"rep_grad": True}),
}


@pytest.fixture(scope="module")
def hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hdf5(tmp_path_factory.mktemp("mtl_config"))


def _config(folder: Path, mtl: dict[str, Any] | None, trainer: dict[str, Any] | None = None,
            **sections: Any) -> Path:
    config: dict[str, Any] = {
        "batch_sampler": {"batch_size_training": 10, "seed": 3},
        "batch_loader": {"noise_gaussian_size": 0.05},
        "trainer": {"max_epochs": 1, "device": "cpu", "progress_bar": False, **(trainer or {})},
        **sections,
    }
    if mtl is not None:
        config["mtl"] = mtl
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _mtl(architecture: str, **extra: Any) -> dict[str, Any]:
    return {"architecture": architecture, "architecture_args": ARGS.get(architecture, {}),
            "encoder": {"hidden_size": 4}, "tasks": TASKS, "head_hidden_size": 4, **extra}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_registered_architecture_trains_from_the_config(hdf5: Path, tmp_path: Path,
                                                             name: str) -> None:
    weighting, kwargs = WEIGHTING[name]
    trainer = {"weighting": weighting, "weighting_kwargs": kwargs} if weighting else {}
    extra = {"entropy_regularization": 0.05} if name == "dselect_k" else {}
    config = _config(tmp_path, _mtl(name, **extra), {**trainer, "max_batches_per_epoch_training": 2,
                                            "max_batches_per_epoch_validation": 1})
    assert train_model.main([str(config), str(tmp_path), "run", "--hdf5_file", str(hdf5)]) == 0
    params = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert params["model"]["class"] == "dwi_mtl.models.mtl_tracker.MTLTracker"
    assert params["model"]["config"]["architecture"] == name
    assert params["model"]["config"]["rep_grad"] == bool(kwargs.get("rep_grad"))
    assert params["trainer"]["config"]["task_names"] == ["direction", "eos", "bundle"]
    assert params["batch_loader"]["config"]["data_per_streamline_keys"] == ["label"]
    logs = load_npy_logs(tmp_path / "run" / "logs")
    for task in ("direction", "eos", "bundle"):
        assert logs[f"training_loss_{task}_per_batch"].shape == (2,)
        assert np.isfinite(logs[f"validation_loss_{task}_per_epoch"]).all()
        assert logs[f"training_weight_{task}_per_batch"].shape == (2,)
    assert "validation_direction_angular_error_per_epoch" in logs
    assert "validation_bundle_accuracy_per_epoch" in logs
    # the trained multi-task model tracks (re-reading each streamline; its eos task stops them)
    out = tmp_path / "tracked.trk"
    assert track_from_model.main([
        str(tmp_path), "run", str(out), "--hdf5_file", str(hdf5), "--seeding_group", "input",
        "--seeding_threshold", "0.5", "--step_size", "1", "--min_length", "0",
        "--max_length", "4", "--max_angle", "90", "--log_level", "WARNING"]) == 0
    tractogram = nib.streamlines.load(str(out))
    assert len(tractogram.streamlines) > 0


def _rebuilt(folder: Path, name: str) -> Any:
    return AbstractTrainer.init_from_checkpoint(folder, name)


def test_mtl_run_killed_mid_epoch_or_resumed_later_ends_bit_for_bit(hdf5: Path,
                                                                    tmp_path: Path) -> None:
    mtl = _mtl("mmoe", gate="point")
    trainer = {"weighting": "pcgrad", "weighting_kwargs": {"rep_grad": True},
               "checkpoint_every_n_batches": 2, "max_epochs": 3}
    config = _config(tmp_path, mtl, trainer)
    base = [str(config), str(tmp_path)]
    assert train_model.main([*base, "ref", "--hdf5_file", str(hdf5)]) == 0

    # killed by SIGKILL right after its 6th checkpoint (epoch 1, batch 2), then resumed
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DWI_MTL_FAULT": "checkpoint.renamed:6:kill"}
    child = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_model.py"), *base, "cut", "--hdf5_file",
         str(hdf5)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    killed = _rebuilt(tmp_path, "cut")
    assert (killed.progress.epoch, killed.progress.batch) == (1, 2)  # mid-epoch
    assert resume_training.main([str(tmp_path), "cut"]) == 0

    # trained 1 epoch, then resumed for 2 more
    assert train_model.main([*base, "later", "--hdf5_file", str(hdf5), "--max_epochs", "1"]) == 0
    assert resume_training.main([str(tmp_path), "later", "--new_max_epochs", "3"]) == 0

    reference = _rebuilt(tmp_path, "ref")
    assert reference.epoch == 3
    for name in ("cut", "later"):
        compare_runs(reference, _rebuilt(tmp_path, name), tmp_path, ("ref", name))
        assert_same_weighting_state(reference, _rebuilt(tmp_path, name))


def assert_same_weighting_state(a: Any, b: Any) -> None:
    """The weighting's own state (the step counter seeding PCGrad) matches too."""
    assert a.weighting.state_dict() == b.weighting.state_dict()
    assert a.weighting.state_dict()["step"] == 18


BAD_CASES = [
    ({"architecture": "bogus"}, {}, "mtl", "unknown architecture 'bogus'"),
    ({"architecture_args": {}, "architecture": "mmoe"}, {}, "mtl", "num_experts"),
    ({"architecture_args": {"nb_experts": 2}, "architecture": "hps"}, {}, "mtl", "nb_experts"),
    ({"multi_input": True, "architecture": "cross_stitch"}, {}, "mtl", "multi_input"),
    ({"tasks": ["direction", "steering"]}, {}, "mtl", "unknown task type 'steering'"),
    ({"encoder": {"hidden_size": 0}}, {}, "mtl", "hidden_size"),
    ({"gate": "point"}, {}, "mtl", "gate"),
    ({"bogus": 1}, {}, "mtl", "unknown keys ['bogus']"),
    ({"tasks": None}, {}, "mtl", "needs 'tasks'"),
    ({"tasks": ["eos", {"type": "classification", "key": "nope", "nb_classes": 3}]}, {}, "mtl",
     "key 'tasks'"),
    ({}, {"weighting": "nope"}, "trainer", "'weighting'"),
    ({}, {"weighting": "upgrad", "weighting_kwargs": {"bogus": 1}}, "trainer", "bogus"),
    ({}, {"weighting": "dwa", "weighting_kwargs": {"rep_grad": True}}, "trainer", "rep_grad"),
    ({}, {"weighting_kwargs": {"rep_grad": True}}, "trainer", "'weighting' is not"),
    ({}, {"task_names": ["a", "b"]}, "trainer", "'task_names'"),
]


@pytest.mark.parametrize(("mtl", "trainer", "section", "message"), BAD_CASES)
def test_bad_mtl_configs_exit_2_naming_section_and_key(
    hdf5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mtl: dict[str, Any],
    trainer: dict[str, Any], section: str, message: str,
) -> None:
    options = {k: v for k, v in {**_mtl("hps"), **mtl}.items() if v is not None}
    config = _config(tmp_path, options, trainer)
    assert train_model.main([str(config), str(tmp_path), "bad", "--hdf5_file", str(hdf5)]) == 2
    error = capsys.readouterr().err
    assert f"section '{section}'" in error and message in error, error
    assert not (tmp_path / "bad").exists()


def test_model_section_with_mtl_is_refused_and_overrides_reach_mtl(
    hdf5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, _mtl("hps"), None, model={"hidden_size": 8})
    assert train_model.main([str(config), str(tmp_path), "bad", "--hdf5_file", str(hdf5)]) == 2
    assert "section 'model'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

    single = _config(tmp_path, None, {"max_batches_per_epoch_training": 1})
    argv = [str(single), str(tmp_path), "run", "--hdf5_file", str(hdf5),
            "--set", "mtl.architecture=mtan", "--set", "mtl.tasks=[direction, eos]"]
    assert train_model.main(argv) == 0
    params = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert params["model"]["config"]["architecture"] == "mtan"
    assert params["trainer"]["class"] == "dwi_mtl.models.model_trainer.ModelTrainer"


@pytest.mark.distributed
def test_torchrun_trains_mtl_and_refuses_rep_grad_before_writing(hdf5: Path,
                                                                  tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def launch(config: Path, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(ROOT / "scripts" / "train_model.py"), str(config),
             str(tmp_path), name, "--hdf5_file", str(hdf5)],
            env=env, capture_output=True, text=True, timeout=300, check=False)

    trainer = {"weighting": "upgrad", "max_batches_per_epoch_training": 3,
               "max_batches_per_epoch_validation": 1}
    result = launch(_config(tmp_path, _mtl("mmoe"), trainer), "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    logs = load_npy_logs(tmp_path / "ddp" / "logs")
    np.testing.assert_array_equal(logs["training_nb_streamlines_per_batch"], [10.0] * 3)
    assert logs["training_loss_bundle_per_batch"].shape == (3,)

    rep = {**trainer, "weighting_kwargs": {"rep_grad": True}}
    result = launch(_config(tmp_path, _mtl("mmoe"), rep), "rep")
    assert result.returncode != 0 and "rep_grad cannot run under torch.distributed" in \
        result.stderr
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    ("name", "overrides", "architecture"),
    [("mtl_demo.yaml", [], "mmoe"),
     ("mtl_bundles.yaml", ["mtl.tasks=[direction, {type: classification, name: bundle, "
                           "key: label, nb_classes: 4}]"], "cgc")],
)
def test_the_example_configs_are_valid(hdf5: Path, tmp_path: Path, name: str,
                                       overrides: list[str], architecture: str) -> None:
    """configs/*.yaml, on the small file (input group ``input``, labels ``label``), 1 batch."""
    argv = [str(ROOT / "configs" / name), str(tmp_path), "demo", "--hdf5_file",
            str(hdf5), "--max_epochs", "1", "--set", "batch_loader.input_group=input",
            "--set", "batch_sampler.max_batches_per_epoch_training=1",
            "--set", "batch_sampler.max_batches_per_epoch_validation=1"]
    for item in overrides:
        argv += ["--set", item]
    assert train_model.main(argv) == 0
    params = json.loads((tmp_path / "demo" / "parameters.json").read_text())
    assert params["model"]["config"]["architecture"] == architecture
