"""Tracking by re-reading: the :class:`~dwi_mtl.tracking.Tracker` interface for any model that
predicts from whole packed streamlines.

A recurrent model carries its hidden state from one tracking step to the next; a model built
from an MTL architecture (:class:`~dwi_mtl.models.mtl_tracker.MTLTracker`: convolutions,
experts, gates, attention) has no such state. :class:`RereadTracking` keeps, for every running
streamline, its points and interpolated inputs so far, and at each step appends the new point
and runs the model's ``forward`` on the grown streamlines, reading its predictions at their
last points: ``O(L^2)`` per streamline, as a Transformer re-reads its context. The model must
be causal for the predictions to match training (a point's prediction depending only on the
points before it); with a non-causal part (the default gate of the mixture-of-experts
architectures, which sees the mean, first and last point of the whole streamline) tracking
reads it on the streamline so far, which is not what it saw in training.

The model recomputes previous directions (and reads coordinates) from the points it keeps,
so the tracker hands it the new points instead of previous directions
(:attr:`RereadTracking.track_with_points`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dwi_mtl.models.streamline_encoders import PackedStreamlines

#: The tracking state: ``(points (N, T, 3), inputs (N, T, F), lengths (N,))``, zero-padded
#: after each streamline's last point.
RereadState = tuple[Tensor, Tensor, Tensor]


class RereadTracking:
    """Mixin: ``start_tracking`` / ``track_step`` / ``select_state`` by re-reading.

    The class it is mixed into provides ``forward(batch) -> {name: prediction}`` on a
    :class:`~dwi_mtl.models.streamline_encoders.PackedStreamlines` batch and
    :meth:`tracking_outputs`, which keeps the predictions the tracker needs at the given
    packed rows (the streamlines' last points).
    """

    #: The tracker passes each step's new points to :meth:`track_step` (and no previous
    #: directions: the model derives them from the points it keeps).
    track_with_points = True

    def tracking_outputs(self, predictions: dict[str, Tensor], rows: Tensor) -> Any:
        """The predictions at packed ``rows`` that ``directions`` / ``stop_probability`` read."""
        raise NotImplementedError

    def start_tracking(self, inputs: Tensor, lengths: Tensor,
                       points: Tensor) -> tuple[Any, RereadState]:
        """Read the packed seed sequences; return the outputs at their last points and the
        state (their points and inputs, padded)."""
        steps = torch.arange(int(lengths.max()), device=points.device)
        mask = steps[None, :] < lengths.to(points.device)[:, None]
        padded_points = points.new_zeros((*mask.shape, 3))
        padded_inputs = inputs.new_zeros((*mask.shape, inputs.shape[1]))
        padded_points[mask], padded_inputs[mask] = points, inputs
        state = (padded_points, padded_inputs, lengths.to(points.device).clone())
        return self._read(state), state

    def track_step(self, inputs: Tensor, previous: Tensor, state: RereadState, *,
                   points: Tensor) -> tuple[Any, RereadState]:
        """Append one point (``(N, 3)`` coordinates, ``(N, F)`` inputs) to every streamline
        and re-read them; ``previous`` (``(N, 0)``: no previous directions) is not used."""
        padded_points, padded_inputs, lengths = state
        rows = torch.arange(lengths.shape[0], device=lengths.device)
        if int(lengths.max()) >= padded_points.shape[1]:  # grow the padding by one step
            padded_points = torch.cat([padded_points, padded_points.new_zeros(
                padded_points.shape[0], 1, 3)], dim=1)
            padded_inputs = torch.cat([padded_inputs, padded_inputs.new_zeros(
                padded_inputs.shape[0], 1, padded_inputs.shape[2])], dim=1)
        padded_points[rows, lengths] = points
        padded_inputs[rows, lengths] = inputs
        state = (padded_points, padded_inputs, lengths + 1)
        return self._read(state), state

    def select_state(self, state: RereadState, index: Tensor) -> RereadState:
        """Keep the streamlines ``index`` (the others stopped), trimmed to the longest."""
        padded_points, padded_inputs, lengths = state
        lengths = lengths[index]
        longest = int(lengths.max()) if lengths.numel() else 0
        return padded_points[index, :longest], padded_inputs[index, :longest], lengths

    def _read(self, state: RereadState) -> Any:
        padded_points, padded_inputs, lengths = state
        steps = torch.arange(padded_points.shape[1], device=lengths.device)
        mask = steps[None, :] < lengths[:, None]
        batch = PackedStreamlines(padded_points[mask], lengths, padded_inputs[mask])
        predictions = self(batch)  # type: ignore[operator]
        clear = getattr(self, "clear_representation", None)
        if callable(clear):
            clear()  # a rep_grad model records its representation at every forward
        return self.tracking_outputs(predictions, torch.cumsum(lengths, 0) - 1)
