"""Shared set-up of the trainer tests: a tiny real HDF5 dataset, the real pipeline, a trainer.

Everything is real (HDF5 file, BatchSampler, BatchLoader, DataLoader, RecurrentTracker with
dropout) but small, so a whole run takes a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.models.recurrent_tracker import RecurrentTracker
from dwi_mtl.training.batch_loader import BatchLoader
from dwi_mtl.training.batch_sampler import BatchSampler
from dwi_mtl.training.reference_trainer import ReferenceTrainer

NB_FEATURES = 4
#: Timing series differ between any two runs; every other log must match bit for bit.
TIMING_LOGS = ("batch_time", "data_wait_time")


def make_hdf5(folder: Path, nb_subjects: int = 3, nb_streamlines: int = 60) -> Path:
    """A 3-subject dataset (training / validation / testing) of short streamlines."""
    return write_synthetic_hdf5(
        folder / "data.hdf5", nb_subjects=nb_subjects, volume_shape=(16, 16, 12),
        nb_features=NB_FEATURES, nb_streamlines=nb_streamlines, min_length_mm=10,
        max_length_mm=20, seed=0,
    )


def make_trainer(
    hdf5: Path, experiments: Path, name: str, trainer_class: type = ReferenceTrainer,
    batch_size: int = 10, seed: int = 0, **options: Any,
) -> Any:
    """Build dataset, sampler, loader, model (dropout 0.2) and a trainer with ``options``."""
    dataset = MultiSubjectDataset(hdf5)
    sampler = BatchSampler(dataset, "streamlines", batch_size, seed=1)
    loader = BatchLoader(dataset, "streamlines", input_group="input", seed=2,
                         noise_gaussian_size=0.1)
    torch.manual_seed(seed)
    model = RecurrentTracker(NB_FEATURES, 16, dropout=0.2)
    options.setdefault("progress_bar", False)
    options.setdefault("device", "cpu")
    return trainer_class(model, experiments, name, sampler, loader, **options)


def compare_runs(reference: Any, other: Any, experiments: Path, names: tuple[str, str],
                 rounded_before: dict[str, int] | None = None) -> None:
    """Assert equal weights, optimizer state and non-timing .npy logs, bit for bit.

    ``rounded_before`` maps a log name to a number of leading entries compared to float32
    precision instead (entries an older version computed in float32, resumed from its
    checkpoint); the entries after them must still be equal bit for bit.
    """
    for (key, a), b in zip(reference.model.state_dict().items(),
                           other.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"weights differ: {key}"
    assert_state_equal(reference.optimizer.state_dict(), other.optimizer.state_dict(), "optimizer")
    logs_a = load_npy_logs(experiments / names[0] / "logs")
    logs_b = load_npy_logs(experiments / names[1] / "logs")
    assert sorted(logs_a) == sorted(logs_b)
    for key, values in logs_a.items():
        if not any(t in key for t in TIMING_LOGS):
            count = (rounded_before or {}).get(key, 0)
            np.testing.assert_allclose(values[:count], logs_b[key][:count], rtol=2e-7, err_msg=key)
            np.testing.assert_array_equal(values[count:], logs_b[key][count:], err_msg=key)


def assert_state_equal(a: Any, b: Any, where: str) -> None:
    """Recursive exact equality of state dicts (tensors compared with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_state_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class InterruptError(RuntimeError):
    """Raised by a test hook to simulate a crash."""


def interrupt_at(trainer: Any, phase: str, epoch: int, batch_index: int) -> None:
    """Make ``trainer`` raise :class:`InterruptError` after the given batch (instance hook)."""

    def hook(hook_phase: str, hook_epoch: int, index: int, metrics: dict[str, float]) -> None:
        if (hook_phase, hook_epoch, index) == (phase, epoch, batch_index):
            raise InterruptError(f"{phase} epoch {epoch} batch {batch_index}")

    trainer.on_batch_end = hook
