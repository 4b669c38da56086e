"""The trainer of the reference model (:class:`~dwi_mtl.models.RecurrentTracker`)."""

from __future__ import annotations

from typing import Any

import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.training.trainer import AbstractTrainer


class ReferenceTrainer(AbstractTrainer):
    """Train a RecurrentTracker to predict next-step directions (cosine loss).

    The batch loader must have an ``input_group`` so batches carry per-point ``inputs``.
    """

    def compute_batch_loss(self, batch: Any) -> torch.Tensor:
        """``1 - cos`` between predicted and true next-step directions, averaged over points."""
        if batch.inputs is None:
            raise ConfigError("ReferenceTrainer needs a batch loader with an input_group")
        loss: torch.Tensor = self.model.direction_loss(  # type: ignore[operator]
            batch.inputs, batch.lengths, batch.directions
        )
        return loss
