"""Exact resume: a run interrupted anywhere and resumed equals the uninterrupted run, bit for bit.

Each case trains the reference model (dropout on, augmentation noise on, real HDF5 pipeline)
for 3 epochs of 6 training and 6 validation batches, raises inside the loop at a chosen batch,
rebuilds the trainer with ``init_from_checkpoint`` and finishes; weights, optimizer state and
every non-timing ``.npy`` log must equal those of the uninterrupted run.
"""

from __future__ import annotations

import logging

import pytest

from dwi_mtl.training.reference_trainer import ReferenceTrainer
from tests.unit.training.trainer_setup import (
    InterruptError,
    compare_runs,
    interrupt_at,
    make_hdf5,
    make_trainer,
)

OPTIONS = {"max_epochs": 3, "checkpoint_every_n_batches": 4, "learning_rates": "0.01*2 0.005"}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("resume")
    hdf5 = make_hdf5(folder)
    trainer = make_trainer(hdf5, folder, "reference", **OPTIONS)
    trainer.train_and_validate()
    return folder, hdf5, trainer


@pytest.mark.parametrize(
    ("phase", "epoch", "batch_index", "extra"),
    [
        ("training", 0, 0, {}),             # before any mid-epoch checkpoint: resume from start
        ("training", 1, 2, {}),             # mid-epoch, after the epoch-end checkpoint
        ("training", 1, 4, {}),             # right after a checkpoint_every_n_batches one
        ("validation", 1, 3, {}),           # during validation
        ("validation", 2, 2, {"checkpoint_every_minutes": 1e-9}),  # checkpoint inside validation
    ],
)
def test_interrupted_run_resumes_bit_for_bit(reference_run, phase, epoch, batch_index, extra):
    folder, hdf5, reference = reference_run
    name = f"cut-{phase}-{epoch}-{batch_index}-{len(extra)}"
    trainer = make_trainer(hdf5, folder, name, **{**OPTIONS, **extra})
    interrupt_at(trainer, phase, epoch, batch_index)
    with pytest.raises(InterruptError):
        trainer.train_and_validate()
    resumed = ReferenceTrainer.init_from_checkpoint(folder, name)
    resumed.train_and_validate()
    compare_runs(reference, resumed, folder, ("reference", name))


def test_resume_mid_accumulation_cycle_is_exact(tmp_path):
    hdf5 = make_hdf5(tmp_path)
    options = {"max_epochs": 2, "gradient_accumulation_steps": 4, "checkpoint_every_n_batches": 3,
               "clip_grad": 0.05}
    reference = make_trainer(hdf5, tmp_path, "reference", **options)
    reference.train_and_validate()
    trainer = make_trainer(hdf5, tmp_path, "cut", **options)
    interrupt_at(trainer, "training", 1, 4)  # last checkpoint at global batch 9: mid-cycle
    with pytest.raises(InterruptError):
        trainer.train_and_validate()
    resumed = ReferenceTrainer.init_from_checkpoint(tmp_path, "cut")
    resumed.train_and_validate()
    compare_runs(reference, resumed, tmp_path, ("reference", "cut"))


def test_resume_with_dataloader_workers_is_exact(tmp_path):
    hdf5 = make_hdf5(tmp_path)
    options = {"max_epochs": 2, "checkpoint_every_n_batches": 2, "num_workers": 1}
    reference = make_trainer(hdf5, tmp_path, "reference", **options)
    reference.train_and_validate()
    trainer = make_trainer(hdf5, tmp_path, "cut", **options)
    interrupt_at(trainer, "training", 1, 2)  # the worker has prefetched beyond batch 2
    with pytest.raises(InterruptError):
        trainer.train_and_validate()
    resumed = ReferenceTrainer.init_from_checkpoint(tmp_path, "cut")
    resumed.train_and_validate()
    compare_runs(reference, resumed, tmp_path, ("reference", "cut"))


def test_corrupt_latest_checkpoint_falls_back_and_still_resumes_exactly(reference_run, caplog):
    folder, hdf5, reference = reference_run
    trainer = make_trainer(hdf5, folder, "corrupt", **OPTIONS)
    interrupt_at(trainer, "training", 1, 5)
    with pytest.raises(InterruptError):
        trainer.train_and_validate()
    latest = trainer.checkpoints.list()[-1].path
    state_file = latest / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING):
        resumed = ReferenceTrainer.init_from_checkpoint(folder, "corrupt")
    assert "corrupt" in caplog.text and "falling back" in caplog.text
    resumed.train_and_validate()
    compare_runs(reference, resumed, folder, ("reference", "corrupt"))
