"""A random validation split of streamlines for tasks fed by a (BatchSampler, BatchLoader) pair.

When a task's HDF5 dataset has no validation subjects and no validation data is given, a
fraction of every training subject's streamlines is held out, drawn from
``derive_generator(split_seed, "validation_split", subject)``:

- training: the pair's own batches, with the held-out ids removed from each batch before it
  is read (:class:`HoldOutLoader`; a batch made only of held-out streamlines becomes None and
  the trainer skips it);
- validation: the held-out streamlines in fixed batches (:class:`HeldOutSource`), read
  *without* training augmentation (the loader sees them in the ``"validation"`` context,
  served from the training subset).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dwi_mtl.state import derive_generator
from dwi_mtl.training.batch import BatchItem


def draw_held_out(subset: Any, group: str, fraction: float, seed: int) -> list[np.ndarray]:
    """Boolean masks (one per subject of ``subset``): True for the held-out streamlines."""
    masks = []
    for subject in range(len(subset)):
        count = subset.nb_streamlines(subject, group)
        mask = np.zeros(count, dtype=bool)
        order = derive_generator(seed, "validation_split", subject).permutation(count)
        mask[order[: int(round(fraction * count))]] = True
        masks.append(mask)
    return masks


class HoldOutLoader:
    """A BatchLoader that drops the held-out streamlines from every training batch.

    Args:
        loader: the task's BatchLoader.
        held_out: one mask per training subject (True: held out).
    """

    def __init__(self, loader: Any, held_out: Sequence[np.ndarray]) -> None:
        self.loader = loader
        self.held_out = list(held_out)

    def load_batch(self, items: Sequence[BatchItem]) -> Any:
        """Load the batch without its held-out streamlines (None when nothing is left)."""
        kept = []
        for item in items:
            ids = item.streamline_ids[~self.held_out[item.subject_index][item.streamline_ids]]
            if len(ids):
                kept.append(BatchItem(item.subject_index, ids, item.context, item.epoch,
                                      item.batch_index))
        return self.loader.load_batch(kept) if kept else None

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)


class _TrainingAsValidation:
    """A dataset view whose ``validation`` subset is the real training subset."""

    def __init__(self, dataset: Any) -> None:
        self._dataset = dataset

    @property
    def validation(self) -> Any:
        return self._dataset.training

    def __getattr__(self, name: str) -> Any:
        if name == "_dataset":
            raise AttributeError(name)
        return getattr(self._dataset, name)


class HeldOutSource:
    """The held-out streamlines as validation batches of ``batch_size`` streamlines.

    Args:
        loader: the task's BatchLoader (a shallow copy reads the training subset in the
            validation context, so no augmentation applies).
        held_out: one mask per training subject.
        batch_size: streamlines per validation batch.
    """

    def __init__(self, loader: Any, held_out: Sequence[np.ndarray], batch_size: int) -> None:
        self.loader = copy.copy(loader)
        self.loader.dataset = _TrainingAsValidation(loader.dataset)
        self.chunks: list[tuple[int, np.ndarray]] = []
        for subject, mask in enumerate(held_out):
            ids = np.flatnonzero(mask)
            for start in range(0, len(ids), max(1, int(batch_size))):
                self.chunks.append((subject, ids[start:start + int(batch_size)]))
        self.epoch = 0
        self.consumed = 0

    @property
    def nb_batches(self) -> int:
        return len(self.chunks)

    def begin(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """Yield the held-out batches from ``start`` (the same every epoch)."""
        self.epoch, self.consumed = int(epoch), int(start)
        return self._iterate(int(epoch), int(start))

    def _iterate(self, epoch: int, start: int) -> Iterator[Any]:
        for index in range(start, len(self.chunks)):
            subject, ids = self.chunks[index]
            batch = self.loader.load_batch([BatchItem(subject, ids, "validation", epoch, index)])
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def close(self) -> None:
        """Nothing to release."""
