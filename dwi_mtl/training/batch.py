"""The objects that travel through the pipeline: :class:`BatchItem`, :class:`StreamlineBatch`.

``BatchSampler`` yields lists of :class:`BatchItem` (one per subject of a batch); the torch
DataLoader hands them, through worker processes, to ``BatchLoader.load_batch`` which returns a
:class:`StreamlineBatch` that a loss can use directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch


class BatchItem(tuple):
    """``(subject_index, streamline_ids)`` plus the batch's identity, picklable.

    Behaves as the plain 2-tuple of the public contract (``subject, ids = item``) and carries
    ``context``, ``epoch``, ``batch_index`` (the *global* batch index inside the epoch), so the
    loader can derive its randomness from them in any worker process.
    """

    context: str
    epoch: int
    batch_index: int

    def __new__(
        cls,
        subject_index: int,
        streamline_ids: np.ndarray,
        context: str = "training",
        epoch: int = 0,
        batch_index: int = 0,
    ) -> BatchItem:
        """Create an item; ``streamline_ids`` is stored as an int64 array."""
        item = super().__new__(cls, (int(subject_index), np.asarray(streamline_ids, np.int64)))
        item.context = context
        item.epoch = int(epoch)
        item.batch_index = int(batch_index)
        return item

    @property
    def subject_index(self) -> int:
        """Index of the subject in its subset."""
        return int(self[0])

    @property
    def streamline_ids(self) -> np.ndarray:
        """Streamline ids (indices in the subject's streamline group)."""
        return self[1]  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the extra attributes (DataLoader workers receive items pickled)."""
        args = (self[0], self[1], self.context, self.epoch, self.batch_index)
        return (BatchItem, args)

    def __repr__(self) -> str:
        """Short description (ids elided)."""
        return (
            f"BatchItem(subject={self[0]}, nb_ids={len(self[1])}, context={self.context!r}, "
            f"epoch={self.epoch}, batch_index={self.batch_index})"
        )


def _to(value: Any, fn: Any) -> Any:
    """Apply ``fn`` to a tensor, to every tensor of a dict, leave other values unchanged."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: _to(val, fn) for key, val in value.items()}
    return value


@dataclass
class StreamlineBatch:
    """A loaded batch of streamlines, packed, ready for a loss.

    Attributes:
        points: ``(P, 3)`` float32 packed points, voxel space, corner origin (after
            augmentation and input noise: the coordinates the inputs were read at).
        lengths: ``(N,)`` int64 points per streamline.
        subject_indices: ``(N,)`` int64 subject of each streamline (index in its subset).
        streamline_ids: ``(N,)`` int64 id of each streamline in its subject (both halves of a
            split streamline share their id).
        inputs: ``(P, F')`` float32 interpolated volume features (``F' = M * F`` with a
            neighbourhood of ``M`` points), or None when no input group is set or while
            interpolation is deferred to the training device.
        directions: ``(P - N, 3)`` float32 next-step vectors, packed per streamline
            (``lengths - 1`` each), computed from the target points (target noise included).
        data_per_streamline: ``{key: (N, ...) tensor}`` requested per-streamline data.
        context: ``"training"`` / ``"validation"`` / ``"testing"``.
        epoch: epoch the batch was planned for.
        batch_index: global batch index inside the epoch.
        needs_interpolation: True while inputs are still to be interpolated on the device.
    """

    points: torch.Tensor
    lengths: torch.Tensor
    subject_indices: torch.Tensor
    streamline_ids: torch.Tensor
    directions: torch.Tensor
    inputs: torch.Tensor | None = None
    data_per_streamline: dict[str, torch.Tensor] = field(default_factory=dict)
    context: str = "training"
    epoch: int = 0
    batch_index: int = 0
    needs_interpolation: bool = False

    @property
    def nb_streamlines(self) -> int:
        """Number of streamlines in the batch (after splitting)."""
        return int(self.lengths.shape[0])

    @property
    def nb_points(self) -> int:
        """Total number of points in the batch."""
        return int(self.points.shape[0])

    @property
    def streamlines(self) -> list[torch.Tensor]:
        """Per-streamline views ``(L_i, 3)`` of :attr:`points` (no copy)."""
        return list(torch.split(self.points, self.lengths.tolist()))

    @property
    def streamline_directions(self) -> list[torch.Tensor]:
        """Per-streamline views ``(L_i - 1, 3)`` of :attr:`directions`."""
        return list(torch.split(self.directions, (self.lengths - 1).clamp_min(0).tolist()))

    @property
    def streamline_inputs(self) -> list[torch.Tensor]:
        """Per-streamline views ``(L_i, F')`` of :attr:`inputs` (empty list without inputs)."""
        if self.inputs is None:
            return []
        return list(torch.split(self.inputs, self.lengths.tolist()))

    def _map(self, fn: Any) -> StreamlineBatch:
        """Return a copy with ``fn`` applied to every tensor."""
        values = {f.name: _to(getattr(self, f.name), fn) for f in fields(self)}
        return StreamlineBatch(**values)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StreamlineBatch:
        """Return the batch with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> StreamlineBatch:
        """Return the batch with pinned tensors (called by the DataLoader's pin_memory thread)."""
        return self._map(lambda t: t.pin_memory())
