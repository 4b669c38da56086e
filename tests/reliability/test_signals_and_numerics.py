"""SIGTERM / SIGUSR1 received during training, validation and a checkpoint write: a checkpoint
at the next batch boundary, CheckpointedOnSignal (exit code 3 in the scripts), and an exact
resume. NaN / inf in a volume, in a batch and in a loss: stop with a NonFiniteError naming the
batch, or skip it, and never a non-finite best model."""

from __future__ import annotations

import math
import os
import signal

import h5py
import numpy as np
import pytest
import torch

from dwi_mtl.errors import NonFiniteError
from dwi_mtl.training import faults
from dwi_mtl.training.checkpoint import read_state_folder
from dwi_mtl.training.reference_trainer import ReferenceTrainer
from dwi_mtl.training.signals import EXIT_CHECKPOINTED_ON_SIGNAL, CheckpointedOnSignal
from dwi_mtl.training.trainer import AbstractTrainer
from tests.reliability.runs import build_run, reference_run
from tests.unit.training.trainer_setup import compare_runs, make_hdf5, make_trainer

pytestmark = [pytest.mark.reliability,
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals")
    return folder, reference_run(folder)


def _send_at(trainer, phase: str, epoch: int, index: int, signum: int) -> None:
    def hook(hook_phase, hook_epoch, hook_index, metrics):
        if (hook_phase, hook_epoch, hook_index) == (phase, epoch, index):
            os.kill(os.getpid(), signum)
    trainer.on_batch_end = hook


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["term", "usr1"])
@pytest.mark.parametrize("where", ["training", "validation", "checkpoint_write"])
def test_signal_checkpoints_then_resumes_exactly(reference, signum, where):
    folder, trainer = reference
    name = f"{where}-{signal.Signals(signum).name}"
    run = build_run(folder, name)
    if where == "checkpoint_write":  # received while state.pt of the 4th checkpoint is written
        faults.arm(f"checkpoint.state_written:4:{'term' if signum == signal.SIGTERM else 'usr1'}")
    else:
        _send_at(run, where, 1, 3, signum)
    with pytest.raises(CheckpointedOnSignal) as info:
        run.train_and_validate()
    assert info.value.exit_code == EXIT_CHECKPOINTED_ON_SIGNAL
    assert signal.Signals(signum).name in str(info.value)
    assert signal.getsignal(signum) is signal.SIG_DFL  # handlers restored
    resumed = AbstractTrainer.init_from_checkpoint(folder, name)
    resumed.train_and_validate()
    compare_runs(trainer, resumed, folder, ("reference", name))


# ---------------------------------------------------------------- numerical faults
@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """A 4-subject dataset whose second training subject has NaN and inf voxels."""
    folder = tmp_path_factory.mktemp("poisoned")
    hdf5 = make_hdf5(folder, nb_subjects=4)
    with h5py.File(hdf5, "r+") as h5:
        data = h5["subj-01/input/data"]
        volume = data[()]
        volume[::2] = np.nan
        volume[1::2] = np.inf
        data[...] = volume
    return folder, hdf5


def _assert_finite_best_model(folder, name):
    state = read_state_folder(folder / name / "best_model")
    for key, value in state["model"].items():
        assert torch.isfinite(value).all(), key


def test_nan_volume_stops_naming_the_batch(poisoned):
    folder, hdf5 = poisoned
    trainer = make_trainer(hdf5, folder, "stop", max_epochs=2)
    with pytest.raises(NonFiniteError, match=r"epoch 0, batch \d+ \(streamline ids"):
        trainer.train_and_validate()
    assert not (folder / "stop" / "best_model").exists()


def test_nan_volume_skipped_batches_never_reach_the_best_model(poisoned):
    folder, hdf5 = poisoned
    trainer = make_trainer(hdf5, folder, "skip", max_epochs=2, nonfinite="skip")
    trainer.train_and_validate()
    assert trainer.nonfinite.nb_skipped > 0
    _assert_finite_best_model(folder, "skip")
    for value in trainer.model.state_dict().values():
        assert torch.isfinite(value).all()


class PoisonedBatch(ReferenceTrainer):
    """A corrupted batch: inputs of training batch 2 of each epoch are +inf, or a loss
    scaled to overflow the gradient (``mode``)."""

    mode = "inputs"

    def compute_batch_loss(self, batch):
        if self.model.training and self.progress.batch == 2:
            if self.mode == "inputs":
                batch.inputs = torch.full_like(batch.inputs, math.inf)
            else:
                return ReferenceTrainer.compute_batch_loss(self, batch) * 1e38 * 1e38
        return ReferenceTrainer.compute_batch_loss(self, batch)


@pytest.mark.parametrize("mode", ["inputs", "loss"])
def test_inf_in_a_batch_or_loss_is_skipped_and_the_run_stays_finite(reference, mode):
    folder, _ = reference
    cls = type(f"Poisoned_{mode}", (PoisonedBatch,), {"mode": mode})
    trainer = make_trainer(folder / "data.hdf5", folder, f"inf-{mode}", cls, max_epochs=2,
                           nonfinite="skip")
    trainer.train_and_validate()
    assert trainer.nonfinite.nb_skipped == 2  # one per epoch
    _assert_finite_best_model(folder, f"inf-{mode}")
    stop = make_trainer(folder / "data.hdf5", folder, f"inf-{mode}-stop", cls, max_epochs=2)
    with pytest.raises(NonFiniteError, match="epoch 0, batch 2"):
        stop.train_and_validate()
