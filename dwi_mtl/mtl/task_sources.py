"""Batch sources of the MTLTrainer: per-task data, interleaved or sequential, resumable.

The engine (:mod:`dwi_mtl.training.loop`) takes one batch source per phase. The MTLTrainer
builds them from its tasks' own sources:

- :class:`ScheduledSource` (training): the tasks' batches interleaved by a task sampler
  (:mod:`dwi_mtl.mtl.scheduling`); each engine batch is a :class:`ScheduledStep` holding one
  task's batch, or a whole round of them when a weighting combines the round's losses;
- :class:`JointSource` (tasks sharing inputs): every batch serves every task; in training,
  and in validation when the tasks also share their validation data (``schedule="joint"``):
  every task is validated on the same batches in one pass, read once, with one cursor;
- :class:`SequentialSource` (validation): each task's validation batches in turn, so the
  engine's validation phase validates every task independently and a resume in the middle of
  it continues at the right task and batch.

The validation sources take a *per-task* cap (``max_batches``): at most that many batches of
each task (a joint batch counts once for every task), unlike the engine's phase cap, which
counts the phase's batches across all tasks.

Positioning is exact: a plan is a pure function of ``(seed, epoch, sizes)``, so ``begin(epoch,
start)`` recomputes which task batches the first ``start`` steps consumed and starts each
task's source there (skipped batches are never drawn). :class:`DatasetSource` turns a torch
``Dataset`` into such a source (order derived from ``(seed, epoch)``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset, default_collate

from dwi_mtl.errors import CheckpointError, ConfigError
from dwi_mtl.mtl.scheduling import TaskSampler, split_rounds
from dwi_mtl.state import derive_generator


@dataclass
class ScheduledStep:
    """One engine batch of the MTLTrainer.

    Attributes:
        items: ``(task name, batch)`` pairs computed in this step.
        round_end: the step closes a round (the optimizer steps after it).
    """

    items: list[tuple[str, Any]] = field(default_factory=list)
    round_end: bool = True


def planned_size(source: Any, epoch: int) -> int:
    """Number of batches ``source`` yields in ``epoch`` (planning the epoch when needed).

    Raises:
        ConfigError: when the source cannot tell its number of batches.
    """
    sampler, context = getattr(source, "sampler", None), getattr(source, "context", None)
    if sampler is not None and context is not None and hasattr(sampler, "set_epoch"):
        sampler.set_context(context)
        sampler.set_epoch(epoch)
        return int(sampler.nb_batches)
    size = source.nb_batches
    if size is None:
        raise ConfigError(f"{type(source).__name__} does not know its number of batches")
    return int(size)


class DatasetSource:
    """A torch ``Dataset`` as a resumable batch source (order derived from ``(seed, epoch)``).

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch.
        shuffle: a new permutation every epoch (else the dataset order).
        seed: seed of the permutations.
        collate_fn: turns a list of samples into a batch (torch's ``default_collate``).
        drop_last: drop the last incomplete batch.
        indices: the subset of the dataset to use (a validation split), None: all.
    """

    def __init__(
        self, dataset: Any, batch_size: int, shuffle: bool = True, seed: int = 1234,
        collate_fn: Any = None, drop_last: bool = False, indices: Sequence[int] | None = None,
    ) -> None:
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.collate_fn = collate_fn or default_collate
        self.drop_last = drop_last
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.epoch = 0
        self.consumed = 0

    @property
    def nb_batches(self) -> int:
        count = len(self.indices) / self.batch_size
        return int(count) if self.drop_last else math.ceil(count)

    def _batch_indices(self, epoch: int) -> list[np.ndarray]:
        order = np.asarray(self.indices, dtype=np.int64)
        if self.shuffle:
            order = order[derive_generator(self.seed, "dataset_source", epoch).permutation(
                len(order))]
        size = self.batch_size
        return [order[i * size:(i + 1) * size] for i in range(self.nb_batches)]

    def begin(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Yield ``epoch``'s batches from ``start``."""
        self.epoch, self.consumed = int(epoch), int(start)
        return self._iterate(self._batch_indices(epoch)[start:])

    def _iterate(self, batches: list[np.ndarray]) -> Iterator[Any]:
        fast = isinstance(self.dataset, TensorDataset) and self.collate_fn is default_collate
        for indices in batches:
            if fast:  # one indexing per tensor instead of a stack of single samples
                batch: Any = list(self.dataset[torch.from_numpy(indices)])
            else:
                batch = self.collate_fn([self.dataset[int(i)] for i in indices])
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def close(self) -> None:
        """Nothing to release."""


class _MultiSource:
    """Common part: named task sources, state of all of them, the current epoch's steps."""

    def __init__(self, sources: Mapping[str, Any]) -> None:
        self.sources = dict(sources)
        self.epoch = 0
        self.consumed = 0
        self._nb_steps: int | None = None

    @property
    def nb_batches(self) -> int | None:
        return self._nb_steps

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "consumed": self.consumed,
            "sources": {name: src.state_dict() for name, src in self.sources.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the positions; the saved sources must be this source's.

        Raises:
            CheckpointError: when the checkpoint's sources are others (another schedule,
                other tasks, or joint validation against validation in turn): its positions
                would not mean the same batches.
        """
        saved = state["sources"]
        if set(saved) != set(self.sources):
            raise CheckpointError(
                f"the checkpoint's batch sources {sorted(saved)} are not this run's "
                f"{sorted(self.sources)} (another schedule, other tasks, or joint validation "
                f"against validation in turn): it cannot be resumed exactly")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        for name, src in self.sources.items():
            src.load_state_dict(saved[name])

    def close(self) -> None:
        for src in self.sources.values():
            src.close()


class ScheduledSource(_MultiSource):
    """Interleave the tasks' training batches by a task sampler (see the module docstring).

    Args:
        sources: ``{task: batch source}`` in task order.
        sampler: the task sampler.
        group_rounds: yield one :class:`ScheduledStep` per round (all its batches) instead of
            one per task batch.
    """

    def __init__(
        self, sources: Mapping[str, Any], sampler: TaskSampler, group_rounds: bool = False
    ) -> None:
        super().__init__(sources)
        self.sampler = sampler
        self.group_rounds = group_rounds
        self.last_plan: list[str] = []

    def steps(self, epoch: int) -> tuple[list[str], list[tuple[int, int]]]:
        """The epoch's plan and its steps as ``[start, stop)`` spans of the plan."""
        sizes = {task: planned_size(src, epoch) for task, src in self.sources.items()}
        plan = self.sampler.plan(epoch, sizes)
        rounds = split_rounds(plan, list(self.sources))
        if self.group_rounds:
            return plan, rounds
        return plan, [(i, i + 1) for i in range(len(plan))]

    def begin(self, epoch: int, start: int = 0) -> Iterator[ScheduledStep]:
        """Yield ``epoch``'s steps from step ``start``."""
        plan, spans = self.steps(epoch)
        round_ends = {stop for _, stop in split_rounds(plan, list(self.sources))}
        self.epoch, self.consumed, self._nb_steps = int(epoch), int(start), len(spans)
        self.last_plan = plan
        offset = spans[start][0] if start < len(spans) else len(plan)
        iterators = {
            task: src.begin(epoch, plan[:offset].count(task))
            for task, src in self.sources.items()
        }
        return self._iterate(plan, spans[start:], round_ends, iterators)

    def _iterate(
        self, plan: list[str], spans: list[tuple[int, int]], round_ends: set[int],
        iterators: dict[str, Iterator[Any]],
    ) -> Iterator[ScheduledStep]:
        for first, stop in spans:
            items = [(plan[i], next(iterators[plan[i]])) for i in range(first, stop)]
            self.consumed += 1
            yield ScheduledStep(items, stop in round_ends)


class JointSource(_MultiSource):
    """One source whose batches serve every task (tasks sharing their inputs).

    Args:
        source: the shared batch source.
        tasks: the task names.
        max_batches: at most this many batches per epoch (None: all); the validation cap
            per task, since every batch serves every task.
    """

    def __init__(
        self, source: Any, tasks: Sequence[str], max_batches: int | None = None
    ) -> None:
        super().__init__({"joint": source})
        self.tasks = list(tasks)
        self.max_batches = max_batches

    def begin(self, epoch: int, start: int = 0) -> Iterator[ScheduledStep]:
        """Yield ``epoch``'s batches from ``start``, each for every task."""
        self.epoch, self.consumed = int(epoch), int(start)
        self._nb_steps = capped(planned_size(self.sources["joint"], epoch), self.max_batches)
        if start >= self._nb_steps:
            return iter(())
        iterator = self.sources["joint"].begin(epoch, start)
        return self._iterate(iterator, self._nb_steps - int(start))

    def _iterate(self, iterator: Iterator[Any], count: int) -> Iterator[ScheduledStep]:
        for batch in itertools.islice(iterator, count):
            self.consumed += 1
            yield ScheduledStep([(task, batch) for task in self.tasks], True)


class SequentialSource(_MultiSource):
    """Each task's batches in turn (validation): task A's, then task B's, ...

    Args:
        sources: ``{task: validation batch source}`` in task order.
        max_batches: at most this many batches of *each* task per epoch (None: all).
    """

    def __init__(self, sources: Mapping[str, Any], max_batches: int | None = None) -> None:
        super().__init__(sources)
        self.max_batches = max_batches

    def begin(self, epoch: int, start: int = 0) -> Iterator[ScheduledStep]:
        """Yield ``epoch``'s validation batches of every task from global batch ``start``."""
        sizes = {task: capped(planned_size(src, epoch), self.max_batches)
                 for task, src in self.sources.items()}
        self.epoch, self.consumed, self._nb_steps = int(epoch), int(start), sum(sizes.values())
        return self._iterate(epoch, sizes, int(start))

    def _iterate(self, epoch: int, sizes: dict[str, int], start: int) -> Iterator[ScheduledStep]:
        for task, size in sizes.items():
            if start >= size:
                start -= size
                continue
            batches = self.sources[task].begin(epoch, start)
            for batch in itertools.islice(batches, size - start):
                self.consumed += 1
                yield ScheduledStep([(task, batch)], True)
            start = 0


def capped(size: int, cap: int | None) -> int:
    """``size`` limited to ``cap`` (None: no limit)."""
    return size if cap is None else min(size, int(cap))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch (tensor, object with ``.to``, or tuple/list/dict of them) to ``device``."""
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch
