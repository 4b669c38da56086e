"""TransformerDirectionModel: a small causal Transformer encoder over streamline points.

Points are embedded (linear layer + sinusoidal position), then a stack of pre-norm encoder
layers with a causal mask lets point ``i`` attend to points ``0..i`` only: the prediction at a
point never uses the streamline's future, so training and tracking see the same thing.
Tracking keeps each streamline's inputs and re-reads the whole sequence at every step
(``O(L^2)`` attention, cheap at tractography lengths of a few hundred points).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from dwi_mtl.errors import ConfigError
from dwi_mtl.models.direction_model import DirectionModel
from dwi_mtl.models.sequence_features import last_point_mask


def sinusoidal_positions(length: int, width: int, device: torch.device) -> Tensor:
    """``(length, width)`` sinusoidal position encodings (Vaswani et al.)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32)
                      * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale[: width // 2])
    return table


class TransformerDirectionModel(DirectionModel):
    """Causal Transformer encoder over per-point inputs -> direction getter.

    Args:
        nb_features: volume features per point (neighbourhood included).
        d_model: embedding width (even, a multiple of ``nb_heads``).
        nb_heads: attention heads.
        nb_layers: encoder layers.
        dim_feedforward: width of each layer's feed-forward block.
        dropout: dropout inside the layers and before the head.
        nb_previous_dirs: previous step directions appended to the inputs.
        direction_getter: head name (see :mod:`dwi_mtl.models.direction_getters`).
        direction_getter_kwargs: the head's other arguments.
        eos: also learn the end of the streamline.
    """

    def __init__(self, nb_features: int, d_model: int = 64, nb_heads: int = 4,
                 nb_layers: int = 2, dim_feedforward: int = 128, dropout: float = 0.1,
                 nb_previous_dirs: int = 0, direction_getter: str = "cosine",
                 direction_getter_kwargs: dict[str, Any] | None = None,
                 eos: bool = False) -> None:
        super().__init__(nb_features, nb_previous_dirs, direction_getter,
                         {"dropout": dropout, **(direction_getter_kwargs or {})}, eos)
        _check(d_model, nb_heads, nb_layers, dim_feedforward, dropout)
        self._config.update(d_model=d_model, nb_heads=nb_heads, nb_layers=nb_layers,
                            dim_feedforward=dim_feedforward, dropout=float(dropout),
                            direction_getter_kwargs=dict(direction_getter_kwargs or {}))
        self.embedding = nn.Linear(self.input_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nb_heads, dim_feedforward, float(dropout),
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, nb_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.d_model = d_model
        self._build_head(d_model)

    def _run_padded(self, padded: Tensor) -> Tensor:
        """``(N, T, input_size)`` -> ``(N, T, d_model)`` with a causal mask.

        Padding sits after each sequence's last point, so the causal mask alone keeps it
        from influencing real points (no key-padding mask needed).
        """
        steps = padded.shape[1]
        x = self.embedding(padded) * math.sqrt(self.d_model)
        x = x + sinusoidal_positions(steps, self.d_model, padded.device)[None]
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=padded.device)
        return self.norm(self.encoder(x, mask=mask, is_causal=True))

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``(P, input_size)`` packed inputs -> ``(P, d_model)`` causal hidden states."""
        padded = pad_sequence(list(torch.split(x, lengths.tolist())), batch_first=True)
        hidden = self._run_padded(padded)
        steps = torch.arange(padded.shape[1], device=x.device)
        return hidden[steps[None, :] < lengths.to(x.device)[:, None]]

    def start_tracking(self, inputs: Tensor, lengths: Tensor,
                       points: Tensor) -> tuple[Tensor, Any]:
        """Keep the sequences' inputs as the state; outputs at their last points."""
        x = self.model_inputs(inputs, lengths, points)
        hidden = self.encode(x, lengths)
        padded = pad_sequence(list(torch.split(x, lengths.tolist())), batch_first=True)
        return self.head(hidden[last_point_mask(lengths)]), (padded, lengths.clone())

    def track_step(self, inputs: Tensor, previous: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Append the new point's inputs and re-read every sequence."""
        padded, lengths = state
        x = torch.cat([inputs, previous], dim=1) if self.nb_previous_dirs else inputs
        grown = torch.cat([padded, padded.new_zeros(padded.shape[0], 1, padded.shape[2])], 1)
        rows = torch.arange(grown.shape[0], device=grown.device)
        grown[rows, lengths] = x
        lengths = lengths + 1
        hidden = self._run_padded(grown)
        return self.head(hidden[rows, lengths - 1]), (grown, lengths)

    def select_state(self, state: Any, index: Tensor) -> Any:
        """Keep the sequences of the streamlines ``index`` (trimmed to their longest)."""
        padded, lengths = state
        lengths = lengths[index]
        longest = int(lengths.max()) if lengths.numel() else 0
        return padded[index, :longest], lengths


def _check(d_model: int, nb_heads: int, nb_layers: int, dim_feedforward: int,
           dropout: float) -> None:
    for name, value in (("d_model", d_model), ("nb_heads", nb_heads), ("nb_layers", nb_layers),
                        ("dim_feedforward", dim_feedforward)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"TransformerDirectionModel: {name} must be a positive integer, "
                              f"got {value!r}")
    if d_model % 2 or d_model % nb_heads:
        raise ConfigError(f"TransformerDirectionModel: d_model ({d_model}) must be even and a "
                          f"multiple of nb_heads ({nb_heads})")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"TransformerDirectionModel: dropout must be in [0, 1), got {dropout}")
