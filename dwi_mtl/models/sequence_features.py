"""Per-point inputs of the tractography models: volume features + previous directions.

Learn2Track-style models read, at point ``i`` of a streamline, the volume features
interpolated there (and at its neighbourhood: the batch loader already concatenates them in
``inputs``) and, optionally, the ``k`` previous step directions ``normalize(p_i - p_{i-1})``,
``normalize(p_{i-1} - p_{i-2})``, ... (zeros before the first point). The same function serves
training (packed batches) and tracking (the last point of running streamlines), so a model
sees identical inputs in both.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def point_positions(lengths: Tensor) -> Tensor:
    """``(P,)`` index of every packed point inside its streamline."""
    starts = torch.cumsum(lengths, 0) - lengths
    owner = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device),
                                    lengths)
    return torch.arange(int(lengths.sum()), device=lengths.device) - starts[owner]


def last_point_mask(lengths: Tensor) -> Tensor:
    """``(P,)`` bool, True at the last point of each packed streamline."""
    mask = torch.zeros(int(lengths.sum()), dtype=torch.bool, device=lengths.device)
    mask[torch.cumsum(lengths, 0) - 1] = True
    return mask


def previous_directions(points: Tensor, lengths: Tensor, nb_previous: int) -> Tensor:
    """``(P, 3 * nb_previous)`` unit previous step directions of every packed point.

    Block ``j`` (0-based) of point ``i`` is ``normalize(p[i - j] - p[i - j - 1])`` when that
    step exists in the streamline, else zeros.
    """
    total = points.shape[0]
    if nb_previous == 0:
        return points.new_zeros((total, 0))
    position = point_positions(lengths)
    arrival = points.new_zeros((total, 3))
    if total > 1:
        arrival[1:] = nn.functional.normalize(points[1:] - points[:-1], dim=-1)
    arrival[position == 0] = 0.0
    blocks = []
    for j in range(nb_previous):
        block = points.new_zeros((total, 3))
        valid = position >= j + 1
        index = torch.nonzero(valid)[:, 0]
        block[index] = arrival[index - j]
        blocks.append(block)
    return torch.cat(blocks, dim=1)


def with_previous_directions(inputs: Tensor, points: Tensor | None, lengths: Tensor,
                             nb_previous: int) -> Tensor:
    """Concatenate ``inputs`` and the previous directions (``points`` needed when ``k > 0``)."""
    if nb_previous == 0:
        return inputs
    if points is None:
        from dwi_mtl.errors import DataError

        raise DataError(f"the model uses nb_previous_dirs={nb_previous}: pass the points")
    return torch.cat([inputs, previous_directions(points, lengths, nb_previous)], dim=1)
