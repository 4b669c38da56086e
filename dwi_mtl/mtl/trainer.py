"""MTLTrainer: pre-train shared blocks on several tasks, validate each, evaluate downstream.

Built on the one engine (:class:`~dwi_mtl.training.loop.TrainingEngine`), so it has the same
checkpoints, exact resume, ``.npy`` logs, Comet and TensorBoard sinks as every trainer here.
How the MTL parts map onto the engine:

- training phase: a :class:`~dwi_mtl.mtl.task_sources.ScheduledSource` interleaves the tasks'
  own batches by a task sampler (or a ``JointSource`` when the tasks share inputs); shared
  gradients are accumulated over one round of tasks, then one optimizer step; with a
  ``weighting``, each engine step is a whole round whose per-task losses the weighting
  combines (``AbsWeighting.backward``);
- validation phase: a ``SequentialSource`` runs every task's validation batches in turn, or,
  with ``schedule="joint"`` and tasks validated on the same data, a ``JointSource`` validates
  every task on each shared batch in one pass (``joint_forward`` when given); each batch logs
  ``<task>_loss`` and ``<task>_<metric>``, so the epoch summary holds
  ``validation_<task>_loss`` per task; ``validation_loss`` is their sum.
  ``max_batches_per_epoch_validation`` caps the validation batches of *each task* (the
  engine's option of that name, which caps the phase, is not used);
- ``end_epoch``: epoch hooks (``@trainer.callback_after_each_epoch``), then, every N epochs,
  the downstream evaluations, each followed by a checkpoint (a resume does not redo them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwi_mtl.errors import CheckpointError, ConfigError
from dwi_mtl.logging.progress import ProgressReporter
from dwi_mtl.logging.sinks import build_sinks, flatten_parameters
from dwi_mtl.mtl.downstream import DownstreamCallback, DownstreamEvaluator
from dwi_mtl.mtl.hooks import EvaluationRecord, as_metrics, evaluation_mode, isolated_rng
from dwi_mtl.mtl.scheduling import TaskSampler, get_task_sampler
from dwi_mtl.mtl.task_sources import JointSource, ScheduledSource, ScheduledStep
from dwi_mtl.mtl.tasks import MTLTask, same_data
from dwi_mtl.mtl.trainer_setup import (
    Criterion,
    build_validation_source,
    build_weighting,
    check_criterion,
    check_tasks,
    check_validation_cap,
    shared_params,
)
from dwi_mtl.state import class_path
from dwi_mtl.training.experiment import ExperimentFolder
from dwi_mtl.training.loop import TrainingEngine
from dwi_mtl.training.lr_schedule import LearningRateSchedule
from dwi_mtl.training.optim import build_optimizer
from dwi_mtl.training.optimization import GradientStepper

logger = logging.getLogger(__name__)

EpochHook = Callable[["MTLTrainer", int], Any]
JointForward = Callable[[nn.ModuleDict, nn.ModuleDict, Any], Mapping[str, Any]]


class MTLTrainer(TrainingEngine):
    """Multi-task pre-training of shared blocks with per-task validation and downstream tests.

    Args:
        shared_blocks: ``{name: module}`` used by the tasks' forward passes (an encoder, a
            decoder, or an MTL architecture).
        tasks: the pre-training tasks (unique names).
        experiments_path: parent folder of experiments (must exist).
        experiment_name: the run's folder; refused when it exists unless ``resume``.
        schedule: ``"round_robin"``, ``"proportional"``, ``"weighted"``, a
            :class:`~dwi_mtl.mtl.scheduling.TaskSampler`, or ``"joint"`` (tasks built on the
            same training data: every batch serves every task).
        task_weights: ``{task: weight}`` of the ``"weighted"`` schedule.
        steps_per_epoch: steps of the ``"weighted"`` schedule (None: all batches).
        weighting: None (interleaved: gradient accumulation over a round; joint: sum of the
            losses), a weighting name or an ``AbsWeighting``.
        weighting_kwargs: the named weighting's arguments.
        joint_forward: with ``schedule="joint"``, ``joint_forward(shared_blocks, heads,
            batch) -> {task: outputs}`` computes every task's outputs in one pass (an MTL
            architecture's forward), in training and in joint validation; each task's loss
            is then taken on its outputs. Needed for weightings with ``rep_grad=True`` (the
            representation of that one pass).
        optimizer: torch.optim name or class.
        learning_rates: float or per-epoch list (see ``parse_learning_rates``).
        weight_decay: optimizer weight decay.
        clip_grad: max gradient norm (None: off; the norm is logged).
        best_model_criterion: None (sum of per-task validation losses), a summary key (e.g.
            ``"validation_direction_loss"``) or ``summary -> float``; minimized.
        downstream_tasks: tasks fine-tuned on copies of the shared blocks.
        downstream_every_n_epochs: evaluate them after every N-th epoch (None: never).
        downstream_epochs: fine-tuning epochs per evaluation.
        downstream_max_steps: cap on fine-tuning steps (None: no cap).
        downstream_freeze_shared: fine-tune the fresh head only.
        downstream_lr: fine-tuning learning rate (Adam).
        seed: seed of the schedule and the downstream runs.
        resume: load the experiment's latest checkpoint (the folder must exist).
        comet_mode: ``"online"``, ``"offline"`` or ``"disabled"``.
        comet_project: Comet project.
        tensorboard: write TensorBoard events.
        progress_bar: True: tqdm bar; False: log lines; None: bar on a terminal.
        log_every_n_batches: period of batch points for Comet/TensorBoard.
        device: the training device.
        max_batches_per_epoch_validation: at most this many validation batches of *each*
            task per epoch (None: all); in joint validation a shared batch counts once for
            every task. (``max_batches_per_epoch_training`` keeps the engine's meaning: engine
            steps of the epoch, all tasks together.)
        **engine_kwargs: the engine's options (``max_epochs``, ``patience``,
            ``checkpoint_every_n_batches``, ``max_batches_per_epoch_training``, ...).

    Raises:
        ConfigError: for duplicated task names, an unknown schedule or weighting, a joint
            schedule over different data, a bad criterion or a bad
            ``max_batches_per_epoch_validation``.
        CheckpointError: with ``resume`` when the experiment has no checkpoint.
    """

    def __init__(
        self,
        shared_blocks: Mapping[str, nn.Module],
        tasks: Sequence[MTLTask],
        experiments_path: str | Path,
        experiment_name: str,
        *,
        schedule: str | TaskSampler = "round_robin",
        task_weights: Mapping[str, float] | None = None,
        steps_per_epoch: int | None = None,
        weighting: Any = None,
        weighting_kwargs: dict[str, Any] | None = None,
        joint_forward: JointForward | None = None,
        optimizer: str | type = "Adam",
        learning_rates: float | str | Sequence[float | str] = 1e-3,
        weight_decay: float = 0.0,
        clip_grad: float | None = None,
        best_model_criterion: Criterion = None,
        downstream_tasks: Sequence[MTLTask] = (),
        downstream_every_n_epochs: int | None = None,
        downstream_epochs: int = 1,
        downstream_max_steps: int | None = None,
        downstream_freeze_shared: bool = False,
        downstream_lr: float = 1e-3,
        seed: int = 1234,
        resume: bool = False,
        comet_mode: str = "disabled",
        comet_project: str | None = None,
        tensorboard: bool = False,
        progress_bar: bool | None = None,
        log_every_n_batches: int = 50,
        device: str | torch.device = "cpu",
        max_batches_per_epoch_validation: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.tasks = check_tasks(tasks, "tasks")
        names = list(self.tasks)
        clash = set(names) & {t.name for t in downstream_tasks}
        if clash:
            raise ConfigError(f"downstream task names {sorted(clash)} are also pre-training tasks")
        device_ = torch.device(device)
        self.shared_blocks = nn.ModuleDict(dict(shared_blocks))
        self.heads = nn.ModuleDict({name: task.heads for name, task in self.tasks.items()})
        model = nn.ModuleDict({"shared": self.shared_blocks, "heads": self.heads}).to(device_)
        self.seed = int(seed)
        if joint_forward is not None and schedule != "joint":
            raise ConfigError("joint_forward needs schedule='joint'")
        self.joint_forward = joint_forward
        self.weighting = build_weighting(weighting, weighting_kwargs, names, device_,
                                         allow_rep_grad=joint_forward is not None)
        self.task_sampler, train_source = self._training_source(
            schedule, task_weights, steps_per_epoch, names)
        self.max_valid_batches_per_task = check_validation_cap(max_batches_per_epoch_validation)
        valid_source = build_validation_source(self.tasks, schedule == "joint",
                                               self.max_valid_batches_per_task)
        self.joint_validation = isinstance(valid_source, JointSource)
        experiment = ExperimentFolder(experiments_path, experiment_name)
        sinks = build_sinks(experiment, comet_mode, None, comet_project, tensorboard,
                             log_every_n_batches)
        progress = ProgressReporter(use_tqdm=progress_bar, log_every_n_batches=log_every_n_batches)
        super().__init__(experiment, train_source, valid_source, model=model, sinks=sinks,
                         progress=progress, device=device_, **engine_kwargs)
        self.model: nn.Module = model
        self.criterion = check_criterion(best_model_criterion)
        params = list(model.parameters())
        extra = list(self.weighting.parameters()) if self.weighting is not None else []
        self.lr_schedule = LearningRateSchedule(
            build_optimizer(optimizer, params + extra, lr=1e-3, weight_decay=weight_decay),
            learning_rates)
        self.optimizer = self.lr_schedule.optimizer
        self.stepper = GradientStepper(self.optimizer, params, shared_params(self.shared_blocks),
                                       clip_grad, 1, self.weighting)
        self.downstream = DownstreamEvaluator(
            list(downstream_tasks), downstream_every_n_epochs, downstream_epochs,
            downstream_max_steps, downstream_freeze_shared, lr=downstream_lr, seed=seed,
            device=device_)
        self.epoch_hooks: list[EpochHook] = []
        self.evaluations = EvaluationRecord()
        self._config = {
            "schedule": schedule if isinstance(schedule, str) else schedule.get_config(),
            "weighting": None if self.weighting is None else self.weighting.get_config(),
            "optimizer": str(optimizer), "learning_rates": self.lr_schedule.values,
            "weight_decay": weight_decay, "clip_grad": clip_grad, "seed": seed,
            "max_batches_per_epoch_validation_per_task": self.max_valid_batches_per_task,
            "joint_validation": self.joint_validation,
            "best_model_criterion": best_model_criterion if isinstance(
                best_model_criterion, str) else repr(best_model_criterion),
            **{k: v for k, v in engine_kwargs.items() if isinstance(v, (int, float, str))},
        }
        self._open_experiment(resume)

    # ------------------------------------------------------------------ construction
    def _training_source(
        self, schedule: str | TaskSampler, weights: Mapping[str, float] | None,
        steps: int | None, names: list[str],
    ) -> tuple[TaskSampler | None, Any]:
        if schedule == "joint":
            first = next(iter(self.tasks.values()))
            if any(not same_data(t.train_data, first.train_data) for t in self.tasks.values()):
                raise ConfigError("schedule 'joint' needs every task built on the same "
                                  "train_data object (tasks sharing their inputs)")
            # a split drawn from the shared training data must be the same for every task
            splits = [t.split for t in self.tasks.values()]
            if any(s.get("kind", "").startswith("random") for s in splits) and any(
                    s != splits[0] for s in splits):
                raise ConfigError("schedule 'joint' needs the same validation split for every "
                                  "task: give them the same split_seed and validation_fraction")
            return None, JointSource(first.train_source, names)
        samplers = [id(t.train_data[0]) for t in self.tasks.values()
                    if isinstance(t.train_data, tuple) and hasattr(t.train_data[0], "set_epoch")]
        if len(samplers) != len(set(samplers)):
            raise ConfigError("tasks share a BatchSampler: give each task its own sampler, or "
                              "use schedule='joint' for tasks built on the same data")
        if isinstance(schedule, TaskSampler):
            sampler = schedule
        elif schedule == "weighted":
            sampler = get_task_sampler("weighted", weights=dict(weights or {}), nb_steps=steps,
                                       seed=self.seed)
        else:
            sampler = get_task_sampler(str(schedule), seed=self.seed)
        sources = {n: t.train_source for n, t in self.tasks.items()}
        return sampler, ScheduledSource(sources, sampler, group_rounds=self.weighting is not None)

    def _open_experiment(self, resume: bool) -> None:
        if resume:
            if not self.load_checkpoint():
                raise CheckpointError(f"no checkpoint to resume in '{self.experiment.checkpoint}'")
            return
        self.experiment.create()
        self.experiment.write_parameters(self.experiment_parameters())

    # ------------------------------------------------------------------ decorators
    def callback_after_each_epoch(self, fn: EpochHook) -> EpochHook:
        """Decorator: run ``fn(trainer, epoch)`` after each epoch's validation, in eval mode
        without gradients; a returned ``{name: number}`` is logged as ``hook_<name>``."""
        self.epoch_hooks.append(fn)
        return fn

    def callback_foreach_downstream_task(
        self,
    ) -> Callable[[DownstreamCallback], DownstreamCallback]:
        """Decorator factory: ``fn(task, fine_tuned_model, epoch)`` runs after each downstream
        fine-tuning (eval mode, no gradients); a returned dict is logged as
        ``downstream_<task>_<name>``."""
        def register(fn: DownstreamCallback) -> DownstreamCallback:
            self.downstream.callbacks.append(fn)
            return fn
        return register

    # ------------------------------------------------------------------ engine steps
    def _task_losses(self, step: ScheduledStep) -> dict[str, torch.Tensor]:
        if self.joint_forward is not None:
            return self._joint_losses(step)
        losses: dict[str, list[torch.Tensor]] = {}
        for name, batch in step.items:
            if batch is None:  # every streamline of the batch was held out for validation
                continue
            task = self.tasks[name]
            batch = task.prepare_batch(batch, self.device)
            losses.setdefault(name, []).append(
                task.compute_loss(task.forward(self.shared_blocks, batch), batch))
        return {name: values[0] if len(values) == 1 else torch.stack(values).mean()
                for name, values in losses.items()}

    def _joint_losses(self, step: ScheduledStep) -> dict[str, torch.Tensor]:
        """All tasks' losses from one ``joint_forward`` pass on the shared batch."""
        name, batch = step.items[0]
        if batch is None:
            return {}
        batch = self.tasks[name].prepare_batch(batch, self.device)
        outputs = self._joint_outputs(batch)
        return {task_name: task.compute_loss(outputs[task_name], batch)
                for task_name, task in self.tasks.items()}

    def _joint_outputs(self, batch: Any) -> Mapping[str, Any]:
        """Every task's outputs on a shared (prepared) batch: one ``joint_forward`` pass, or
        each task's forward in turn when there is none."""
        if self.joint_forward is None:
            return {name: task.forward(self.shared_blocks, batch)
                    for name, task in self.tasks.items()}
        outputs = self.joint_forward(self.shared_blocks, self.heads, batch)
        missing = set(self.tasks) - set(outputs)
        if missing:
            raise ConfigError(f"joint_forward returned no outputs for tasks {sorted(missing)}")
        return outputs

    def _backward(self, total: torch.Tensor, losses: dict[str, torch.Tensor]
                  ) -> Mapping[str, Any]:
        """Backward through the stepper, or with the representation for ``rep_grad``."""
        if not getattr(self.weighting, "rep_grad", False):
            return self.stepper.backward(total, losses if self.weighting is not None else {})
        archs: list[Any] = [b for b in self.shared_blocks.values() if getattr(b, "rep_grad", 0)]
        reps = [rep for arch in archs for rep in arch.get_representation(list(losses))]
        try:
            return self.stepper.backward(total, losses, representation=reps)
        finally:
            for arch in archs:  # release the recorded activations (and their graph) now
                arch.clear_representation()

    def train_step(self, batch: ScheduledStep, epoch: int, batch_index: int) -> dict[str, float]:
        """Forward the step's task batch(es), backward, and step at the end of a round."""
        if not self.model.training:
            self.model.train()
        self.stepper.release_gradients()  # before the forward, as zero_grad in a plain loop
        losses = self._task_losses(batch)
        if not losses:
            metrics = {"loss": math.nan, "nb_empty_batches": 1.0}
            if batch.round_end and self.stepper.nb_accumulated:
                metrics.update(self._optimizer_step(epoch, batch_index))
            return metrics
        values = list(losses.values())
        total = values[0] if len(values) == 1 else torch.stack(values).sum()
        floats = {f"{n}_loss": float(v.detach()) for n, v in losses.items()}
        metrics = {"loss": float(total.detach()) if len(values) > 1 else
                   next(iter(floats.values())), **floats}
        if not self.nonfinite.check(metrics, "loss", epoch, batch_index, {}):
            self.stepper.discard()
            return metrics
        weights = self._backward(total, losses)
        metrics.update({f"weight_{n}": float(w) for n, w in weights.items()})
        if batch.round_end:
            metrics.update(self._optimizer_step(epoch, batch_index, losses))
        metrics["lr"] = self.lr_schedule.current
        return metrics

    def _optimizer_step(
        self, epoch: int, batch_index: int, losses: dict[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        before, after = self.stepper.grad_norm()
        norms = {"grad_norm_before_clip": before, "grad_norm_after_clip": after}
        if not self.nonfinite.check({"grad_norm": before}, "gradient", epoch, batch_index, {}):
            self.stepper.discard()
            return norms
        self.stepper.step()
        if self.weighting is not None and losses:
            self.weighting.on_step_end({n: v.detach() for n, v in losses.items()})
        return norms

    def validation_step(self, batch: ScheduledStep, epoch: int, batch_index: int
                        ) -> dict[str, float]:
        """One validation batch: one task's (sequential) or every task's on a shared batch
        (joint); losses and metrics named after the task, ``loss`` their sum."""
        if self.model.training:
            self.model.eval()
        name, data = batch.items[0]
        data = self.tasks[name].prepare_batch(data, self.device)
        with torch.no_grad():
            if len(batch.items) > 1:
                outputs = self._joint_outputs(data)
            else:
                outputs = {name: self.tasks[name].forward(self.shared_blocks, data)}
            metrics: dict[str, float] = {}
            for task_name, task_outputs in outputs.items():
                task = self.tasks[task_name]
                metrics[f"{task_name}_loss"] = float(task.compute_loss(task_outputs, data))
                metrics.update({f"{task_name}_{metric}": v for metric, v in
                                task.compute_metrics(task_outputs, data).items()})
        loss = float(sum(metrics[f"{n}_loss"] for n in outputs))
        self.nonfinite.check({"loss": loss}, "validation loss", epoch, batch_index, {})
        return {"loss": loss, **metrics}

    def finish_training_phase(self, epoch: int) -> None:
        """Step on gradients of an incomplete round (epoch capped by max_batches), then release
        the gradients (validation and the epoch end do not hold their memory)."""
        if self.stepper.nb_accumulated:
            self._optimizer_step(epoch, -1)
        self.stepper.release_gradients()

    def start_epoch(self, epoch: int) -> None:
        """Set the epoch's learning rate, then run the ``on_epoch_start`` hook."""
        self.lr_schedule.start_epoch(epoch)
        super().start_epoch(epoch)

    # ------------------------------------------------------------------ end of epoch
    def end_epoch(self, epoch: int, summary: dict[str, float]) -> None:
        """Sum the per-task validation losses, run hooks and downstream evaluations, then
        step the lr schedule and the weighting's epoch hook."""
        task_losses = [summary.get(f"validation_{name}_loss", math.nan) for name in self.tasks]
        summary["validation_loss"] = float(sum(task_losses))
        self._run_epoch_hooks(epoch)
        if self.downstream.is_due(epoch):
            self._run_downstream(epoch)
        summary.update(self.evaluations.summary(epoch))
        summary["lr"] = self.lr_schedule.current
        self.lr_schedule.end_epoch()
        if self.weighting is not None:
            self.weighting.on_epoch_end(epoch)
        super().end_epoch(epoch, summary)

    def _run_epoch_hooks(self, epoch: int) -> None:
        if not self.epoch_hooks or epoch in self.evaluations.hooks:
            return
        results: dict[str, float] = {}
        with isolated_rng(self.seed, "epoch_hooks", epoch), evaluation_mode(self.model):
            for hook in self.epoch_hooks:
                results.update(as_metrics(hook(self, epoch), f"epoch hook {hook!r}"))
        self.evaluations.hooks[epoch] = results

    def _run_downstream(self, epoch: int) -> None:
        for task in self.downstream.tasks:
            if self.evaluations.downstream_done(epoch, task.name):
                continue
            metrics = self.downstream.evaluate(task, self.shared_blocks, epoch)
            self.evaluations.record_downstream(epoch, task.name, metrics)
            self._checkpoint_mid_phase()  # raises CheckpointedOnSignal after SIGTERM/SIGUSR1

    def monitored_value(self, summary: dict[str, float]) -> float:
        """The best-model criterion (default: sum of the per-task validation losses)."""
        if self.criterion is None:
            return summary.get("validation_loss", math.nan)
        if isinstance(self.criterion, str):
            if self.criterion not in summary:
                raise ConfigError(f"best_model_criterion {self.criterion!r} is not in the epoch "
                                  f"summary (keys: {sorted(summary)})")
            return float(summary[self.criterion])
        return float(self.criterion(summary))

    # ------------------------------------------------------------------ state and parameters
    def stateful_objects(self) -> dict[str, Any]:
        """Model, optimizer, lr schedule, stepper, weighting, task sampler, evaluations."""
        objects: dict[str, Any] = {
            "model": self.model, "optimizer": self.optimizer, "lr_schedule": self.lr_schedule,
            "stepper": self.stepper, "evaluations": self.evaluations,
        }
        if self.weighting is not None:
            objects["weighting"] = self.weighting
        if self.task_sampler is not None:
            objects["task_sampler"] = self.task_sampler
        return objects

    def get_config(self) -> dict[str, Any]:
        """The trainer's JSON-able settings."""
        return dict(self._config)

    def experiment_parameters(self) -> dict[str, Any]:
        """What ``parameters.json`` records (tasks with their split seeds, settings)."""
        return {
            "trainer": {"class": class_path(self), "config": self.get_config()},
            "shared_blocks": {name: class_path(m) for name, m in self.shared_blocks.items()},
            "tasks": [task.get_config() for task in self.tasks.values()],
            "downstream": self.downstream.get_config(),
        }

    def parameters(self) -> dict[str, Any]:
        """Flattened parameters for Comet/TensorBoard."""
        return flatten_parameters(self.experiment_parameters())
