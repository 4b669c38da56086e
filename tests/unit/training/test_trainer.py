"""AbstractTrainer behaviour: experiment folder, parameters, patience, lr list, losses, NaN."""

from __future__ import annotations

import json
import math
import signal

import numpy as np
import pytest
import torch

from dwi_mtl.errors import ConfigError, ExperimentExistsError, NonFiniteError
from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.training.checkpoint import read_state_folder
from dwi_mtl.training.reference_trainer import ReferenceTrainer
from dwi_mtl.training.signals import EXIT_CHECKPOINTED_ON_SIGNAL, CheckpointedOnSignal
from dwi_mtl.training.trainer import AbstractTrainer
from tests.unit.training.trainer_setup import compare_runs, make_hdf5, make_trainer


@pytest.fixture(scope="module")
def hdf5(tmp_path_factory):
    return make_hdf5(tmp_path_factory.mktemp("data"))


class ScriptedValidation(ReferenceTrainer):
    """Validation losses follow a script, to test the monitor and patience."""

    script = [1.0, 0.5, 0.6, 0.55, 0.35, 0.3]

    def compute_validation_loss(self, batch):
        return torch.tensor(self.script[self.epoch])


class TwoTasks(ReferenceTrainer):
    """A dict of two task losses (equal weights unless a weighting is configured)."""

    def compute_batch_loss(self, batch):
        loss = super().compute_batch_loss(batch)
        return {"direction": loss, "scaled": 0.5 * loss}


class NanAt(ReferenceTrainer):
    """Training loss becomes NaN at (epoch, batch) ``nan_at``."""

    nan_at = (1, 2)

    def compute_batch_loss(self, batch):
        loss = super().compute_batch_loss(batch)
        if (self.epoch, self.progress.batch) == self.nan_at:
            return loss * math.nan
        return loss


def test_experiment_folder_and_parameters(hdf5, tmp_path):
    trainer = make_trainer(hdf5, tmp_path, "run", max_epochs=1)
    params = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert params["model"]["class"] == "dwi_mtl.models.recurrent_tracker.RecurrentTracker"
    assert params["batch_sampler"]["class"] == "dwi_mtl.training.batch_sampler.BatchSampler"
    assert params["dataset"]["config"]["hdf5_file"] == str(hdf5)
    assert params["trainer"]["config"]["max_epochs"] == 1
    trainer.train_and_validate()
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"parameters.json", "checkpoint", "best_model", "logs"} <= names
    losses = json.loads((tmp_path / "run" / "best_model" / "best_epoch_losses.json").read_text())
    assert losses["epoch"] == 0 and "validation_loss" in losses
    with pytest.raises(ExperimentExistsError, match="already exists"):
        make_trainer(hdf5, tmp_path, "run")


def test_bad_option_writes_nothing(hdf5, tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        make_trainer(hdf5, tmp_path, "bad", optimizer="Adamm")
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        make_trainer(hdf5, tmp_path, "bad", gradient_accumulation_steps=0)
    assert not (tmp_path / "bad").exists()


def test_patience_stops_at_the_right_epoch_and_keeps_best_model(hdf5, tmp_path):
    trainer = make_trainer(hdf5, tmp_path, "patience", ScriptedValidation, max_epochs=6,
                           patience=2, patience_delta=0.1)
    trainer.train_and_validate()
    # epoch 1 is best (0.5); 0.6 and 0.55 are not better by 0.1 -> stop after epoch 3
    assert trainer.epoch == 4 and trainer.monitor.best_epoch == 1
    assert "patience" in trainer.stop_reason()
    assert read_state_folder(tmp_path / "patience" / "best_model")["epoch"] == 1
    logs = load_npy_logs(tmp_path / "patience" / "logs")
    np.testing.assert_allclose(logs["validation_loss_per_epoch"], [1.0, 0.5, 0.6, 0.55])
    np.testing.assert_array_equal(logs["run_best_epoch_per_epoch"], [0, 1, 1, 1])
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "patience", patience=3)
    assert resumed.stop_reason() == ""
    resumed.train_and_validate()
    assert resumed.monitor.best_epoch == 4 and resumed.epoch == 6


def test_resume_raising_max_epochs_continues_the_lr_list(hdf5, tmp_path):
    options = {"learning_rates": "0.01 0.005*2 0.001"}
    reference = make_trainer(hdf5, tmp_path, "five", max_epochs=5, **options)
    reference.train_and_validate()
    short = make_trainer(hdf5, tmp_path, "two", max_epochs=2, **options)
    short.train_and_validate()
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "two", max_epochs=5)
    resumed.train_and_validate()
    lrs = load_npy_logs(tmp_path / "two" / "logs")["run_lr_per_epoch"]
    np.testing.assert_array_equal(lrs, [0.01, 0.005, 0.005, 0.001, 0.001])
    compare_runs(reference, resumed, tmp_path, ("five", "two"))


def test_dict_losses_use_equal_weights_by_default(hdf5, tmp_path):
    trainer = make_trainer(hdf5, tmp_path, "tasks", TwoTasks, max_epochs=1)
    trainer.train_and_validate()
    logs = load_npy_logs(tmp_path / "tasks" / "logs")
    np.testing.assert_allclose(
        logs["training_loss_per_batch"],
        logs["training_loss_direction_per_batch"] + logs["training_loss_scaled_per_batch"],
        rtol=1e-6,
    )
    assert set(logs["training_weight_scaled_per_batch"]) == {1.0}


