"""Interrupted + resumed == uninterrupted for the MTLTrainer, across downstream evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dwi_mtl.mtl import FineTunedModel, MTLTask, MTLTrainer
from tests.unit.mtl.mtl_trainer_setup import logs_of, make_downstream, make_trainer, weights_of


class InterruptError(Exception):
    """Stands for a crash (the process dies; only the checkpoints on disk survive)."""


def _build(tmp_path: Path, name: str, calls: list[tuple[str, int]], resume: bool = False,
           crash: tuple[str, int] | None = None, **options: Any) -> MTLTrainer:
    second = make_downstream()
    second.name = "sign2"
    trainer = make_trainer(tmp_path, name, resume=resume, max_epochs=4,
                           downstream_tasks=[make_downstream(), second],
                           checkpoint_every_n_batches=2, **{"handle_signals": False, **options})

    @trainer.callback_after_each_epoch
    def hook(trainer_: MTLTrainer, epoch: int) -> dict[str, float]:
        calls.append(("hook", epoch))
        return {"noise": float(torch.rand(()))}  # seeded from (seed, epoch): reproducible

    @trainer.callback_foreach_downstream_task()
    def score(task: MTLTask, model: FineTunedModel, epoch: int) -> dict[str, float]:
        if crash == (task.name, epoch):
            raise InterruptError
        calls.append((task.name, epoch))
        return {"weight_sum": float(sum(p.sum() for p in model.parameters()))}

    return trainer


def _crash_at_training_step(trainer: MTLTrainer, step: int) -> None:
    def on_batch_end(phase: str, epoch: int, batch_index: int, metrics: Any) -> None:
        if phase == "training" and trainer.progress.steps["training"] == step:
            raise InterruptError
    trainer.on_batch_end = on_batch_end  # type: ignore[method-assign]


def _assert_same_run(tmp_path: Path, reference: MTLTrainer, resumed: MTLTrainer) -> None:
    ref, new = weights_of(reference), weights_of(resumed)
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    assert str(reference.optimizer.state_dict()) == str(resumed.optimizer.state_dict())
    ref_logs, new_logs = logs_of(tmp_path, "ref"), logs_of(tmp_path, "cut")
    assert sorted(ref_logs) == sorted(new_logs)
    for key, values in ref_logs.items():
        np.testing.assert_array_equal(values, new_logs[key], err_msg=key)


@pytest.mark.parametrize(
    "options", [{}, {"schedule": "proportional", "weighting": "uw"}], ids=["rr", "prop-uw"]
)
def test_resume_mid_epoch_is_exact(tmp_path: Path, options: dict[str, Any]) -> None:
    ref_calls: list[tuple[str, int]] = []
    reference = _build(tmp_path, "ref", ref_calls, **options)
    reference.train_and_validate()
    calls: list[tuple[str, int]] = []
    first = _build(tmp_path, "cut", calls, **options)
    nb_steps = len(logs_of(tmp_path, "ref")["training_loss_per_batch"]) // 4
    _crash_at_training_step(first, nb_steps + nb_steps // 2 + 1)  # inside epoch 1
    with pytest.raises(InterruptError):
        first.train_and_validate()
    resumed = _build(tmp_path, "cut", calls, resume=True, **options)
    resumed.train_and_validate()
    _assert_same_run(tmp_path, reference, resumed)


def test_resume_inside_a_downstream_evaluation_does_not_redo_finished_ones(
    tmp_path: Path,
) -> None:
    reference = _build(tmp_path, "ref", [])
    reference.train_and_validate()
    calls: list[tuple[str, int]] = []
    first = _build(tmp_path, "cut", calls, crash=("sign2", 3))
    with pytest.raises(InterruptError):
        first.train_and_validate()
    assert calls[-2:] == [("hook", 3), ("sign", 3)]
    resumed = _build(tmp_path, "cut", calls, resume=True)
    resumed.train_and_validate()
    assert calls.count(("sign", 3)) == 1 and calls.count(("hook", 3)) == 1
    assert calls[-1] == ("sign2", 3)
    _assert_same_run(tmp_path, reference, resumed)


def test_sigterm_during_downstream_checkpoints_after_the_task_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    import os
    import signal

    from dwi_mtl.training.signals import CheckpointedOnSignal

    reference = _build(tmp_path, "ref", [])
    reference.train_and_validate()
    calls: list[tuple[str, int]] = []
    first = _build(tmp_path, "cut", calls, handle_signals=True)

    @first.callback_foreach_downstream_task()
    def terminate(task: MTLTask, model: FineTunedModel, epoch: int) -> None:
        if (task.name, epoch) == ("sign", 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(CheckpointedOnSignal):
        first.train_and_validate()
    assert calls[-1] == ("sign", 1)
    resumed = _build(tmp_path, "cut", calls, resume=True)
    resumed.train_and_validate()
    assert calls.count(("sign", 1)) == 1 and calls.count(("sign2", 1)) == 1
    _assert_same_run(tmp_path, reference, resumed)


def _pair_trainer(tmp_path: Path, name: str, resume: bool = False,
                  validation_subject: bool = False) -> MTLTrainer:
    from torch import nn

    from tests.unit.mtl.mtl_trainer_setup import make_tasks
    from tests.unit.mtl.test_tasks import _pair_without_validation

    _, pair = _pair_without_validation(tmp_path, validation_subject, noise_gaussian_size=0.1)

    def forward(blocks: nn.ModuleDict, heads: nn.ModuleDict, batch: Any) -> torch.Tensor:
        keep = torch.ones(len(batch.points), dtype=torch.bool)
        keep[torch.cumsum(batch.lengths, 0) - 1] = False
        return heads["head"](blocks["encoder"][1](batch.points[keep] / 8 - 0.5))

    def loss(out: torch.Tensor, batch: Any) -> torch.Tensor:
        return ((out - batch.directions) ** 2).mean()

    torch.manual_seed(0)
    dirs = MTLTask("dirs", nn.Linear(8, 3), loss, pair, forward=forward, split_seed=1)
    encoder = nn.Sequential(nn.Linear(4, 8), nn.Linear(3, 8))
    reg = make_tasks()[0]
    reg.forward_fn = lambda blocks, heads, b: heads["head"](blocks["encoder"][0](b[0]))
    return MTLTrainer({"encoder": encoder}, [dirs, reg], tmp_path, name, resume=resume,
                      schedule="proportional", max_epochs=3, checkpoint_every_n_batches=3,
                      progress_bar=False, handle_signals=False)


@pytest.mark.parametrize("validation_subject", [False, True], ids=["held-out", "subject"])
def test_resume_with_a_sampler_loader_task_is_exact(
    tmp_path: Path, validation_subject: bool
) -> None:
    reference = _pair_trainer(tmp_path, "ref", validation_subject=validation_subject)
    reference.train_and_validate()
    first = _pair_trainer(tmp_path, "cut", validation_subject=validation_subject)
    _crash_at_training_step(first, 14 if not validation_subject else 13)
    with pytest.raises(InterruptError):
        first.train_and_validate()
    resumed = _pair_trainer(tmp_path, "cut", resume=True, validation_subject=validation_subject)
    resumed.train_and_validate()
    _assert_same_run(tmp_path, reference, resumed)
    logs = logs_of(tmp_path, "ref")
    assert np.isfinite(logs["validation_dirs_loss_per_epoch"]).all()
    assert resumed.tasks["dirs"].split["kind"] == (
        "validation subjects of the dataset" if validation_subject else "random streamlines")


def test_tasks_sharing_a_batch_sampler_are_refused(tmp_path: Path) -> None:
    from torch import nn

    from dwi_mtl.errors import ConfigError
    from tests.unit.mtl.test_tasks import _pair_without_validation

    _, pair = _pair_without_validation(tmp_path)
    tasks = [MTLTask(name, nn.Linear(3, 3), lambda o, b: o.mean(), pair) for name in "ab"]
    with pytest.raises(ConfigError, match="share a BatchSampler"):
        MTLTrainer({"e": nn.Linear(3, 3)}, tasks, tmp_path, "run")
