"""Construction helpers of the MTLTrainer: argument checks, weighting, log sinks.

Kept apart from :mod:`dwi_mtl.mtl.trainer` so that the trainer module holds the training
logic only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.tasks import MTLTask

Criterion = str | Callable[[dict[str, float]], float] | None


def check_tasks(tasks: Sequence[MTLTask], what: str) -> dict[str, MTLTask]:
    if not tasks or not all(isinstance(t, MTLTask) for t in tasks):
        raise ConfigError(f"{what} must be a non-empty list of MTLTask")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} names must be unique, got {names}")
    return {t.name: t for t in tasks}


def shared_params(blocks: nn.ModuleDict) -> list[torch.Tensor]:
    params: list[torch.Tensor] = []
    for block in blocks.values():
        get = getattr(block, "get_share_params", None)
        params.extend(get() if callable(get) else block.parameters())
    return [p for p in params if p.requires_grad]


def build_weighting(weighting: Any, kwargs: dict[str, Any] | None, names: list[str],
                    device: torch.device, allow_rep_grad: bool = False) -> Any:
    if weighting is None:
        return None
    if isinstance(weighting, str):
        from dwi_mtl.mtl.weighting import get_weighting

        weighting = get_weighting(weighting, names, **(kwargs or {}))
    if getattr(weighting, "rep_grad", False) and not allow_rep_grad:
        raise ConfigError("a weighting with rep_grad=True needs schedule='joint' and a "
                          "joint_forward (one forward pass whose representation the tasks "
                          "share); use rep_grad=False")
    if list(getattr(weighting, "task_names", [])) != names:
        raise ConfigError(f"weighting task_names {getattr(weighting, 'task_names', None)} must "
                          f"be the tasks {names}")
    return weighting.to(device)


def check_criterion(criterion: Criterion) -> Criterion:
    if criterion is None or isinstance(criterion, str) or callable(criterion):
        return criterion
    raise ConfigError(f"best_model_criterion must be None, a summary key or a callable, got "
                      f"{criterion!r}")


