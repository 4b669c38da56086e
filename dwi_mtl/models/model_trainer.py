"""ModelTrainer: the AbstractTrainer of the reference models (their own loss and metrics).

Every reference model of :mod:`dwi_mtl.models` knows its loss (``compute_loss(batch)``: a
scalar, or ``{"direction", "eos"}`` for a direction model learning the end of streamlines, which
the trainer combines with its MTL ``weighting``) and its metrics (``compute_metrics(batch)``:
the losses plus e.g. ``angular_error`` or ``accuracy``, from one forward pass). Validation
epochs log the extra metrics as ``validation_<name>`` next to the losses.
"""

from __future__ import annotations

from typing import Any

import torch

from dwi_mtl.training.trainer import AbstractTrainer


class ModelTrainer(AbstractTrainer):
    """Train a :mod:`dwi_mtl.models` reference model; see :class:`AbstractTrainer` for options.

    Give ``task_names=model.task_names`` with a named ``weighting`` when the model has several
    tasks (``eos=True``).
    """

    _validation_extras: dict[str, float]

    def compute_batch_loss(self, batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model's own loss."""
        loss: torch.Tensor | dict[str, torch.Tensor] = self.model.compute_loss(  # type: ignore[operator]
            batch)
        return loss

    def compute_validation_loss(self, batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model's losses; its other metrics are kept for :meth:`validation_step`."""
        metrics: dict[str, torch.Tensor] = dict(self.model.compute_metrics(batch))  # type: ignore[operator]
        names = list(getattr(self.model, "task_names", None) or ["loss"])
        losses = {name: metrics.pop(name) for name in names}
        self._validation_extras = {key: float(value.detach()) for key, value in metrics.items()}
        return losses if len(losses) > 1 else losses[names[0]]

    def validation_step(self, batch: Any, epoch: int, batch_index: int) -> dict[str, float]:
        """Losses and the model's metrics (``angular_error``, ``accuracy``, ...) of a batch."""
        self._validation_extras = {}
        metrics = super().validation_step(batch, epoch, batch_index)
        metrics.update(self._validation_extras)
        return metrics
