"""Downstream evaluation: copies only, fresh heads, callbacks, reproducible runs, budgets."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl import DownstreamEvaluator, FineTunedModel, MTLTask
from tests.unit.mtl.mtl_trainer_setup import (
    logs_of,
    make_downstream,
    make_encoder,
    make_trainer,
    weights_of,
)


def _optimizer_state(trainer: object) -> dict:
    return copy.deepcopy(trainer.optimizer.state_dict())  # type: ignore[attr-defined]


def test_fine_tuning_leaves_the_pretraining_weights_and_optimizer_bit_identical(
    tmp_path: Path,
) -> None:
    trainer = make_trainer(tmp_path, "run", max_epochs=1)
    trainer.train_and_validate()
    before, optimizer = weights_of(trainer), _optimizer_state(trainer)
    rng = torch.get_rng_state()
    task = trainer.downstream.tasks[0]
    head_before = {k: v.clone() for k, v in task.heads.state_dict().items()}
    metrics = trainer.downstream.evaluate(task, trainer.shared_blocks, 0)
    assert metrics["nb_steps"] == 4 and np.isfinite(metrics["loss"])
    after = weights_of(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert str(_optimizer_state(trainer)) == str(optimizer)
    assert all(torch.equal(head_before[k], v) for k, v in task.heads.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())  # global random stream untouched


def test_runs_are_reproducible_and_depend_on_the_epoch() -> None:
    evaluator = DownstreamEvaluator([make_downstream()], every_n_epochs=1, seed=3)
    blocks = nn.ModuleDict({"encoder": make_encoder()})
    task = evaluator.tasks[0]
    first = evaluator.evaluate(task, blocks, 4)
    assert evaluator.evaluate(task, blocks, 4) == first
    assert evaluator.evaluate(task, blocks, 5) != first


def test_frozen_shared_blocks_are_not_fine_tuned() -> None:
    evaluator = DownstreamEvaluator([make_downstream()], every_n_epochs=1, freeze_shared=True,
                                    max_steps=2)
    blocks = nn.ModuleDict({"encoder": make_encoder()})
    seen: list[FineTunedModel] = []

    @_register(evaluator)
    def keep(task: MTLTask, model: FineTunedModel, epoch: int) -> None:
        seen.append(model)

    metrics = evaluator.evaluate(evaluator.tasks[0], blocks, 0)
    assert metrics["nb_steps"] == 2
    copied = seen[0].blocks.state_dict()
    assert all(torch.equal(copied[k], v) for k, v in blocks.state_dict().items())
    assert seen[0].blocks is not blocks


def _register(evaluator: DownstreamEvaluator):  # type: ignore[no-untyped-def]
    def decorator(fn):  # type: ignore[no-untyped-def]
        evaluator.callbacks.append(fn)
        return fn
    return decorator


def test_callback_called_once_per_task_per_evaluation_and_logged(tmp_path: Path) -> None:
    second = make_downstream()
    second.name = "sign2"
    trainer = make_trainer(tmp_path, "run", max_epochs=4,
                           downstream_tasks=[make_downstream(), second])
    calls: list[tuple[str, int, bool, bool]] = []

    @trainer.callback_foreach_downstream_task()
    def score(task: MTLTask, model: FineTunedModel, epoch: int) -> dict[str, float]:
        calls.append((task.name, epoch, model.training, torch.is_grad_enabled()))
        x = torch.randn(4, 4)
        return {"test_mean": float(model((x, torch.zeros(4, dtype=torch.long))).mean())}

    trainer.train_and_validate()
    assert calls == [("sign", 1, False, False), ("sign2", 1, False, False),
                     ("sign", 3, False, False), ("sign2", 3, False, False)]
    logs = logs_of(tmp_path, "run")
    for name in ("sign", "sign2"):
        values = logs[f"run_downstream_{name}_test_mean_per_epoch"]
        assert np.isnan(values[[0, 2]]).all() and np.isfinite(values[[1, 3]]).all()
        assert np.isfinite(logs[f"run_downstream_{name}_acc_per_epoch"][[1, 3]]).all()


def test_bad_downstream_arguments() -> None:
    task = make_downstream()
    with pytest.raises(ConfigError, match="unique"):
        DownstreamEvaluator([task, task])
    with pytest.raises(ConfigError, match="budget"):
        DownstreamEvaluator([task], epochs=0)
    with pytest.raises(ConfigError, match="every_n_epochs"):
        DownstreamEvaluator([task], every_n_epochs=-1)
    assert not DownstreamEvaluator([task]).is_due(0)
    assert DownstreamEvaluator([task], every_n_epochs=2).is_due(1)


def test_downstream_names_must_differ_from_pretraining_tasks(tmp_path: Path) -> None:
    task = make_downstream()
    task.name = "reg"
    with pytest.raises(ConfigError, match="also pre-training"):
        make_trainer(tmp_path, "run", downstream_tasks=[task])
