"""MTLTrainer: schedules, per-task validation logs, best-model criterion, epoch hooks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dwi_mtl.errors import CheckpointError, ConfigError, ExperimentExistsError
from dwi_mtl.mtl import MTLTask, MTLTrainer
from dwi_mtl.mtl.scheduling import RoundRobinSampler
from tests.unit.mtl.mtl_trainer_setup import (
    logs_of,
    make_data,
    make_encoder,
    make_tasks,
    make_trainer,
)

# reg: 40 samples -> 32 training (4 batches of 8), 8 validation (1 batch);
# cls: 24 samples -> 19 training (3 batches), 5 validation (1 batch).
TRAIN_BATCHES = {"reg": 4, "cls": 3}


def test_round_robin_schedules_each_task_batch_once_per_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, max_epochs=2)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    reg = ~np.isnan(logs["training_reg_loss_per_batch"])
    cls = ~np.isnan(logs["training_cls_loss_per_batch"])
    plan = RoundRobinSampler().plan(0, TRAIN_BATCHES)
    expected = np.array([t == "reg" for t in plan] * 2)
    assert (reg == expected).all() and (cls == ~expected).all()
    # one optimizer step per round (reg cls | reg cls | reg cls reg): grad norm logged 3x/epoch
    steps = ~np.isnan(logs["training_grad_norm_before_clip_per_batch"])
    assert steps.tolist() == [False, True, False, True, False, False, True] * 2


@pytest.mark.parametrize("schedule", ["proportional", "weighted"])
def test_random_schedules_use_every_batch(tmp_path: Path, schedule: str) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, max_epochs=1, schedule=schedule,
                           task_weights={"reg": 5.0, "cls": 1.0})
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    for task, count in TRAIN_BATCHES.items():
        assert int((~np.isnan(logs[f"training_{task}_loss_per_batch"])).sum()) == count


def test_weighted_schedule_with_fewer_steps(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, max_epochs=1, schedule="weighted",
                           task_weights={"reg": 1.0}, steps_per_epoch=3)
    trainer.train_and_validate()
    assert len(logs_of(tmp_path, "run")["training_loss_per_batch"]) == 3


def test_per_task_validation_logs_for_every_task_and_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, tensorboard=True,
                           comet_mode="offline")
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    for name in ("validation_reg_loss", "validation_cls_loss", "validation_cls_acc"):
        values = logs[f"{name}_per_epoch"]
        assert values.shape == (3,) and np.isfinite(values).all()
    total = logs["validation_reg_loss_per_epoch"] + logs["validation_cls_loss_per_epoch"]
    np.testing.assert_allclose(logs["validation_loss_per_epoch"], total)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    archive, = (tmp_path / "run" / "comet").glob("*.zip")
    with zipfile.ZipFile(archive) as comet:
        messages = comet.read("messages.json").decode()
    for name in ("validation_reg_loss", "validation_cls_loss", "validation_cls_acc"):
        assert f'"metricName":"{name}"' in messages.replace(" ", "")
    best = json.loads((tmp_path / "run" / "best_model" / "best_epoch_losses.json").read_text())
    assert best["validation_loss"] == pytest.approx(float(total.min()))
    params = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert params["tasks"][0]["split"] == {"kind": "random", "seed": 3, "fraction": 0.2,
                                           "nb_training": 32, "nb_validation": 8}


def test_tensorboard_has_per_task_validation_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(tmp_path, "run", downstream=False, max_epochs=1,
                 tensorboard=True).train_and_validate()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"epoch/validation_reg_loss", "epoch/validation_cls_acc"} <= tags


@pytest.mark.parametrize(
    ("criterion", "expected_key"),
    [("validation_cls_loss", "validation_cls_loss_per_epoch"),
     (lambda s: -s["validation_cls_acc"], None)],
)
def test_best_model_criterion_is_configurable(
    tmp_path: Path, criterion: object, expected_key: str | None
) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, max_epochs=3,
                           best_model_criterion=criterion)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    values = logs[expected_key] if expected_key else -logs["validation_cls_acc_per_epoch"]
    assert int(logs["run_best_epoch_per_epoch"][-1]) == int(np.argmin(values))


def test_unknown_criterion_key_names_the_summary(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, best_model_criterion="nope")
    with pytest.raises(ConfigError, match="'nope' is not in the epoch summary"):
        trainer.train_and_validate()


def test_epoch_hook_runs_once_per_epoch_in_eval_mode_and_is_logged(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False)
    calls: list[tuple[int, bool, bool]] = []

    @trainer.callback_after_each_epoch
    def probe(trainer_: MTLTrainer, epoch: int) -> dict[str, float]:
        calls.append((epoch, trainer_.model.training, torch.is_grad_enabled()))
        return {"epoch_seen": epoch}

    trainer.train_and_validate()
    assert calls == [(0, False, False), (1, False, False), (2, False, False)]
    np.testing.assert_array_equal(logs_of(tmp_path, "run")["run_hook_epoch_seen_per_epoch"],
                                  [0, 1, 2])


def test_random_forest_probe_on_encoder_features(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    trainer = make_trainer(tmp_path, "run", downstream=False, max_epochs=2)
    x, y = make_data(11, 60)
    labels = (y > 0).long().numpy()

    @trainer.callback_after_each_epoch
    def random_forest(trainer_: MTLTrainer, epoch: int) -> dict[str, float]:
        features = trainer_.shared_blocks["encoder"](x).numpy()
        forest = RandomForestClassifier(n_estimators=10, random_state=0)
        forest.fit(features[:40], labels[:40])
        return {"rf_accuracy": forest.score(features[40:], labels[40:])}

    trainer.train_and_validate()
    accuracy = logs_of(tmp_path, "run")["run_hook_rf_accuracy_per_epoch"]
    assert accuracy.shape == (2,) and ((accuracy >= 0) & (accuracy <= 1)).all()


def test_bad_hook_result_raises(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False)
    trainer.callback_after_each_epoch(lambda t, e: {"x": "high"})
    with pytest.raises(ConfigError, match="non-numeric 'x'"):
        trainer.train_and_validate()


@pytest.mark.parametrize("weighting", ["ew", "mgda", "uw"])
def test_weighting_combines_the_losses_of_each_round(tmp_path: Path, weighting: str) -> None:
    trainer = make_trainer(tmp_path, "run", downstream=False, max_epochs=1, weighting=weighting)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    assert len(logs["training_loss_per_batch"]) == 3  # rounds: (r c) (r c) (r c r)
    assert np.isfinite(logs["training_weight_reg_per_batch"]).all()
    assert np.isfinite(logs["training_grad_norm_before_clip_per_batch"]).all()


def test_joint_schedule_with_shared_inputs_and_an_architecture(tmp_path: Path) -> None:
    from dwi_mtl.mtl.architectures import get_architecture

    x, y = make_data(4, 30)
    data = TensorDataset(x, y)
    arch = get_architecture("hps")(["up", "down"], make_encoder,
                                   {"up": nn.Linear(8, 1), "down": nn.Linear(8, 1)},
                                   rep_grad=False, multi_input=False, device="cpu")

    def task(name: str, sign: float) -> MTLTask:
        return MTLTask(name, nn.Identity(),
                       lambda out, b: ((out[:, 0] - sign * b[1]) ** 2).mean(), data,
                       forward=lambda blocks, heads, b: blocks["mtl"](b[0])[name],
                       batch_size=10)

    trainer = MTLTrainer({"mtl": arch}, [task("up", 1.0), task("down", -1.0)], tmp_path, "run",
                         schedule="joint", weighting="pcgrad", max_epochs=2,
                         progress_bar=False, handle_signals=False)
    trainer.train_and_validate()
    logs = logs_of(tmp_path, "run")
    assert np.isfinite(logs["training_up_loss_per_batch"]).all()
    assert np.isfinite(logs["training_down_loss_per_batch"]).all()
    assert np.isfinite(logs["validation_down_loss_per_epoch"]).all()


@pytest.mark.parametrize("rep_grad", [False, True])
def test_joint_forward_computes_all_tasks_in_one_pass(tmp_path: Path, rep_grad: bool) -> None:
    from dwi_mtl.mtl.architectures import get_architecture

    x, y = make_data(4, 30)
    data = TensorDataset(x, y)
    arch = get_architecture("hps")(["up", "down"], make_encoder,
                                   {"up": nn.Linear(8, 1), "down": nn.Linear(8, 1)},
                                   rep_grad=rep_grad, multi_input=False, device="cpu")
    passes: list[int] = []
    arch.register_forward_hook(lambda module, args, out: passes.append(1))

    def task(name: str, sign: float) -> MTLTask:
        return MTLTask(name, nn.Identity(),
                       lambda out, b: ((out[:, 0] - sign * b[1]) ** 2).mean(), data,
                       forward=lambda blocks, heads, b: blocks["mtl"](b[0])[name],
                       batch_size=10)

    def joint_forward(blocks: nn.ModuleDict, heads: nn.ModuleDict, b: Any) -> dict:
        return blocks["mtl"](b[0])

    trainer = MTLTrainer({"mtl": arch}, [task("up", 1.0), task("down", -1.0)], tmp_path, "run",
                         schedule="joint", joint_forward=joint_forward, weighting="mgda",
                         weighting_kwargs={"rep_grad": rep_grad}, max_epochs=1,
                         progress_bar=False, handle_signals=False)
    before = [p.detach().clone() for p in arch.get_share_params()]
    trainer.train_and_validate()
    # 3 training batches x 1 pass, then 1 validation batch: both tasks on one joint pass
    assert len(passes) == 3 + 1
    assert any(not torch.equal(a, b) for a, b in zip(before, arch.get_share_params()))
    logs = logs_of(tmp_path, "run")
    assert np.isfinite(logs["training_weight_up_per_batch"]).all()
    assert np.isfinite(logs["training_down_loss_per_batch"]).all()


def _joint_rep_grad_trainer(tmp_path: Path, name: str) -> tuple[MTLTrainer, Any]:
    from dwi_mtl.mtl.architectures import get_architecture

    x, y = make_data(4, 30)
    data = TensorDataset(x, y)
    arch = get_architecture("hps")(["up", "down"], make_encoder,
                                   {"up": nn.Linear(8, 1), "down": nn.Linear(8, 1)},
                                   rep_grad=True, multi_input=False, device="cpu")
    tasks = [MTLTask(n, nn.Identity(), lambda out, b, s=s: ((out[:, 0] - s * b[1]) ** 2).mean(),
                     data, forward=lambda blocks, heads, b, n=n: blocks["mtl"](b[0])[n],
                     batch_size=10) for n, s in (("up", 1.0), ("down", -1.0))]
    trainer = MTLTrainer({"mtl": arch}, tasks, tmp_path, name, schedule="joint",
                         joint_forward=lambda blocks, heads, b: blocks["mtl"](b[0]),
                         weighting="mgda", weighting_kwargs={"rep_grad": True}, max_epochs=1,
                         progress_bar=False, handle_signals=False)
    return trainer, arch


def test_rep_grad_backward_goes_through_the_stepper(tmp_path: Path) -> None:
    trainer, arch = _joint_rep_grad_trainer(tmp_path, "run")
    seen: list[tuple[int, int]] = []
    backward = trainer.stepper.backward

    def spy(total: torch.Tensor, tasks: dict, representation: Any = None) -> Any:
        assert representation is not None and len(representation) == 1
        weights = backward(total, tasks, representation=representation)
        seen.append((trainer.stepper.nb_accumulated, len(arch._representation)))
        return weights

    trainer.stepper.backward = spy  # type: ignore[method-assign]
    trainer.train_and_validate()
    # one backward per training batch, counted by the stepper; the representation is
    # released by the trainer once the stepper returns
    assert [count for count, _ in seen] == [1, 1, 1]
    assert arch._representation == {}


def test_rep_grad_representation_is_released_when_the_weighting_fails(tmp_path: Path) -> None:
    trainer, arch = _joint_rep_grad_trainer(tmp_path, "fail")

    def failing(*args: Any, **kwargs: Any) -> Any:
        assert arch._representation  # recorded by the forward, handed to the weighting
        raise RuntimeError("weighting failed")

    trainer.weighting.backward = failing
    with pytest.raises(RuntimeError, match="weighting failed"):
        trainer.train_and_validate()
    assert arch._representation == {}


def test_interleaved_tasks_on_a_multi_input_architecture(tmp_path: Path) -> None:
    from dwi_mtl.mtl.architectures import get_architecture

    arch = get_architecture("mmoe")(["reg", "cls"], make_encoder,
                                    {"reg": nn.Linear(8, 1), "cls": nn.Linear(8, 2)},
                                    rep_grad=False, multi_input=True, device="cpu",
                                    num_experts=2)
    tasks = make_tasks()
    for task in tasks:
        task.heads = nn.ModuleDict()
        task.forward_fn = (lambda name: lambda blocks, heads, b:
                           blocks["mtl"](b[0], task_name=name)[name])(task.name)
    trainer = MTLTrainer({"mtl": arch}, tasks, tmp_path, "run", weighting="mgda",
                         max_epochs=1, progress_bar=False, handle_signals=False)
    gate_before = [p.detach().clone() for p in arch.get_share_params()]
    trainer.train_and_validate()
    assert any(not torch.equal(a, b) for a, b in zip(gate_before, arch.get_share_params()))
    logs = logs_of(tmp_path, "run")
    assert np.isfinite(logs["validation_cls_acc_per_epoch"]).all()
    assert np.isfinite(logs["training_weight_cls_per_batch"]).all()


def test_bad_trainer_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unique"):
        MTLTrainer({"e": make_encoder()}, _same_name_tasks(), tmp_path, "a")
    with pytest.raises(ConfigError, match="same train_data"):
        make_trainer(tmp_path, "b", schedule="joint")
    with pytest.raises(ConfigError, match="unknown task sampler"):
        make_trainer(tmp_path, "c", schedule="cyclic")
    with pytest.raises(ConfigError, match="best_model_criterion"):
        make_trainer(tmp_path, "d", best_model_criterion=3)
    with pytest.raises(ConfigError, match="joint_forward needs"):
        make_trainer(tmp_path, "j", joint_forward=lambda blocks, heads, b: {})
    with pytest.raises(ConfigError, match="rep_grad=False"):
        make_trainer(tmp_path, "g", weighting="mgda", weighting_kwargs={"rep_grad": True})
    with pytest.raises(ConfigError, match="task_names"):
        from dwi_mtl.mtl.weighting import get_weighting

        make_trainer(tmp_path, "h", weighting=get_weighting("ew", ["x", "y"]))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        make_trainer(tmp_path, "e", resume=True)
    make_trainer(tmp_path, "f", downstream=False)
    with pytest.raises(ExperimentExistsError):
        make_trainer(tmp_path, "f", downstream=False)


def _same_name_tasks() -> list[MTLTask]:
    x, y = make_data(0, 10)
    return [MTLTask("t", nn.Linear(8, 1), lambda o, b: o.mean(), TensorDataset(x, y))
            for _ in range(2)]
