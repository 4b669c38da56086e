"""RecurrentTracker: a small GRU direction getter, the reference model of the scripts and demo.

At every point of a streamline the model reads the volume features interpolated there (the
batch loader's ``inputs``), runs a GRU along the streamline and predicts the unit direction of
the next step. Trained with a cosine loss against the batch's ``directions`` (``lengths - 1``
per streamline), it learns to track. Small but real: dropout makes its training use the
global torch RNG, which is what exact resume has to get right.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from dwi_mtl.errors import ConfigError


class RecurrentTracker(nn.Module):
    """GRU over per-point input features -> next-step direction.

    Args:
        nb_features: features per point (the loader's ``inputs`` width).
        hidden_size: GRU hidden units.
        nb_layers: stacked GRU layers.
        dropout: dropout on the GRU outputs before the direction head.
    """

    def __init__(
        self, nb_features: int, hidden_size: int = 64, nb_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if int(nb_features) < 1 or int(hidden_size) < 1 or int(nb_layers) < 1:
            raise ConfigError(
                f"RecurrentTracker: nb_features, hidden_size and nb_layers must be >= 1, got "
                f"{nb_features}, {hidden_size}, {nb_layers}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"RecurrentTracker: dropout must be in [0, 1), got {dropout}")
        self._config = {
            "nb_features": int(nb_features), "hidden_size": int(hidden_size),
            "nb_layers": int(nb_layers), "dropout": float(dropout),
        }
        self.gru = nn.GRU(int(nb_features), int(hidden_size), int(nb_layers), batch_first=True)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(int(hidden_size), 3)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (the model is rebuilt from them on resume)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RecurrentTracker:
        """Build the model from :meth:`get_config`'s dict."""
        return cls(**config)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Predict a unit direction at every point.

        Args:
            inputs: ``(P, F)`` packed per-point features.
            lengths: ``(N,)`` points per streamline.

        Returns:
            ``(P, 3)`` unit vectors, packed like ``inputs``.
        """
        sequences = torch.split(inputs, lengths.tolist())
        padded = pad_sequence(list(sequences), batch_first=True)
        packed = pack_padded_sequence(padded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.gru(packed)
        unpacked, _ = pad_packed_sequence(output, batch_first=True)
        mask = torch.arange(unpacked.shape[1], device=inputs.device)[None, :] < lengths[:, None]
        hidden = unpacked[mask]
        return nn.functional.normalize(self.head(self.dropout(hidden)), dim=-1)

    def direction_loss(
        self, inputs: torch.Tensor, lengths: torch.Tensor, directions: torch.Tensor
    ) -> torch.Tensor:
        """Mean ``1 - cos`` between predictions at points ``0..L-2`` and the next steps."""
        predictions = self(inputs, lengths)
        last = torch.cumsum(lengths, 0) - 1
        keep = torch.ones(predictions.shape[0], dtype=torch.bool, device=predictions.device)
        keep[last] = False
        target = nn.functional.normalize(directions, dim=-1)
        cosine = (predictions[keep] * target).sum(dim=-1)
        return (1.0 - cosine).mean()