def test_named_weighting_is_checkpointed(hdf5, tmp_path):
    trainer = make_trainer(hdf5, tmp_path, "uw", TwoTasks, max_epochs=1, weighting="uw",
                           task_names=["direction", "scaled"])
    trainer.train_and_validate()
    assert "weighting" in trainer.stateful_objects()
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "uw", max_epochs=2)
    for a, b in zip(trainer.weighting.parameters(), resumed.weighting.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="task_names"):
        make_trainer(hdf5, tmp_path, "uw2", TwoTasks, weighting="uw")


def test_nan_loss_stops_naming_epoch_batch_and_streamlines(hdf5, tmp_path):
    trainer = make_trainer(hdf5, tmp_path, "nan", NanAt, max_epochs=3)
    with pytest.raises(NonFiniteError, match=r"epoch 1, batch 2 \(streamline ids \["):
        trainer.train_and_validate()
    report = (tmp_path / "nan" / "nonfinite_batches.jsonl").read_text().splitlines()
    record = json.loads(report[0])
    assert (record["epoch"], record["batch_index"], record["what"]) == (1, 2, "loss")
    assert len(record["streamline_ids"]) == len(record["subject_indices"]) == 10


def test_nan_loss_skip_counts_and_never_saves_a_nan_best_model(hdf5, tmp_path):
    class NanValidation(NanAt):
        def compute_validation_loss(self, batch):
            loss = ReferenceTrainer.compute_batch_loss(self, batch)
            return loss * math.nan if self.epoch == 1 else loss + 10 * self.epoch

    trainer = make_trainer(hdf5, tmp_path, "skip", NanValidation, max_epochs=2, nonfinite="skip")
    trainer.train_and_validate()
    logs = load_npy_logs(tmp_path / "skip" / "logs")
    assert logs["run_nb_skipped_batches_per_epoch"][-1] == 1 + 6  # one train + six validation
    assert math.isnan(logs["training_loss_per_batch"][6 + 2])
    assert read_state_folder(tmp_path / "skip" / "best_model")["epoch"] == 0


def test_non_scalar_loss_is_a_config_error(hdf5, tmp_path):
    class Vector(ReferenceTrainer):
        def compute_batch_loss(self, batch):
            return torch.ones(3, requires_grad=True)

    with pytest.raises(ConfigError, match="scalar"):
        make_trainer(hdf5, tmp_path, "vec", Vector, max_epochs=1).train_and_validate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_at_the_batch_boundary_then_resumes_exactly(hdf5, tmp_path, signum):
    reference = make_trainer(hdf5, tmp_path, "reference", max_epochs=2)
    reference.train_and_validate()
    trainer = make_trainer(hdf5, tmp_path, "term", max_epochs=2)

    def send_signal(phase, epoch, index, metrics):
        if (phase, epoch, index) == ("training", 1, 3):
            signal.raise_signal(signum)

    trainer.on_batch_end = send_signal
    previous = signal.getsignal(signum)
    with pytest.raises(CheckpointedOnSignal) as caught:
        trainer.train_and_validate()
    assert caught.value.exit_code == EXIT_CHECKPOINTED_ON_SIGNAL == 3
    assert signal.getsignal(signum) is previous  # handler restored
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "term")
    assert (resumed.epoch, resumed.progress.phase, resumed.progress.batch) == (1, "training", 4)
    resumed.train_and_validate()
    compare_runs(reference, resumed, tmp_path, ("reference", "term"))


def test_sigterm_during_the_last_batch_exits_after_the_epoch_checkpoint(hdf5, tmp_path):
    trainer = make_trainer(hdf5, tmp_path, "end", max_epochs=3, handle_signals=True)

    def send_sigterm(phase, epoch, index, metrics):
        if (phase, epoch, index) == ("validation", 0, 5):  # last validation batch of epoch 0
            signal.raise_signal(signal.SIGTERM)

    trainer.on_batch_end = send_sigterm
    with pytest.raises(CheckpointedOnSignal):
        trainer.train_and_validate()
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "end")
    assert (resumed.epoch, resumed.progress.phase, resumed.progress.batch) in {
        (0, "validation", 6), (1, "training", 0)
    }


def test_torch_lr_scheduler_by_class_is_recorded_and_resumed(hdf5, tmp_path):
    options = {"lr_scheduler": torch.optim.lr_scheduler.StepLR,
               "lr_scheduler_kwargs": {"step_size": 1, "gamma": 0.5}, "learning_rates": 0.01}
    reference = make_trainer(hdf5, tmp_path, "steplr", max_epochs=3, **options)
    reference.train_and_validate()
    params = json.loads((tmp_path / "steplr" / "parameters.json").read_text())
    assert params["trainer"]["config"]["lr_scheduler"] == "torch.optim.lr_scheduler.StepLR"
    short = make_trainer(hdf5, tmp_path, "steplr2", max_epochs=2, **options)
    short.train_and_validate()
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "steplr2", max_epochs=3)
    resumed.train_and_validate()
    lrs = load_npy_logs(tmp_path / "steplr2" / "logs")["training_lr_per_epoch"]
    np.testing.assert_allclose(lrs, [0.01, 0.005, 0.0025])
    compare_runs(reference, resumed, tmp_path, ("steplr", "steplr2"))


def test_without_validation_set_the_training_loss_is_monitored(tmp_path):
    hdf5 = make_hdf5(tmp_path, nb_subjects=1)
    trainer = make_trainer(hdf5, tmp_path, "novalid", max_epochs=2)
    assert trainer.sources["validation"] is None
    trainer.train_and_validate()
    logs = load_npy_logs(tmp_path / "novalid" / "logs")
    assert not any(name.startswith("validation_") for name in logs)
    losses = logs["training_loss_per_epoch"]
    assert trainer.monitor.best_value == min(losses)
    best = json.loads((tmp_path / "novalid" / "best_model" / "best_epoch_losses.json").read_text())
    assert best["training_loss"] == min(losses)
