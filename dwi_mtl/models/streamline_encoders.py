"""A small encoder of variable-length streamlines: 1D convolutions and/or a GRU over points.

Streamlines arrive packed, as the batch pipeline gives them (``StreamlineBatch``) or as a
:class:`PackedStreamlines`: all points concatenated ``(P, 3)``, per-streamline ``lengths``
``(N,)``, optional per-point ``inputs`` ``(P, F)`` (e.g. interpolated diffusion features).

:class:`StreamlineEncoder` is an ``nn.Sequential`` of named stages, so the staged MTL
architectures (Cross_stitch, MTAN, PLE) can act between them:

``pad``      packed points/features -> zero-padded ``(N, F, L)``
``conv1..k`` masked 1D convolutions ``(N, C, L)`` (padding stays zero)
``pool``     masked mean ``(N, C)``, last GRU state ``(N, C)``, or per point ``(P, C)``

The stages share a small per-batch context (lengths and mask) written by ``pad``, so every stage
of one encoder must run on the batch its ``pad`` stage last saw, which is what every
architecture does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from dwi_mtl.errors import ConfigError, DataError

POOLINGS = ("mean", "gru", "none")


@dataclass
class PackedStreamlines:
    """Packed variable-length streamlines (the fields the encoders read from a batch).

    Attributes:
        points: ``(P, 3)`` coordinates of all points, streamline after streamline.
        lengths: ``(N,)`` number of points of each streamline (int64).
        inputs: optional ``(P, F)`` per-point features.
    """

    points: Tensor
    lengths: Tensor
    inputs: Tensor | None = None

    @property
    def nb_streamlines(self) -> int:
        """Number of streamlines ``N``."""
        return int(self.lengths.shape[0])

    def to(self, device: str | torch.device) -> PackedStreamlines:
        """Return a copy on ``device``."""
        inputs = None if self.inputs is None else self.inputs.to(device)
        return PackedStreamlines(self.points.to(device), self.lengths.to(device), inputs)


class _BatchContext:
    """Lengths, padding mask and point positions of the batch being encoded."""

    def __init__(self) -> None:
        self.lengths: Tensor | None = None
        self.mask: Tensor | None = None
        self.index: tuple[Tensor, Tensor] | None = None

    def require(self) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Return (lengths, mask, index), raising if the ``pad`` stage has not run."""
        if self.lengths is None or self.mask is None or self.index is None:
            raise ConfigError("StreamlineEncoder stages must run after its 'pad' stage")
        return self.lengths, self.mask, self.index


class PackedToPadded(nn.Module):
    """Stage ``pad``: packed batch -> zero-padded ``(N, F, L_max)`` features."""

    def __init__(self, context: _BatchContext, in_features: int, use_points: bool) -> None:
        super().__init__()
        self.context = context
        self.in_features = in_features
        self.use_points = use_points

    def forward(self, batch: Any) -> Tensor:
        """Pad the batch's features (``inputs``, ``points`` or both) and set the context."""
        points, lengths = _check_packed(batch)
        inputs = getattr(batch, "inputs", None)
        if inputs is None:
            features = points
        elif self.use_points:
            features = torch.cat([points, inputs], dim=1)
        else:
            features = inputs
        if features.shape != (points.shape[0], self.in_features):
            raise DataError(
                f"StreamlineEncoder expects {self.in_features} features per point, the batch "
                f"gives {tuple(features.shape)} (inputs={'none' if inputs is None else 'set'})"
            )
        lengths = lengths.to(device=features.device, dtype=torch.long)
        segment = torch.repeat_interleave(
            torch.arange(lengths.shape[0], device=lengths.device), lengths
        )
        starts = torch.cumsum(lengths, 0) - lengths
        position = torch.arange(features.shape[0], device=lengths.device) - starts[segment]
        max_length = int(lengths.max())
        padded = features.new_zeros(lengths.shape[0], max_length, features.shape[1])
        padded[segment, position] = features
        mask = torch.arange(max_length, device=lengths.device) < lengths.unsqueeze(1)
        self.context.lengths = lengths
        self.context.mask = mask.unsqueeze(1).to(features.dtype)
        self.context.index = (segment, position)
        return padded.transpose(1, 2)


