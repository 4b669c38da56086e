"""A causal per-point encoder of packed streamlines: the shared encoder of
:class:`~dwi_mtl.models.mtl_tracker.MTLTracker`.

A tracker predicts the next step at every point from what it has seen so far, so its encoder
must be *causal*: the features at point ``i`` may depend on points ``0..i`` only, never on the
points that follow (they hold the answer). :class:`CausalSequenceEncoder` is an
``nn.Sequential`` of named stages, so the staged MTL architectures (Cross_stitch, MTAN, PLE)
can act between them:

- ``pad``: packed per-point features (plus, optionally, the directions of the previous steps)
  to zero-padded ``(N, F, L)`` (as
  :class:`~dwi_mtl.models.streamline_encoders.StreamlineEncoder`);
- ``conv1..k``: masked 1D convolutions looking backwards only (left padding), ``(N, C, L)``;
- ``gru``: a GRU along each streamline, ``(N, C, L)`` (optional);
- ``points``: back to packed per-point features ``(P, C)``.

Every stage is point-wise or backward-looking, so the whole encoder is causal.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dwi_mtl.errors import ConfigError
from dwi_mtl.models.sequence_features import with_previous_directions
from dwi_mtl.models.streamline_encoders import PackedStreamlines, PackedToPadded, _BatchContext


class PreviousStepsPadding(PackedToPadded):
    """Stage ``pad`` that first appends each point's ``k`` previous step directions to its
    inputs (:func:`~dwi_mtl.models.sequence_features.previous_directions`: past points only)."""

    def __init__(self, context: _BatchContext, in_features: int, use_points: bool,
                 nb_previous_dirs: int) -> None:
        super().__init__(context, in_features, use_points)
        self.nb_previous_dirs = nb_previous_dirs

    def forward(self, batch: Any) -> Tensor:
        """Pad the batch's features with the previous directions appended."""
        inputs = getattr(batch, "inputs", None)
        if self.nb_previous_dirs and isinstance(inputs, Tensor):
            steps = with_previous_directions(inputs, batch.points, batch.lengths,
                                             self.nb_previous_dirs)
            batch = PackedStreamlines(batch.points, batch.lengths, steps)
        return super().forward(batch)


class CausalConv1d(nn.Module):
    """Stage ``conv<i>``: 1D convolution over the current and previous points, ReLU, masked."""

    def __init__(
        self, context: _BatchContext, in_channels: int, out_channels: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.context = context
        self.left = kernel_size - 1
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``(N, C_in, L)`` into ``(N, C_out, L)``; output ``i`` sees inputs ``<= i``."""
        _, mask, _ = self.context.require()
        padded = nn.functional.pad(x, (self.left, 0))
        return torch.relu(self.conv(padded)) * mask


class SequenceGRU(nn.Module):
    """Stage ``gru``: a GRU along each streamline, ``(N, C_in, L)`` -> ``(N, H, L)`` (masked)."""

    def __init__(
        self, context: _BatchContext, in_channels: int, hidden_size: int, nb_layers: int
    ) -> None:
        super().__init__()
        self.context = context
        self.gru = nn.GRU(in_channels, hidden_size, nb_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        """Run the GRU over the valid points of every streamline (padding stays zero)."""
        lengths, mask, _ = self.context.require()
        packed = pack_padded_sequence(
            x.transpose(1, 2), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        output, _ = self.gru(packed)
        padded, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[2])
        return padded.transpose(1, 2) * mask


class PaddedToPoints(nn.Module):
    """Stage ``points``: padded ``(N, C, L)`` -> packed per-point ``(P, C)``."""

    def __init__(self, context: _BatchContext) -> None:
        super().__init__()
        self.context = context

    def forward(self, x: Tensor) -> Tensor:
        """Gather the valid positions, streamline after streamline."""
        _, _, (segment, position) = self.context.require()
        return x.transpose(1, 2)[segment, position]


class CausalSequenceEncoder(nn.Sequential):
    """Encode packed streamlines into causal per-point features ``(P, out_features)``.

    Args:
        in_features: features per point: F for the batch's ``inputs``, plus 3 with
            ``use_points`` and ``3 * nb_previous_dirs`` (3 alone when batches have no inputs).
        hidden_size: channels of every convolution and of the GRU.
        nb_conv_layers: number of backward-looking convolution stages (0 allowed).
        kernel_size: points each convolution sees (the current one and ``kernel_size - 1``
            before it).
        nb_gru_layers: stacked GRU layers of the ``gru`` stage (0: no GRU stage).
        use_points: concatenate the coordinates to ``inputs`` when a batch has inputs.
        nb_previous_dirs: append the unit directions of the ``k`` steps that led to each point
            (zeros where the streamline has fewer): what a tracker knows of its own path.

    Raises:
        ConfigError: for non-positive sizes, or no convolution and no GRU.
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int = 32,
        nb_conv_layers: int = 1,
        kernel_size: int = 3,
        nb_gru_layers: int = 1,
        use_points: bool = False,
        nb_previous_dirs: int = 0,
    ) -> None:
        _check_arguments(in_features, hidden_size, nb_conv_layers, kernel_size, nb_gru_layers,
                         nb_previous_dirs)
        context = _BatchContext()
        stages: dict[str, nn.Module] = {
            "pad": PreviousStepsPadding(context, in_features, use_points, nb_previous_dirs)}
        channels = in_features
        for index in range(nb_conv_layers):
            stages[f"conv{index + 1}"] = CausalConv1d(context, channels, hidden_size, kernel_size)
            channels = hidden_size
        if nb_gru_layers:
            stages["gru"] = SequenceGRU(context, channels, hidden_size, nb_gru_layers)
            channels = hidden_size
        stages["points"] = PaddedToPoints(context)
        super().__init__(OrderedDict(stages))
        self.out_features = channels
        self.config: dict[str, Any] = {
            "in_features": in_features, "hidden_size": hidden_size,
            "nb_conv_layers": nb_conv_layers, "kernel_size": kernel_size,
            "nb_gru_layers": nb_gru_layers, "use_points": bool(use_points),
            "nb_previous_dirs": nb_previous_dirs,
        }

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (JSON-able), to rebuild the encoder."""
        return dict(self.config)


def _check_arguments(
    in_features: int, hidden: int, nb_conv: int, kernel: int, nb_gru: int, nb_previous: int
) -> None:
    """Validate the encoder's constructor arguments, naming the bad one."""
    for name, value, minimum in (
        ("in_features", in_features, 1), ("hidden_size", hidden, 1),
        ("kernel_size", kernel, 1), ("nb_conv_layers", nb_conv, 0),
        ("nb_gru_layers", nb_gru, 0), ("nb_previous_dirs", nb_previous, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"CausalSequenceEncoder: {name} must be an integer >= {minimum}, got {value!r}"
            )
    if nb_conv == 0 and nb_gru == 0:
        raise ConfigError(
            "CausalSequenceEncoder: nb_conv_layers and nb_gru_layers are both 0 (no encoder)"
        )
