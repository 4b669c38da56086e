"""MoCo: multi-objective gradient correction with momentum tracking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import gradients as grad_ops
from dwi_mtl.mtl.weighting.abstract_weighting import GradientWeighting


class MoCo(GradientWeighting):
    """MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A
    Provably Convergent Approach", ICLR 2023).

    Tracking variables ``y_t <- y_t - beta_k (y_t - g_t)`` (``g_t`` rescaled to norm ``L_t``,
    as LibMTL) remove the bias of stochastic MGDA; the weights follow a projected step
    ``lambda <- softmax(lambda - gamma_k (Y Y^T + rho I) lambda)`` with ``beta_k = beta /
    k^beta_sigma`` and ``gamma_k = gamma / k^gamma_sigma``; the update is ``Y^T lambda``.
    ``Y`` (a ``(T, n)`` buffer on the gradients' device) and ``lambda`` are checkpointed.

    Args:
        task_names: the tasks.
        beta, beta_sigma, gamma, gamma_sigma, rho: step sizes and regularisation (LibMTL's
            defaults).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if min(beta, beta_sigma, gamma, gamma_sigma, rho) < 0:
            raise ConfigError("MoCo's beta, beta_sigma, gamma, gamma_sigma and rho must be >= 0")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma, self.rho = float(gamma), float(gamma_sigma), float(rho)
        self.tracked: Tensor | None = None
        self.lambdas = torch.full((self.num_tasks,), 1.0 / self.num_tasks)
        self._config.update(beta=beta, beta_sigma=beta_sigma, gamma=gamma,
                            gamma_sigma=gamma_sigma, rho=rho)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Update the tracked gradients and weights, return ``Y^T lambda`` and ``lambda``."""
        k = self.step + 1
        beta_k = self.beta / k**self.beta_sigma
        # y - beta_k (y - c g) = (1 - beta_k) y + beta_k c g with c = L / ||g||, and Y Y^T, in one
        # blocked pass over Y and the gradients (no scaled copy, no separate Gramian pass)
        coefficients = beta_k * losses.to(grads) / (torch.linalg.vector_norm(grads, dim=1) + 1e-8)
        previous = self.tracked
        fresh = previous is None
        tracked = torch.empty_like(grads) if previous is None else previous.to(grads)
        gram = torch.zeros(self.num_tasks, self.num_tasks, dtype=grads.dtype, device=grads.device)
        for block in grad_ops.column_blocks(grads):
            y = tracked[:, block]
            if fresh:
                torch.mul(grads[:, block], coefficients[:, None], out=y)
            else:
                y.mul_(1.0 - beta_k).addcmul_(grads[:, block], coefficients[:, None])
            gram.addmm_(y, y.T)
        lambdas = self.lambdas.to(grads)
        eye = torch.eye(self.num_tasks, dtype=grads.dtype, device=grads.device)
        step = (gram + self.rho * eye) @ lambdas
        lambdas = torch.softmax(lambdas - (self.gamma / k**self.gamma_sigma) * step, dim=0)
        self.tracked, self.lambdas = tracked, lambdas
        return lambdas @ tracked, lambdas

    def _extra_state(self) -> dict[str, Any]:
        tracked = None if self.tracked is None else self.tracked.detach().cpu().clone()
        return {"tracked": tracked, "lambdas": self.lambdas.detach().cpu().clone()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        tracked = state["tracked"]
        self.tracked = None if tracked is None else torch.as_tensor(tracked).clone()
        self.lambdas = torch.as_tensor(state["lambdas"]).clone()
