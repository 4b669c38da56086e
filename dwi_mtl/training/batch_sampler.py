"""BatchSampler: plans reproducible, resumable, shardable batches of streamline ids.

The sampler yields, for each batch, ``[BatchItem(subject_index, streamline_ids), ...]`` under a
budget in number of streamlines, number of points (after the loader's resampling, predicted
from the stored lengths) or length in mm. Each epoch of a context (training / validation) is
*planned* from ``(seed, context, epoch)`` and the pool cursor where the previous epoch of that
context stopped (see :mod:`dwi_mtl.training.batch_planning`), so:

- the same seed gives the same batches, whatever the DataLoader workers or prefetching;
- ``state_dict()`` holds, per context, the epoch, the cursor at the epoch's start and the
  ``position`` (batches consumed); a rebuilt sampler re-plans only that epoch and yields
  exactly the remaining batches;
- with ``rank`` / ``world_size`` each rank plans the same global batches and keeps its shard,
  so the global batch sequence does not depend on ``world_size``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from dwi_mtl.errors import ConfigError
from dwi_mtl.training.batch import BatchItem
from dwi_mtl.training.batch_planning import (
    Cursor,
    PassCache,
    PlannedBatch,
    Pool,
    build_pool,
    plan_epoch,
)
from dwi_mtl.training.batch_planning import shard as shard_batch
from dwi_mtl.training.batch_validation import check_sampler_args, json_value

logger = logging.getLogger(__name__)

CONTEXTS = ("training", "validation")


class _ContextState:
    """Planning state of one context: epoch, cursor at its start, plan, position."""

    def __init__(self, pool: Pool, cache: PassCache) -> None:
        self.pool = pool
        self.cache = cache
        self.epoch: int | None = None
        self.start = pool.initial_cursor()
        self.position = 0
        self.plan: list[PlannedBatch] | None = None
        self.end: Cursor | None = None


class BatchSampler(Sampler[list[BatchItem]]):
    """Batch sampler over a ``MultiSubjectDataset``'s training and validation subsets.

    Args:
        dataset: a ``MultiSubjectDataset`` (built object; not part of :meth:`get_config`).
        streamline_group: the streamline group whose ids are sampled.
        batch_size_training: budget of a training batch, in ``batch_size_units``.
        batch_size_validation: budget of a validation batch (default: the training one).
        batch_size_units: ``"nb_streamlines"``, ``"nb_points"`` or ``"length_mm"``.
        nb_subjects_per_batch: draw each batch from this many subjects (weighted by their
            remaining streamlines); None mixes all subjects.
        cycles: with ``nb_subjects_per_batch``, keep the chosen subjects this many batches.
        max_batches_per_epoch_training: cap on training batches per epoch; the next epoch
            continues through the pool where this one stopped.
        max_batches_per_epoch_validation: same for validation.
        step_size: the loader's resampling step (for ``"nb_points"`` budgets).
        nb_points: the loader's fixed number of points (for ``"nb_points"`` budgets).
        seed: base seed of every random choice.
        rank: this process's rank for distributed training.
        world_size: number of ranks; each global batch is split between them.

    Raises:
        ConfigError: naming the argument, for any invalid value (see the issue's list).
    """

    def __init__(
        self,
        dataset: Any,
        streamline_group: str,
        batch_size_training: float,
        batch_size_validation: float | None = None,
        batch_size_units: str = "nb_streamlines",
        nb_subjects_per_batch: int | None = None,
        cycles: int | None = None,
        max_batches_per_epoch_training: int | None = None,
        max_batches_per_epoch_validation: int | None = None,
        step_size: float | None = None,
        nb_points: int | None = None,
        seed: int = 1234,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._config: dict[str, Any] = {
            "streamline_group": streamline_group,
            "batch_size_training": batch_size_training,
            "batch_size_validation": batch_size_validation,
            "batch_size_units": batch_size_units,
            "nb_subjects_per_batch": nb_subjects_per_batch,
            "cycles": cycles,
            "max_batches_per_epoch_training": max_batches_per_epoch_training,
            "max_batches_per_epoch_validation": max_batches_per_epoch_validation,
            "step_size": step_size,
            "nb_points": nb_points,
            "seed": seed,
            "rank": rank,
            "world_size": world_size,
        }
        check_sampler_args(dataset, self._config)
        self.dataset = dataset
        self.streamline_group = streamline_group
        self.batch_size_units = batch_size_units
        self.budgets = {
            "training": float(batch_size_training),
            "validation": float(
                batch_size_training if batch_size_validation is None else batch_size_validation
            ),
        }
        self.max_batches = {
            "training": max_batches_per_epoch_training,
            "validation": max_batches_per_epoch_validation,
        }
        self.nb_subjects_per_batch = nb_subjects_per_batch
        self.cycles = cycles or 1
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self._states: dict[str, _ContextState] = {}
        for context in CONTEXTS:
            pool = build_pool(dataset, getattr(dataset, context), streamline_group,
                              batch_size_units, step_size, nb_points,
                              per_subject=nb_subjects_per_batch is not None)
            self._check_budget(context, pool)
            self._states[context] = _ContextState(pool, PassCache(pool, self.seed, context))
        self._context = "training"

    # -- construction helpers -----------------------------------------------------------
    def _check_budget(self, context: str, pool: Pool) -> None:
        """Refuse a budget smaller than the heaviest streamline of the context."""
        heaviest = max((float(w.max()) for w in pool.weights if len(w)), default=0.0)
        if self.budgets[context] < heaviest:
            raise ConfigError(
                f"batch_size_{context}={self.budgets[context]:g} {self.batch_size_units} is "
                f"smaller than one streamline of the {context} set ({heaviest:g} "
                f"{self.batch_size_units}); increase batch_size_{context}"
            )

    # -- context and epoch --------------------------------------------------------------
    @property
    def context(self) -> str:
        """The current context (``"training"`` or ``"validation"``)."""
        return self._context

    def set_context(self, context: str) -> None:
        """Switch to the ``"training"`` or ``"validation"`` context (each keeps its own state)."""
        if context not in CONTEXTS:
            raise ConfigError(f"context must be one of {CONTEXTS}, got {context!r}")
        self._context = context

    @property
    def epoch(self) -> int:
        """The current context's epoch (0 before any :meth:`set_epoch`)."""
        return self._states[self._context].epoch or 0

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch`` of the current context and rewind ``position`` to 0.

        Setting the epoch the context is already at keeps its position (so a trainer may call
        it after :meth:`load_state_dict`). Moving to the next epoch continues from the end
        cursor of the current one; any other jump re-plans the epochs before it from scratch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"set_epoch: epoch must be an integer >= 0, got {epoch!r}")
        state = self._states[self._context]
        epoch = int(epoch)
        if state.epoch == epoch:
            return
        if state.epoch is not None and epoch == state.epoch + 1:
            start = self._ensure_plan(state)
        else:
            state.start = state.pool.initial_cursor()
            if epoch > 0:
                logger.debug("re-planning %d %s epochs", epoch, self._context)
            for past in range(epoch):
                _, state.start = self._plan(state.start, past)
            start = state.start
        state.epoch, state.start, state.position = epoch, start, 0
        state.plan = state.end = None

    def _plan(self, start: Cursor, epoch: int) -> tuple[list[PlannedBatch], Cursor]:
        """Plan one epoch of the current context from ``start``."""
        state = self._states[self._context]
        return plan_epoch(
            state.pool,
            state.cache,
            start,
            epoch,
            self.budgets[self._context],
            self.nb_subjects_per_batch,
            self.cycles,
            self.max_batches[self._context],
        )

    def _ensure_plan(self, state: _ContextState) -> Cursor:
        """Plan the current epoch if needed; return its end cursor."""
        if state.epoch is None:
            state.epoch = 0
        if state.plan is None or state.end is None:
            state.plan, state.end = self._plan(state.start, state.epoch)
        return state.end

    # -- iteration ------------------------------------------------------------------------
    @property
    def nb_batches(self) -> int:
        """Total number of batches planned for the current epoch of the current context."""
        state = self._states[self._context]
        self._ensure_plan(state)
        return len(state.plan or [])

    @property
    def position(self) -> int:
        """Batches of the current epoch already yielded (or consumed, when set by a trainer)."""
        return self._states[self._context].position

    @position.setter
    def position(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"position must be an integer >= 0, got {value!r}")
        self._states[self._context].position = int(value)

    def __len__(self) -> int:
        """Number of batches still to yield in the current epoch."""
        return max(self.nb_batches - self.position, 0)

    def __iter__(self) -> Iterator[list[BatchItem]]:
        """Yield this rank's share of each remaining batch, advancing :attr:`position`.

        The context and epoch are captured when ``iter()`` is called, so an iterator created
        for one context keeps yielding that context's batches after :meth:`set_context`.
        """
        state = self._states[self._context]
        self._ensure_plan(state)
        return self._iterate(state, self._context, state.epoch or 0, state.plan or [])

    def _iterate(self, state: _ContextState, context: str, epoch: int,
                 plan: list[PlannedBatch]) -> Iterator[list[BatchItem]]:
        """Generator behind :meth:`__iter__`."""
        while state.position < len(plan) and state.plan is plan:
            index = state.position
            state.position += 1
            part = shard_batch(plan[index], state.pool, self.rank, self.world_size)
            yield [BatchItem(s, ids, context, epoch, index) for s, ids in part]

    def planned_batch(self, batch_index: int) -> list[BatchItem]:
        """Return the *global* (unsharded) batch ``batch_index`` of the current epoch."""
        state = self._states[self._context]
        self._ensure_plan(state)
        plan = state.plan or []
        return [
            BatchItem(s, ids, self._context, state.epoch or 0, batch_index)
            for s, ids in plan[batch_index]
        ]

    # -- configuration and state ----------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """The JSON-able constructor arguments (without the dataset)."""
        return {key: json_value(value) for key, value in self._config.items()}

    def state_dict(self) -> dict[str, Any]:
        """Current context and, per context, epoch, cursor at the epoch's start and position."""
        return {
            "context": self._context,
            "contexts": {
                name: {
                    "epoch": state.epoch,
                    "start_cursor": state.start.to_state(),
                    "position": state.position,
                }
                for name, state in self._states.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the epochs are re-planned from their start cursors."""
        try:
            context = state["context"]
            saved = state["contexts"]
            for name in CONTEXTS:
                self._states[name].epoch = saved[name]["epoch"]
                self._states[name].start = Cursor.from_state(saved[name]["start_cursor"])
                self._states[name].position = int(saved[name]["position"])
                self._states[name].plan = self._states[name].end = None
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"BatchSampler.load_state_dict: malformed state ({exc!r})") from exc
        self.set_context(context)
