"""UW: uncertainty weighting with learnable task log-variances."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.mtl.weighting.abstract_weighting import LossWeighting


class UW(LossWeighting):
    """Uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty
    to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

    Objective ``sum_t L_t / (2 exp(s_t)) + s_t / 2`` with learnable log-variances ``s_t``
    (returned by :meth:`parameters`; the trainer adds them to its optimizer). Weights are
    ``1 / (2 exp(s_t))``.

    Args:
        task_names: the tasks.
        init_log_var: initial ``s_t`` (LibMTL: -0.5).
        seed: unused (no randomness); kept for a uniform signature.
    """

    def __init__(self, task_names: Sequence[str], *, init_log_var: float = -0.5, seed: int = 0):
        super().__init__(task_names, seed=seed)
        self.log_vars = torch.nn.Parameter(torch.full((self.num_tasks,), float(init_log_var)))
        self._config.update(init_log_var=float(init_log_var))

    def parameters(self) -> list[Tensor]:
        """The learnable log-variances."""
        return [self.log_vars]

    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the uncertainty-weighted objective and ``1 / (2 exp(s))``."""
        log_vars = self.log_vars.to(losses.device)
        objective = (losses / (2 * log_vars.exp()) + log_vars / 2).sum()
        return objective, (0.5 * torch.exp(-log_vars)).detach()

    def _extra_state(self) -> dict[str, Any]:
        return {"log_vars": self.log_vars.detach().cpu().clone()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.log_vars.copy_(torch.as_tensor(state["log_vars"]))
