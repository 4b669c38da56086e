"""DWA: dynamic weight average over windows of steps or epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import LossWeighting
from dwi_mtl.mtl.weighting.loss_windows import LossWindows


class DWA(LossWeighting):
    """Dynamic weight average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    ``w_t = T softmax(r / temperature)_t`` with ``r_t = Lbar_t(k-1) / Lbar_t(k-2)`` the ratio of
    the mean losses of the two last completed windows; equal weights until two windows exist.
    LibMTL's windows are epochs; here a window is an epoch or ``N`` steps (streaming data).
    The trainer feeds losses through :meth:`on_step_end` and epochs through :meth:`on_epoch_end`.

    Args:
        task_names: the tasks.
        temperature: softmax temperature (paper: 2).
        window: ``"epoch"`` or a number of steps.
        seed: unused.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        temperature: float = 2.0,
        window: str | int = "epoch",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, seed=seed)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.windows = LossWindows(self.task_names, window)
        self._config.update(temperature=self.temperature, window=window)

    def current_weights(self, device: torch.device | str = "cpu") -> Tensor:
        """The weights the next step will use."""
        if self.windows.completed < 2:
            return torch.ones(self.num_tasks, device=device)
        previous, before = self.windows.last[-1], self.windows.last[-2]
        ratio = (previous / before).to(device)
        return self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the DWA-weighted sum and its weights."""
        weights = self.current_weights(losses.device).to(losses.dtype)
        return (weights * losses).sum(), weights

    def on_step_end(self, losses: Mapping[str, Tensor | float]) -> None:
        """Add the step's losses to the current window."""
        self.windows.add(losses)

    def on_epoch_end(self, epoch: int) -> None:
        """Close the window when windows are epochs."""
        self.windows.end_epoch()

    def _extra_state(self) -> dict[str, Any]:
        return {"windows": self.windows.state_dict()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.windows.load_state_dict(state["windows"])
