"""Downstream evaluation: how well the pre-trained shared blocks serve new tasks.

Every N epochs, for each downstream :class:`~dwi_mtl.mtl.tasks.MTLTask`, the
:class:`DownstreamEvaluator` fine-tunes a *deep copy* of the shared blocks plus a fresh copy
of the task's head (parameters re-initialised) for a budget of epochs/steps, with its own
optimizer, optionally with the copied shared blocks frozen, then reports the mean validation
loss and metrics. The pre-training blocks, heads and optimizer are never touched.

All randomness of a run (head initialisation, dropout, ...) is drawn inside
:func:`~dwi_mtl.mtl.hooks.isolated_rng` seeded from ``(seed, "downstream", epoch, task)``: a
run is reproducible and leaves the pre-training's random streams as they were, which keeps
a resumed pre-training exact.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.hooks import as_metrics, evaluation_mode, isolated_rng
from dwi_mtl.mtl.tasks import MTLTask
from dwi_mtl.training.optim import build_optimizer

logger = logging.getLogger(__name__)

DownstreamCallback = Callable[[MTLTask, "FineTunedModel", int], Any]


class FineTunedModel(nn.Module):
    """The fine-tuned copy: ``forward(batch)`` is the task's forward with these modules.

    Args:
        blocks: the copied shared blocks.
        heads: the fresh heads.
        task: the downstream task.
    """

    def __init__(self, blocks: nn.ModuleDict, heads: nn.ModuleDict, task: MTLTask) -> None:
        super().__init__()
        self.blocks = blocks
        self.heads = heads
        self.task = task

    def forward(self, batch: Any) -> Any:
        """The task's outputs on ``batch``."""
        return self.task.forward(self.blocks, batch, self.heads)


class DownstreamEvaluator:
    """Fine-tune copies of the shared blocks on downstream tasks (see the module docstring).

    Args:
        tasks: the downstream tasks.
        every_n_epochs: evaluate after epochs ``N-1, 2N-1, ...`` (None or 0: never).
        epochs: passes over each task's training data per evaluation.
        max_steps: cap on the optimizer steps of one evaluation (None: ``epochs`` decide).
        freeze_shared: fine-tune the head only (the copied blocks get no gradient).
        optimizer: torch.optim name or class of the fine-tuning optimizer.
        lr: its learning rate.
        weight_decay: its weight decay.
        seed: root of the runs' seeds.
        device: where the copies live.

    Raises:
        ConfigError: for duplicated task names or a non-positive budget.
    """

    def __init__(
        self,
        tasks: Sequence[MTLTask],
        every_n_epochs: int | None = None,
        epochs: int = 1,
        max_steps: int | None = None,
        freeze_shared: bool = False,
        optimizer: str | type = "Adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 1234,
        device: str | torch.device = "cpu",
    ) -> None:
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"downstream task names must be unique, got {names}")
        if int(epochs) < 1 or (max_steps is not None and int(max_steps) < 1):
            raise ConfigError(f"downstream budget must be >= 1, got epochs={epochs}, "
                              f"max_steps={max_steps}")
        if every_n_epochs is not None and int(every_n_epochs) < 0:
            raise ConfigError(f"downstream_every_n_epochs must be >= 0, got {every_n_epochs}")
        self.tasks = list(tasks)
        self.every_n_epochs = int(every_n_epochs or 0)
        self.epochs, self.max_steps = int(epochs), max_steps
        self.freeze_shared = bool(freeze_shared)
        self.optimizer, self.lr, self.weight_decay = optimizer, float(lr), float(weight_decay)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.callbacks: list[DownstreamCallback] = []

    def is_due(self, epoch: int) -> bool:
        """Whether a downstream evaluation follows ``epoch``."""
        return bool(self.tasks) and self.every_n_epochs > 0 and \
            (int(epoch) + 1) % self.every_n_epochs == 0

    def evaluate(self, task: MTLTask, shared_blocks: nn.ModuleDict, epoch: int) -> dict[str, float]:
        """Fine-tune a copy of ``shared_blocks`` + a fresh head on ``task``; return metrics.

        The metrics are the validation ``loss``, the task's metrics, ``nb_steps``, and what
        the ``callback_foreach_downstream_task`` callbacks return.
        """
        with isolated_rng(self.seed, "downstream", int(epoch), task.name):
            model = self._fresh_model(task, shared_blocks)
            nb_steps = self._fine_tune(model, task)
            metrics = self._validate(model, task)
            metrics["nb_steps"] = float(nb_steps)
            for callback in self.callbacks:
                with evaluation_mode(model):
                    result = callback(task, model, int(epoch))
                metrics.update(as_metrics(result, f"downstream callback {callback!r}"))
        logger.info("downstream %s after epoch %d: %s", task.name, epoch, metrics)
        return metrics

    def _fresh_model(self, task: MTLTask, shared_blocks: nn.ModuleDict) -> FineTunedModel:
        for module in shared_blocks.modules():  # recorded rep_grad tensors cannot be copied
            clear = getattr(module, "clear_representation", None)
            if callable(clear):
                clear()
        blocks = copy.deepcopy(shared_blocks)
        heads = copy.deepcopy(task.heads)
        for module in heads.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        model = FineTunedModel(blocks, heads, task).to(self.device)
        if self.freeze_shared:
            blocks.requires_grad_(False)
        return model

    def _fine_tune(self, model: FineTunedModel, task: MTLTask) -> int:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.optimizer, params, lr=self.lr,
                                    weight_decay=self.weight_decay)
        model.train()
        if self.freeze_shared:
            model.blocks.eval()
        steps = 0
        for epoch in range(self.epochs):
            for batch in task.train_source.begin(epoch, 0):
                if self.max_steps is not None and steps >= self.max_steps:
                    return steps
                if batch is None:  # only held-out streamlines
                    continue
                batch = task.prepare_batch(batch, self.device)
                loss = task.compute_loss(model(batch), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
        return steps

    def _validate(self, model: FineTunedModel, task: MTLTask) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        with evaluation_mode(model):
            for batch in task.valid_source.begin(0, 0):
                batch = task.prepare_batch(batch, self.device)
                outputs = model(batch)
                values = {"loss": float(task.compute_loss(outputs, batch)),
                          **task.compute_metrics(outputs, batch)}
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value
                count += 1
        return {name: value / max(count, 1) for name, value in sums.items()}

    def get_config(self) -> dict[str, Any]:
        """JSON-able settings (for ``parameters.json``)."""
        optimizer = self.optimizer if isinstance(self.optimizer, str) else self.optimizer.__name__
        return {
            "tasks": [task.get_config() for task in self.tasks],
            "every_n_epochs": self.every_n_epochs, "epochs": self.epochs,
            "max_steps": self.max_steps, "freeze_shared": self.freeze_shared,
            "optimizer": optimizer, "lr": self.lr, "weight_decay": self.weight_decay,
            "seed": self.seed,
        }
