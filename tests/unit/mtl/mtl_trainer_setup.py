"""Shared set-up of the MTLTrainer tests: tiny real modules and in-memory tasks.

Two pre-training tasks with different data sizes (a regression and a classification) and a
downstream classification task, all on ``TensorDataset`` s, with a dropout in the shared
encoder so that the global random stream matters for exact resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.mtl import MTLTask, MTLTrainer

TIMING_LOGS = ("batch_time", "data_wait_time")


def make_data(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(count, 4)`` and a linear target of them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 4, generator=generator)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 0.0])


def accuracy(outputs: torch.Tensor, batch: Any) -> float:
    """Classification accuracy."""
    return float((outputs.argmax(1) == batch[1]).float().mean())


def make_tasks(nb_a: int = 40, nb_b: int = 24) -> list[MTLTask]:
    """Task ``reg`` (regression, nb_a samples) and ``cls`` (2 classes, nb_b samples)."""
    torch.manual_seed(0)
    xa, ya = make_data(1, nb_a)
    xb, yb = make_data(2, nb_b)
    reg = MTLTask("reg", nn.Linear(8, 1), lambda out, b: ((out[:, 0] - b[1]) ** 2).mean(),
                  TensorDataset(xa, ya), batch_size=8, split_seed=3)
    cls = MTLTask("cls", nn.Linear(8, 2), lambda out, b: nn.functional.cross_entropy(out, b[1]),
                  TensorDataset(xb, (yb > 0).long()), batch_size=8, metrics={"acc": accuracy})
    return [reg, cls]


def make_downstream() -> MTLTask:
    """Downstream task ``sign``: the sign of the first input."""
    x, _ = make_data(5, 32)
    return MTLTask("sign", nn.Linear(8, 2), lambda out, b: nn.functional.cross_entropy(out, b[1]),
                   TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8,
                   metrics={"acc": accuracy})


def make_encoder() -> nn.Module:
    """The shared encoder (with dropout)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1))


def make_trainer(experiments: Path, name: str, resume: bool = False, **options: Any) -> MTLTrainer:
    """A trainer on :func:`make_tasks` (options override the defaults)."""
    downstream = options.pop("downstream", True)
    kwargs: dict[str, Any] = {"max_epochs": 3, "learning_rates": 0.01, "seed": 7,
                              "progress_bar": False, "handle_signals": False}
    if downstream:
        kwargs.update(downstream_tasks=[make_downstream()], downstream_every_n_epochs=2,
                      downstream_epochs=1)
    kwargs.update(options)  # may override handle_signals
    return MTLTrainer({"encoder": make_encoder()}, make_tasks(), experiments, name,
                      resume=resume, **kwargs)


def logs_of(experiments: Path, name: str) -> dict[str, np.ndarray]:
    """The run's .npy logs without the timing series."""
    logs = load_npy_logs(experiments / name / "logs")
    return {k: v for k, v in logs.items() if not any(t in k for t in TIMING_LOGS)}


def weights_of(trainer: MTLTrainer) -> dict[str, torch.Tensor]:
    """A copy of the trainer's model weights."""
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
