"""Trainer logs: Comet offline continued after a resume, TensorBoard events, moved dataset,
and a CUDA checkpoint resumed on CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dwi_mtl.errors import CheckpointError
from dwi_mtl.training.trainer import AbstractTrainer
from tests.unit.training.trainer_setup import InterruptError, interrupt_at, make_hdf5, make_trainer


def test_comet_offline_and_tensorboard_continue_after_resume(tmp_path):
    hdf5 = make_hdf5(tmp_path)
    trainer = make_trainer(hdf5, tmp_path, "logged", max_epochs=2, comet_mode="offline",
                           comet_project="tests", tensorboard=True, log_every_n_batches=2,
                           checkpoint_every_n_batches=3)
    interrupt_at(trainer, "training", 1, 1)
    with pytest.raises(InterruptError):
        trainer.train_and_validate()
    key = trainer.sinks.sinks["comet"].experiment_key
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "logged")
    assert resumed.sinks.sinks["comet"].experiment_key == key
    resumed.train_and_validate()
    archives = sorted(p.name for p in (tmp_path / "logged" / "comet").glob("*.zip"))
    assert len(archives) == 2 and all(name.startswith(key) for name in archives)
    assert list((tmp_path / "logged" / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_with_a_moved_dataset(tmp_path):
    (tmp_path / "old").mkdir()
    hdf5 = make_hdf5(tmp_path / "old")
    make_trainer(hdf5, tmp_path, "moved", max_epochs=1).train_and_validate()
    new = tmp_path / "new.hdf5"
    shutil.move(hdf5, new)
    with pytest.raises(CheckpointError, match="--hdf5_file"):
        AbstractTrainer.init_from_checkpoint(tmp_path, "moved", max_epochs=2)
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "moved", max_epochs=2,
                                                   hdf5_file=str(new))
    resumed.train_and_validate()
    params = json.loads((tmp_path / "moved" / "parameters.json").read_text())
    assert params["dataset"]["config"]["hdf5_file"] == str(new)
    assert params["trainer"]["config"]["max_epochs"] == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_resumes_on_cpu(tmp_path):
    hdf5 = make_hdf5(tmp_path)
    make_trainer(hdf5, tmp_path, "gpu", max_epochs=1, device="cuda").train_and_validate()
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "gpu", max_epochs=2, device="cpu")
    assert all(p.device.type == "cpu" for p in resumed.model.parameters())
    resumed.train_and_validate()
    assert resumed.epoch == 2
