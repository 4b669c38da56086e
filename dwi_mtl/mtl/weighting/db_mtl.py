"""DB-MTL: dual-balancing of loss scales and gradient magnitudes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GradientWeighting


class DB_MTL(GradientWeighting):
    """Dual-balancing multi-task learning (Lin et al., "Dual-Balancing for Multi-Task
    Learning", arXiv:2308.12029, 2023).

    Loss-scale balancing: the gradients are taken of ``log(L_t + eps)``. Gradient-magnitude
    balancing: an EMA ``m_t <- g_t + beta_k (m_t - g_t)`` (``beta_k = beta / k^beta_sigma``) of
    each task's gradient is rescaled to the largest EMA norm and the results are summed. The
    EMA buffer (``(T, n)`` on the gradients' device) is checkpointed.

    Args:
        task_names: the tasks.
        beta, beta_sigma: EMA parameters (LibMTL's defaults 0.9, 0).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        beta: float = 0.9,
        beta_sigma: float = 0.0,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if not 0.0 <= beta <= 1.0 or beta_sigma < 0:
            raise ConfigError(
                f"DB_MTL needs 0 <= beta <= 1 and beta_sigma >= 0; got {beta}, {beta_sigma}"
            )
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.buffer: Tensor | None = None
        self._config.update(beta=self.beta, beta_sigma=self.beta_sigma)

    def transform_losses(self, losses: list[Tensor]) -> list[Tensor]:
        """Loss-scale balancing: ``log(L_t + 1e-8)``."""
        return [torch.log(loss + 1e-8) for loss in losses]

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Update the EMA and return the magnitude-balanced sum and its scales."""
        k = self.step + 1
        buffer = torch.zeros_like(grads) if self.buffer is None else self.buffer.to(grads)
        # grads + c (buffer - grads), in place: c buffer + (1 - c) grads
        buffer.lerp_(grads, 1.0 - self.beta / k**self.beta_sigma)
        norms = buffer.norm(dim=1)
        scales = norms.max() / (norms + 1e-8)
        self.buffer = buffer
        return scales @ buffer, scales

    def _extra_state(self) -> dict[str, Any]:
        return {"buffer": None if self.buffer is None else self.buffer.detach().cpu().clone()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        buffer = state["buffer"]
        self.buffer = None if buffer is None else torch.as_tensor(buffer).clone()
