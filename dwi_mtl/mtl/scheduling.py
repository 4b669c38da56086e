"""Task samplers: which task's batch the MTLTrainer trains on at each step of an epoch.

A sampler turns the number of batches each task has in an epoch into the epoch's *plan*: the
list of task names, one per step. The plan is a pure function of ``(seed, epoch, sizes)``
(randomness from :func:`dwi_mtl.state.derive_generator`), so a resumed run recomputes it and
positions every task's data at the right batch without replaying anything.

- :class:`RoundRobinSampler`: tasks in turn (``A B C A B C ...``); a task whose batches are
  exhausted drops out of the cycle.
- :class:`ProportionalSampler`: a random order in which every task appears as often as it has
  batches (each step picks a task with probability proportional to its remaining batches).
- :class:`WeightedSampler`: each step draws a task with fixed weights among the tasks that
  still have batches; optionally a fixed number of steps per epoch.

:func:`split_rounds` cuts a plan into *rounds* (spans in which every task appears): the
trainer accumulates shared gradients over a round, or combines the round's per-task losses
with an MTL weighting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dwi_mtl.errors import ConfigError
from dwi_mtl.state import derive_generator


class TaskSampler:
    """Base class: plan the task of every step of an epoch (see the module docstring).

    Args:
        seed: seed of the sampler's randomness (unused by round robin).
    """

    #: Name in the registry of :func:`get_task_sampler`.
    name = "abstract"

    def __init__(self, seed: int = 1234) -> None:
        self.seed = int(seed)

    def plan(self, epoch: int, sizes: Mapping[str, int]) -> list[str]:
        """Return the task name of every training step of ``epoch``.

        Args:
            epoch: the epoch (keys the randomness).
            sizes: ``{task: number of batches in this epoch}``, in the tasks' order.
        """
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (with ``name``; :func:`get_task_sampler` rebuilds)."""
        return {"name": self.name, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        """The sampler's configuration: plans depend on nothing else."""
        return self.get_config()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that the checkpointed sampler is this one (a different plan breaks a resume).

        Raises:
            ConfigError: naming both configurations when they differ.
        """
        if state != self.state_dict():
            raise ConfigError(
                f"task sampler of the checkpoint {state} differs from this run's "
                f"{self.state_dict()}; resume with the same schedule"
            )


class RoundRobinSampler(TaskSampler):
    """Tasks in turn; an exhausted task leaves the cycle (mmm's cyclic sampler)."""

    name = "round_robin"

    def plan(self, epoch: int, sizes: Mapping[str, int]) -> list[str]:
        remaining = {task: int(size) for task, size in sizes.items()}
        plan: list[str] = []
        while any(remaining.values()):
            for task in sizes:
                if remaining[task] > 0:
                    plan.append(task)
                    remaining[task] -= 1
        return plan


class ProportionalSampler(TaskSampler):
    """A random order in which each task appears once per batch it has (proportional to size)."""

    name = "proportional"

    def plan(self, epoch: int, sizes: Mapping[str, int]) -> list[str]:
        plan = [task for task, size in sizes.items() for _ in range(int(size))]
        order = derive_generator(self.seed, "task_sampler", epoch).permutation(len(plan))
        return [plan[int(i)] for i in order]


class WeightedSampler(TaskSampler):
    """Draw each step's task with fixed weights among the tasks that still have batches.

    Args:
        weights: ``{task: weight > 0}`` (missing tasks weigh 1).
        nb_steps: steps per epoch (None: until every task's batches are used).
        seed: seed of the draws.
    """

    name = "weighted"

    def __init__(
        self, weights: Mapping[str, float], nb_steps: int | None = None, seed: int = 1234
    ) -> None:
        super().__init__(seed)
        self.weights = {str(task): float(w) for task, w in weights.items()}
        bad = {task: w for task, w in self.weights.items() if not (w > 0 and np.isfinite(w))}
        if bad:
            raise ConfigError(f"task weights must be finite and > 0, got {bad}")
        if nb_steps is not None and int(nb_steps) < 1:
            raise ConfigError(f"nb_steps must be >= 1 or None, got {nb_steps}")
        self.nb_steps = None if nb_steps is None else int(nb_steps)

    def plan(self, epoch: int, sizes: Mapping[str, int]) -> list[str]:
        unknown = set(self.weights) - set(sizes)
        if unknown:
            raise ConfigError(f"task weights name unknown tasks {sorted(unknown)}")
        rng = derive_generator(self.seed, "task_sampler", epoch)
        tasks = list(sizes)
        remaining = np.array([int(sizes[t]) for t in tasks], dtype=np.int64)
        weights = np.array([self.weights.get(t, 1.0) for t in tasks], dtype=np.float64)
        limit = int(remaining.sum()) if self.nb_steps is None else self.nb_steps
        plan: list[str] = []
        while len(plan) < limit and remaining.sum() > 0:
            p = np.where(remaining > 0, weights, 0.0)
            index = int(rng.choice(len(tasks), p=p / p.sum()))
            plan.append(tasks[index])
            remaining[index] -= 1
        return plan

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": dict(self.weights), "nb_steps": self.nb_steps}


SAMPLERS: dict[str, type[TaskSampler]] = {
    cls.name: cls for cls in (RoundRobinSampler, ProportionalSampler, WeightedSampler)
}


def get_task_sampler(name: str, **kwargs: Any) -> TaskSampler:
    """Build a task sampler by name (``"round_robin"``, ``"proportional"``, ``"weighted"``).

    Raises:
        ConfigError: for an unknown name or arguments the sampler rejects.
    """
    key = str(name).lower()
    if key not in SAMPLERS:
        raise ConfigError(f"unknown task sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    try:
        return SAMPLERS[key](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"task sampler {name!r} rejects its arguments: {exc}") from exc


def split_rounds(plan: Sequence[str], tasks: Sequence[str]) -> list[tuple[int, int]]:
    """Cut a plan into rounds ``[start, stop)``, each containing every task at least once.

    A round closes as soon as every task appeared in it; an incomplete tail (tasks exhausted)
    is merged into the last complete round. A plan with no complete round is one round.

    Args:
        plan: the task of every step.
        tasks: all the task names.
    """
    rounds: list[tuple[int, int]] = []
    start, seen = 0, set()
    wanted = set(tasks)
    for index, task in enumerate(plan):
        seen.add(task)
        if seen >= wanted:
            rounds.append((start, index + 1))
            start, seen = index + 1, set()
    if start < len(plan):
        if rounds:
            rounds[-1] = (rounds[-1][0], len(plan))
        else:
            rounds.append((start, len(plan)))
    return rounds
