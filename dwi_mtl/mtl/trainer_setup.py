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
from dwi_mtl.mtl.task_sources import JointSource, SequentialSource
from dwi_mtl.mtl.tasks import MTLTask, same_data

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




def check_validation_cap(cap: Any) -> int | None:
    """The per-task validation cap: None or an integer >= 1.

    Raises:
        ConfigError: naming ``max_batches_per_epoch_validation`` for any other value.
    """
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"max_batches_per_epoch_validation (per task) must be None or an "
                          f"integer >= 1, got {cap!r}")
    return int(cap)


def build_validation_source(
    tasks: dict[str, MTLTask], joint: bool, cap: int | None
) -> JointSource | SequentialSource:
    """The validation phase's source.

    With ``joint`` (``schedule="joint"``) and every task validated on the same data (the same
    ``valid_data``, or the same split of the shared training data), a :class:`JointSource`
    over the first task's validation source: every task on the same batches, in one pass.
    Otherwise a :class:`SequentialSource`: each task's own validation batches in turn. ``cap``
    limits the batches of each task.
    """
    first = next(iter(tasks.values()))
    if joint and all(same_data(t.valid_data, first.valid_data) for t in tasks.values()):
        return JointSource(first.valid_source, list(tasks), cap)
    return SequentialSource({n: t.valid_source for n, t in tasks.items()}, cap)
