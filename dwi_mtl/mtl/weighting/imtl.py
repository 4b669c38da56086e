"""IMTL: impartial multi-task learning (gradient and loss balance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting


class IMTL(GramianWeighting):
    """Impartial multi-task learning (Liu et al., "Towards Impartial Multi-task Learning",
    ICLR 2021).

    IMTL-G: the combined gradient ``d = sum_t w_t g_t`` (``sum w = 1``) has equal projections on
    every unit task gradient, ``w ∝ G^+ sqrt(diag G)`` (the pseudo-inverse form of Quinton and
    Rey, 2024, which also handles linearly dependent gradients). IMTL-L (``loss_scaling``):
    each loss becomes ``exp(s_t) L_t - s_t`` with learnable ``s_t`` (:meth:`parameters`).

    Args:
        task_names: the tasks.
        loss_scaling: also apply IMTL-L (as LibMTL's IMTL does).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        loss_scaling: bool = True,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        self.loss_scaling = bool(loss_scaling)
        self.log_scales = torch.nn.Parameter(torch.zeros(self.num_tasks))
        self._config.update(loss_scaling=self.loss_scaling)

    def parameters(self) -> list[Tensor]:
        """The IMTL-L log-scales (empty without loss scaling)."""
        return [self.log_scales] if self.loss_scaling else []

    def transform_losses(self, losses: list[Tensor]) -> list[Tensor]:
        """IMTL-L: ``exp(s_t) L_t - s_t``."""
        if not self.loss_scaling:
            return losses
        scales = self.log_scales.to(losses[0].device)
        return [scales[t].exp() * loss - scales[t] for t, loss in enumerate(losses)]

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """IMTL-G weights from the Gramian (zeros when undefined)."""
        v = np.linalg.pinv(gram) @ np.sqrt(np.clip(np.diag(gram), 0.0, None))
        total = v.sum()
        return np.zeros_like(v) if abs(total) < 1e-12 else v / total

    def _extra_state(self) -> dict[str, Any]:
        return {"log_scales": self.log_scales.detach().cpu().clone()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.log_scales.copy_(torch.as_tensor(state["log_scales"]))
