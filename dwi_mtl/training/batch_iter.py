"""Resumable batch iterators for :func:`dwi_mtl.training.train_model` (deep_pipe style).

``Infinite(load_by_random_id(load_x, load_y, ids=ids, random_state=0), batch_size=32,
n_iters_per_epoch=100)`` is an endless, reproducible stream of ``(x_batch, y_batch)`` tuples cut
into epochs: calling it returns the batches of the next epoch. Both objects have
``state_dict()`` / ``load_state_dict()`` holding their position, so a run restored from a
checkpoint draws exactly the batches the uninterrupted run would have drawn. The random ids are
derived from ``(seed, block)`` with :func:`dwi_mtl.state.derive_generator`; nothing is drawn
from a global generator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dwi_mtl.errors import CheckpointError, ConfigError
from dwi_mtl.state import derive_generator

#: Number of ids drawn at once by :class:`RandomIdSource` (one derived generator per block).
ID_BLOCK_SIZE = 1024


class RandomIdSource:
    """An endless, seeded stream of ``loader(id)`` tuples for ids drawn with replacement.

    Built by :func:`load_by_random_id`; see there for the arguments.
    """

    def __init__(
        self,
        loaders: Sequence[Callable[[Any], Any]],
        ids: Sequence[Any],
        weights: Sequence[float] | None,
        seed: int,
    ) -> None:
        self.loaders = list(loaders)
        self.ids = list(ids)
        self.probabilities = (
            None if weights is None else np.asarray(weights, float) / np.sum(weights)
        )
        self.seed = seed
        self.position = 0
        self._block_index = -1
        self._block: np.ndarray = np.empty(0, dtype=np.int64)

    def _index_at(self, position: int) -> int:
        """Return the index (into ``ids``) drawn at ``position`` of the stream."""
        block_index, offset = divmod(position, ID_BLOCK_SIZE)
        if block_index != self._block_index:
            rng = derive_generator(self.seed, "load_by_random_id", block_index)
            self._block = rng.choice(len(self.ids), size=ID_BLOCK_SIZE, p=self.probabilities)
            self._block_index = block_index
        return int(self._block[offset])

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        identifier = self.ids[self._index_at(self.position)]
        self.position += 1
        loaded = tuple(loader(identifier) for loader in self.loaders)
        return loaded[0] if len(loaded) == 1 else loaded

    def state_dict(self) -> dict[str, Any]:
        """Return the seed and the number of items drawn so far."""
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream at the saved position."""
        self.seed = int(state["seed"])
        self.position = int(state["position"])
        self._block_index = -1


def load_by_random_id(
    *loaders: Callable[[Any], Any],
    ids: Sequence[Any],
    weights: Sequence[float] | None = None,
    random_state: int | None = None,
) -> RandomIdSource:
    """An endless stream of ``(loader_1(id), loader_2(id), ...)`` for randomly drawn ids.

    Args:
        *loaders: functions of an id (``dataset.load_image``, ``dataset.load_label``); with a
            single loader the stream yields its values, not 1-tuples.
        ids: the ids to draw from (with replacement).
        weights: optional sampling weights, one per id.
        random_state: the seed; None picks one from the OS, saved in the state so a resume
            still continues the same stream.

    Returns:
        A resumable iterator (``state_dict()`` holds the seed and the position).

    Raises:
        ConfigError: when no loader or no id is given, or the weights do not match the ids.
    """
    if not loaders or not all(callable(loader) for loader in loaders):
        raise ConfigError("load_by_random_id: give at least one loader function (callables)")
    ids = list(ids)
    if not ids:
        raise ConfigError("load_by_random_id: 'ids' is empty")
    if weights is not None:
        weights = list(weights)
        if len(weights) != len(ids) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"load_by_random_id: 'weights' must be {len(ids)} non-negative numbers with a "
                "positive sum"
            )
    if random_state is None:
        random_state = int.from_bytes(os.urandom(7), "little")
    elif isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise ConfigError(f"load_by_random_id: random_state must be an int, got {random_state!r}")
    return RandomIdSource(loaders, ids, weights, int(random_state))


def combine_to_arrays(items: Sequence[Any]) -> tuple[Any, ...]:
    """Stack a list of ``(x, y, ...)`` items into a tuple of arrays ``(xs, ys, ...)``."""
    if items and isinstance(items[0], tuple):
        return tuple(np.asarray(list(column)) for column in zip(*items))
    return (np.asarray(list(items)),)


