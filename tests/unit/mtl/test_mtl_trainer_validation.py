"""MTLTrainer validation: joint validation of tasks sharing their data, per-task caps, resume.

Joint tasks here read a real (BatchSampler, BatchLoader) pair on a small synthetic HDF5 file;
the interleaved tasks are the in-memory ones of :mod:`tests.unit.mtl.mtl_trainer_setup`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dwi_mtl.errors import CheckpointError, ConfigError
from dwi_mtl.mtl import MTLTask, MTLTrainer
from dwi_mtl.mtl.task_sources import JointSource, SequentialSource
from dwi_mtl.training.batch_loader import BatchLoader
from dwi_mtl.training.signals import CheckpointedOnSignal
from tests.unit.mtl.mtl_trainer_setup import logs_of, make_trainer, weights_of
from tests.unit.mtl.test_tasks import _pair_without_validation

NB_VALID_BATCHES = 4  # subj-01's 20 streamlines in validation batches of 6


def _points(blocks: nn.ModuleDict, batch: Any) -> torch.Tensor:
    keep = torch.ones(len(batch.points), dtype=torch.bool)
    keep[torch.cumsum(batch.lengths, 0) - 1] = False
    return blocks["encoder"](batch.points[keep] / 8 - 0.5)


def _joint_tasks(tmp_path: Path, norm_valid: tuple[Any, Any] | None = None,
                 shared_sampler: bool = False) -> list[MTLTask]:
    """``dirs`` (next direction) and ``norm`` (a scalar of the point), on one pair; ``norm``
    validated on ``norm_valid`` when given, or with ``shared_sampler`` on the pair's sampler
    with a loader of its own (so the tasks are validated in turn over one sampler)."""
    dataset, pair = _pair_without_validation(tmp_path, True, noise_gaussian_size=0.1)
    if shared_sampler:
        norm_valid = (pair[0], BatchLoader(dataset, "streamlines"))
    torch.manual_seed(0)
    dirs = MTLTask("dirs", nn.Linear(8, 3), lambda out, b: ((out - b.directions) ** 2).mean(),
                   pair, forward=lambda bl, h, b: h["head"](_points(bl, b)), split_seed=1,
                   metrics={"cos": lambda out, b: nn.functional.cosine_similarity(
                       out, b.directions).mean()})
    norm = MTLTask("norm", nn.Linear(8, 1), lambda out, b: ((out[:, 0] - 1.0) ** 2).mean(),
                   pair, norm_valid, forward=lambda bl, h, b: h["head"](_points(bl, b)),
                   split_seed=1)
    return [dirs, norm]


def _joint_forward(blocks: nn.ModuleDict, heads: nn.ModuleDict, batch: Any) -> dict[str, Any]:
    features = _points(blocks, batch)  # one encoder pass for both tasks
    return {"dirs": heads["dirs"]["head"](features), "norm": heads["norm"]["head"](features)}


def _joint_trainer(tmp_path: Path, name: str, resume: bool = False, joint_forward: bool = True,
                   **options: Any) -> MTLTrainer:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2))
    kwargs: dict[str, Any] = {"max_epochs": 2, "learning_rates": 0.01, "seed": 3,
                              "progress_bar": False, "handle_signals": False}
    kwargs.update(options)
    tasks = kwargs.pop("tasks", None) or _joint_tasks(tmp_path)
    return MTLTrainer({"encoder": encoder}, tasks, tmp_path, name, resume=resume,
                      schedule="joint", joint_forward=_joint_forward if joint_forward else None,
                      **kwargs)


@pytest.mark.parametrize("joint_forward", [True, False], ids=["joint_forward", "task-forwards"])
def test_joint_tasks_are_all_validated_on_the_same_batches(
    tmp_path: Path, joint_forward: bool
) -> None:
    trainer = _joint_trainer(tmp_path, "run", joint_forward=joint_forward)
    assert isinstance(trainer.sources["validation"], JointSource)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    for task in ("dirs", "norm"):
        per_batch = logs[f"validation_{task}_loss_per_batch"]
        assert per_batch.shape == (2 * NB_VALID_BATCHES,) and np.isfinite(per_batch).all()
    assert np.isfinite(logs["validation_dirs_cos_per_batch"]).all()
    np.testing.assert_allclose(logs["validation_loss_per_batch"],
                               logs["validation_dirs_loss_per_batch"]
                               + logs["validation_norm_loss_per_batch"])
    np.testing.assert_allclose(logs["validation_loss_per_epoch"],
                               logs["validation_dirs_loss_per_epoch"]
                               + logs["validation_norm_loss_per_epoch"])


@pytest.mark.parametrize("cap", [2, 10])
def test_validation_cap_applies_to_each_joint_task(tmp_path: Path, cap: int) -> None:
    trainer = _joint_trainer(tmp_path, "run", max_batches_per_epoch_validation=cap)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    expected = 2 * min(cap, NB_VALID_BATCHES)
    for task in ("dirs", "norm"):
        assert logs[f"validation_{task}_loss_per_batch"].shape == (expected,)
    assert trainer.get_config()["max_batches_per_epoch_validation_per_task"] == cap


def test_validation_cap_applies_to_each_sequential_task(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, max_epochs=2,
                           max_batches_per_epoch_validation=1)
    assert isinstance(trainer.sources["validation"], SequentialSource)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    for task in ("reg", "cls"):  # both tasks have 1 batch per epoch, not 1 in all
        values = logs[f"validation_{task}_loss_per_batch"]
        assert np.isfinite(values).sum() == 2
        assert np.isfinite(logs[f"validation_{task}_loss_per_epoch"]).all()
    assert np.isfinite(logs["validation_loss_per_epoch"]).all()


@pytest.mark.parametrize("cap", [0, -1, 1.5, True, "2"])
def test_bad_validation_cap_is_refused(tmp_path: Path, cap: Any) -> None:
    with pytest.raises(ConfigError, match="max_batches_per_epoch_validation"):
        make_trainer(tmp_path, "run", downstream=False, max_batches_per_epoch_validation=cap)


def test_joint_tasks_with_their_own_validation_data_are_validated_in_turn(
    tmp_path: Path,
) -> None:
    (tmp_path / "other").mkdir()
    _, other = _pair_without_validation(tmp_path / "other", True)
    tasks = _joint_tasks(tmp_path, norm_valid=other)
    trainer = _joint_trainer(tmp_path, "run", max_epochs=1, tasks=tasks, joint_forward=False,
                             max_batches_per_epoch_validation=3)
    assert isinstance(trainer.sources["validation"], SequentialSource)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    for task in ("dirs", "norm"):
        assert np.isfinite(logs[f"validation_{task}_loss_per_batch"]).sum() == 3


def test_resuming_joint_validation_as_validation_in_turn_is_refused(tmp_path: Path) -> None:
    _joint_trainer(tmp_path, "run", max_epochs=1).train_and_validate()
    with pytest.raises(CheckpointError, match="joint validation against validation in turn"):
        _joint_trainer(tmp_path, "run", resume=True, max_epochs=2,
                       tasks=_joint_tasks(tmp_path, shared_sampler=True))


@pytest.mark.parametrize(("shared_sampler", "cut"), [(False, 1), (True, 4)],
                         ids=["joint", "in-turn-over-one-sampler"])
def test_sigterm_during_validation_of_joint_tasks_resumes_exactly(
    tmp_path: Path, shared_sampler: bool, cut: int
) -> None:
    def build(name: str, **options: Any) -> MTLTrainer:
        tasks = _joint_tasks(tmp_path, shared_sampler=shared_sampler)
        return _joint_trainer(tmp_path, name, max_epochs=3, max_batches_per_epoch_validation=3,
                              tasks=tasks, joint_forward=not shared_sampler, **options)

    reference = build("ref")
    expected = SequentialSource if shared_sampler else JointSource
    assert isinstance(reference.sources["validation"], expected)
    reference.train_and_validate()
    first = build("cut", handle_signals=True)

    def on_batch_end(phase: str, epoch: int, batch_index: int, metrics: Any) -> None:
        if (phase, epoch, batch_index) == ("validation", 1, cut):  # joint: 2nd shared batch;
            os.kill(os.getpid(), signal.SIGTERM)  # in turn: 2nd batch of the 2nd task
    first.on_batch_end = on_batch_end  # type: ignore[method-assign]
    with pytest.raises(CheckpointedOnSignal):
        first.train_and_validate()
    assert (first.progress.phase, first.epoch, first.progress.batch) == ("validation", 1, cut + 1)
    resumed = build("cut", resume=True)
    resumed.train_and_validate()
    ref, new = weights_of(reference), weights_of(resumed)
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    ref_logs, new_logs = logs_of(tmp_path, "ref"), logs_of(tmp_path, "cut")
    assert sorted(ref_logs) == sorted(new_logs)
    for key, values in ref_logs.items():
        np.testing.assert_array_equal(values, new_logs[key], err_msg=key)
    for task in ("dirs", "norm"):  # 3 batches of each task in each of the 3 epochs
        assert np.isfinite(ref_logs[f"validation_{task}_loss_per_batch"]).sum() == 9
