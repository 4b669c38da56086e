"""Batch sources: where the training engine takes one phase's batches from, resumably.

A batch source plans an epoch deterministically from ``(seed, epoch)``, can start that plan at
any batch (``start``) *without drawing randomness for the skipped batches*, and reports its
state as if exactly the batches handed out so far had been consumed — whatever a DataLoader
prefetched beyond that. That is what makes a resume mid-epoch exact.

Protocol (duck-typed, see :class:`BatchSource`):

- ``begin(epoch, start) -> Iterator``: batches ``start, start+1, ...`` of ``epoch``'s plan;
- ``nb_batches -> int | None``: batches in the current epoch's plan (for progress and ETA);
- ``state_dict() / load_state_dict(state)``: position counted in *consumed* batches;
- ``close()``: stop workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from dwi_mtl.state import derive_generator


@runtime_checkable
class BatchSource(Protocol):
    """A resumable source of one phase's batches (see the module docstring)."""

    @property
    def nb_batches(self) -> int | None: ...

    def begin(self, epoch: int, start: int = 0) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MemoryBatchSource:
    """Batches held in memory, shuffled per epoch by a permutation derived from (seed, epoch).

    Used by tests, benchmarks and small experiments; the functional ``train_model`` API can
    wrap any list of batches with it.

    Args:
        batches: the batches (any objects the training step understands).
        seed: seed of the per-epoch permutations.
        shuffle: False keeps the given order every epoch.
    """

    def __init__(self, batches: Sequence[Any], seed: int = 1234, shuffle: bool = True) -> None:
        self.batches = list(batches)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.consumed = 0

    @property
    def nb_batches(self) -> int:
        return len(self.batches)

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.batches)))
        return [int(i) for i in derive_generator(self.seed, epoch).permutation(len(self.batches))]

    def begin(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Yield the epoch's batches from ``start`` (skipped ones are not even drawn)."""
        self.epoch, self.consumed = int(epoch), int(start)
        return self._iterate(self._order(epoch)[start:])

    def _iterate(self, order: list[int]) -> Iterator[Any]:
        for index in order:
            self.consumed += 1
            yield self.batches[index]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def close(self) -> None:
        """Nothing to release."""


class SamplerLoaderSource:
    """The dwi_mtl pipeline as a batch source: BatchSampler + BatchLoader through a DataLoader.

    Args:
        sampler: a :class:`~dwi_mtl.training.BatchSampler` (shared by both phases; this
            source sets its context before each epoch).
        loader: the :class:`~dwi_mtl.training.BatchLoader` whose ``load_batch`` is the
            collate_fn.
        context: ``"training"`` or ``"validation"``.
        num_workers: DataLoader worker processes (0 loads in the main process).
        device: the training device (pinned memory on CUDA).
    """

    def __init__(
        self, sampler: Any, loader: Any, context: str, num_workers: int = 0, device: Any = "cpu"
    ) -> None:
        self.sampler = sampler
        self.loader = loader
        self.context = context
        self.num_workers = int(num_workers)
        self.device = torch.device(device)
        self.consumed = 0
        self._sampler_state: dict[str, Any] | None = None
        self._dataloader: Any = None

    @property
    def nb_batches(self) -> int | None:
        """Batches planned for the current epoch of this source's context."""
        saved_context = self.sampler.context
        self.sampler.set_context(self.context)
        try:
            return int(self.sampler.nb_batches)
        finally:
            self.sampler.set_context(saved_context)

    def _get_dataloader(self) -> Any:
        if self._dataloader is None:
            from dwi_mtl.training.dataloaders import build_dataloader

            self._dataloader = build_dataloader(
                self.sampler, self.loader, num_workers=self.num_workers, device=self.device
            )
        return self._dataloader

    def begin(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Plan ``epoch`` in this context and yield its batches from ``start``."""
        self.sampler.set_context(self.context)
        self.sampler.set_epoch(epoch)
        self.sampler.position = int(start)
        self.consumed = int(start)
        # Creating a DataLoader iterator draws a base seed from the global torch RNG; fork it
        # so that the model-side random stream does not depend on where iterators are made.
        with torch.random.fork_rng(devices=[]):
            iterator = iter(self._get_dataloader())
        return self._iterate(iterator)

    def _iterate(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state with its position set to the *consumed* batch count."""
        saved_context = self.sampler.context
        self.sampler.set_context(self.context)
        saved_position = self.sampler.position
        self.sampler.position = self.consumed
        try:
            sampler_state = self.sampler.state_dict()
        finally:
            self.sampler.position = saved_position
            self.sampler.set_context(saved_context)
        loader_state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}
        return {"consumed": self.consumed, "sampler": sampler_state, "loader": loader_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the sampler (epochs and start cursors); :meth:`begin` sets the position."""
        self.consumed = int(state["consumed"])
        self.sampler.load_state_dict(state["sampler"])
        if state.get("loader") and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["loader"])

    def close(self) -> None:
        """Drop the DataLoader (and its persistent workers)."""
        self._dataloader = None