class Infinite:
    """Cut an endless stream of items into batches and the batches into epochs.

    Args:
        source: an iterable of items (e.g. :func:`load_by_random_id`), or a function returning
            one. A source with ``state_dict()`` resumes exactly; a plain deterministic
            generator is resumed by replaying it from its start.
        *transformers: functions applied in order to each item.
        batch_size: items per batch.
        n_iters_per_epoch: batches per epoch.
        combiner: turns a list of items into the batch, a tuple passed as
            ``do_train_step(*batch)`` (default: stack each field into an array).

    Raises:
        ConfigError: for a non-positive ``batch_size`` / ``n_iters_per_epoch`` or a source that
            is not iterable.
    """

    def __init__(
        self,
        source: Any,
        *transformers: Callable[[Any], Any],
        batch_size: int,
        n_iters_per_epoch: int,
        combiner: Callable[[Sequence[Any]], tuple[Any, ...]] = combine_to_arrays,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("n_iters_per_epoch", n_iters_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"Infinite: '{name}' must be a positive integer, got {value!r}")
        if callable(source) and not hasattr(source, "__iter__"):
            source = source()
        if not hasattr(source, "__iter__"):
            raise ConfigError(f"Infinite: source must be iterable, got {type(source).__name__}")
        self.source = source
        self.transformers = transformers
        self.batch_size = int(batch_size)
        self.n_iters_per_epoch = int(n_iters_per_epoch)
        self.combiner = combiner
        self.iteration = 0
        self._drawn = 0
        self._stream: Iterator[Any] = iter(source)

    def _next_item(self) -> Any:
        """Draw and transform one item from the source."""
        try:
            item = next(self._stream)
        except StopIteration as exc:
            raise ConfigError("Infinite: the source ran out of items (it must be endless)") from exc
        self._drawn += 1
        for transform in self.transformers:
            item = transform(item)
        return item

    def __call__(self) -> Iterator[tuple[Any, ...]]:
        """Yield the remaining batches of the current epoch (all of them at an epoch start)."""
        while self.iteration < self.n_iters_per_epoch:
            batch = self.combiner([self._next_item() for _ in range(self.batch_size)])
            self.iteration += 1
            yield batch
        self.iteration = 0

    def __len__(self) -> int:
        return self.n_iters_per_epoch

    def __enter__(self) -> Infinite:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """Return the position in the epoch and in the source."""
        state: dict[str, Any] = {"iteration": self.iteration, "drawn": self._drawn}
        if hasattr(self.source, "state_dict"):
            state["source"] = self.source.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the saved position.

        Raises:
            CheckpointError: when a plain generator already went past the saved position
                (it cannot be rewound; pass a fresh one or a stateful source).
        """
        self.iteration = int(state["iteration"])
        drawn = int(state["drawn"])
        if "source" in state and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(state["source"])
            self._stream = iter(self.source)
        elif drawn >= self._drawn:
            for _ in range(drawn - self._drawn):
                next(self._stream)
        else:
            raise CheckpointError(
                f"Infinite: cannot rewind a plain generator from item {self._drawn} to {drawn}; "
                "use load_by_random_id or a source with state_dict()"
            )
        self._drawn = drawn



class EpochBatchSource:
    """Present a deep_pipe-style batch iterator as a batch source of the training engine.

    The engine's protocol (:mod:`dwi_mtl.training.batch_sources`) is ``begin(epoch, start)``,
    ``nb_batches``, ``state_dict()``, ``load_state_dict()``, ``close()``. An :class:`Infinite`
    (or any object with ``state_dict``) restores its own position, so ``begin`` just continues
    it; a plain callable with no state is called again and its first ``start`` batches are
    skipped, which is exact only when the callable is deterministic.

    Args:
        batch_iter: an :class:`Infinite` or a callable returning one epoch of batches.
    """

    def __init__(self, batch_iter: Callable[[], Any]) -> None:
        self.batch_iter = batch_iter
        self.consumed = 0

    @property
    def nb_batches(self) -> int | None:
        """Batches per epoch when the iterator knows it (``len(batch_iter)``)."""
        try:
            return len(self.batch_iter)  # type: ignore[arg-type]
        except TypeError:
            return None

    def begin(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Yield the batches of ``epoch`` from batch ``start`` on."""
        self.consumed = int(start)
        stateful = hasattr(self.batch_iter, "state_dict")
        iteration = getattr(self.batch_iter, "iteration", None)
        if stateful and iteration is not None and iteration != start:
            raise CheckpointError(
                f"batch_iter is at batch {iteration} of the epoch but the run resumes at batch "
                f"{start}: was batch_iter used elsewhere since the checkpoint?"
            )
        return self._iterate(iter(self.batch_iter()), 0 if stateful else start)

    def _iterate(self, iterator: Iterator[Any], skip: int) -> Iterator[Any]:
        for _ in range(skip):
            next(iterator)
        for batch in iterator:
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The consumed count and the iterator's own state, if it has one."""
        state: dict[str, Any] = {"consumed": self.consumed}
        if hasattr(self.batch_iter, "state_dict"):
            state["batch_iter"] = self.batch_iter.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the iterator's state (its position); ``begin`` then continues it."""
        self.consumed = int(state["consumed"])
        if "batch_iter" in state and hasattr(self.batch_iter, "load_state_dict"):
            self.batch_iter.load_state_dict(state["batch_iter"])

    def close(self) -> None:
        """Nothing to release."""


def as_batch_source(batch_iter: Any) -> Any:
    """Turn what ``train_model`` accepts as ``batch_iter`` into an engine batch source.

    Accepts an :class:`Infinite` (or any callable returning one epoch of batches), a
    ``(BatchSampler, BatchLoader)`` pair (its batches are ``StreamlineBatch`` objects), or
    an object already following the batch-source protocol.

    Raises:
        ConfigError: for anything else, naming the type received.
    """
    if isinstance(batch_iter, (tuple, list)) and len(batch_iter) == 2:
        sampler, loader = batch_iter
        if hasattr(sampler, "set_epoch") and hasattr(loader, "load_batch"):
            from dwi_mtl.training.batch_sources import SamplerLoaderSource

            return SamplerLoaderSource(sampler, loader, "training")
    if hasattr(batch_iter, "begin") and hasattr(batch_iter, "state_dict"):
        return batch_iter
    if callable(batch_iter):
        return EpochBatchSource(batch_iter)
    raise ConfigError(
        "batch_iter must be an Infinite, a callable returning an epoch of batches, or a "
        f"(BatchSampler, BatchLoader) pair; got {type(batch_iter).__name__}"
    )