class MaskedConv1d(nn.Module):
    """Stage ``conv<i>``: same-length 1D convolution, ReLU, padding positions reset to zero."""

    def __init__(
        self, context: _BatchContext, in_channels: int, out_channels: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.context = context
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``(N, C_in, L)`` into ``(N, C_out, L)``."""
        _, mask, _ = self.context.require()
        return torch.relu(self.conv(x)) * mask


class StreamlinePool(nn.Module):
    """Stage ``pool``: masked mean or last GRU state per streamline, or back to packed points."""

    def __init__(self, context: _BatchContext, channels: int, pooling: str) -> None:
        super().__init__()
        self.context = context
        self.pooling = pooling
        self.gru = nn.GRU(channels, channels, batch_first=True) if pooling == "gru" else None

    def forward(self, x: Tensor) -> Tensor:
        """Reduce ``(N, C, L)`` to ``(N, C)`` (mean, gru) or ``(P, C)`` (none)."""
        lengths, mask, (segment, position) = self.context.require()
        if self.pooling == "none":
            return x.transpose(1, 2)[segment, position]
        if self.gru is not None:
            packed = pack_padded_sequence(
                x.transpose(1, 2), lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            _, hidden = self.gru(packed)
            return hidden[-1]
        return (x * mask).sum(dim=2) / lengths.unsqueeze(1).to(x.dtype)


class StreamlineEncoder(nn.Sequential):
    """Encode packed streamlines with masked 1D convolutions and a pooling stage.

    Args:
        in_features: features per point: 3 for coordinates, F for ``inputs``, F + 3 with
            ``use_points``.
        hidden_size: channels of every convolution (and of the GRU).
        nb_conv_layers: number of convolution stages (0 allowed with ``pooling="gru"``).
        kernel_size: odd convolution width (in points).
        pooling: ``"mean"`` (masked mean per streamline), ``"gru"`` (last state of a GRU over
            the points) or ``"none"`` (per-point features, packed ``(P, C)``).
        use_points: concatenate the coordinates to ``inputs`` when a batch has inputs.

    Raises:
        ConfigError: for non-positive sizes, an even kernel or an unknown pooling.
    """

    def __init__(
        self,
        in_features: int = 3,
        hidden_size: int = 32,
        nb_conv_layers: int = 2,
        kernel_size: int = 3,
        pooling: str = "mean",
        use_points: bool = False,
    ) -> None:
        _check_sizes(in_features, hidden_size, nb_conv_layers, kernel_size, pooling)
        context = _BatchContext()
        stages: dict[str, nn.Module] = {"pad": PackedToPadded(context, in_features, use_points)}
        channels = in_features
        for index in range(nb_conv_layers):
            stages[f"conv{index + 1}"] = MaskedConv1d(context, channels, hidden_size, kernel_size)
            channels = hidden_size
        if pooling == "gru" and channels != hidden_size:
            stages["project"] = MaskedConv1d(context, channels, hidden_size, 1)
            channels = hidden_size
        stages["pool"] = StreamlinePool(context, channels, pooling)
        super().__init__(OrderedDict(stages))
        self.out_features = channels
        self.config = {
            "in_features": in_features,
            "hidden_size": hidden_size,
            "nb_conv_layers": nb_conv_layers,
            "kernel_size": kernel_size,
            "pooling": pooling,
            "use_points": use_points,
        }

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (JSON-able), to rebuild the encoder."""
        return dict(self.config)


def _check_sizes(in_features: int, hidden: int, nb_conv: int, kernel: int, pooling: str) -> None:
    """Validate the encoder's constructor arguments."""
    for name, value in (
        ("in_features", in_features),
        ("hidden_size", hidden),
        ("kernel_size", kernel),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"StreamlineEncoder: {name} must be a positive integer, got {value!r}"
            )
    if isinstance(nb_conv, bool) or not isinstance(nb_conv, int) or nb_conv < 0:
        raise ConfigError(f"StreamlineEncoder: nb_conv_layers must be >= 0, got {nb_conv!r}")
    if kernel % 2 == 0:
        raise ConfigError(f"StreamlineEncoder: kernel_size must be odd, got {kernel}")
    if pooling not in POOLINGS:
        raise ConfigError(f"StreamlineEncoder: pooling must be one of {POOLINGS}, got {pooling!r}")


def _check_packed(batch: Any) -> tuple[Tensor, Tensor]:
    """Return (points, lengths) of a packed batch, raising DataError when inconsistent."""
    points = getattr(batch, "points", None)
    lengths = getattr(batch, "lengths", None)
    if not isinstance(points, Tensor) or not isinstance(lengths, Tensor):
        raise DataError(
            f"StreamlineEncoder needs a packed batch with tensors 'points' and 'lengths', got "
            f"{type(batch).__name__}"
        )
    if lengths.dim() != 1 or lengths.numel() == 0 or bool((lengths < 1).any()):
        raise DataError("packed batch: 'lengths' must be a non-empty 1D tensor of positive counts")
    if int(lengths.sum()) != points.shape[0]:
        raise DataError(
            f"packed batch: 'lengths' sum to {int(lengths.sum())} but 'points' has "
            f"{points.shape[0]} rows"
        )
    return points, lengths
