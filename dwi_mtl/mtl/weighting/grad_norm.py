"""GradNorm: gradient normalisation with learnable task weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GradientWeighting
from dwi_mtl.mtl.weighting.loss_windows import LossWindows


class GradNorm(GradientWeighting):
    """GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
    Deep Multitask Networks", ICML 2018).

    Weights ``w = T softmax(s)`` with learnable ``s`` (:meth:`parameters`). Each step, ``s``
    receives the gradient of ``sum_t | w_t ||g_t|| - mean(w ||g||) r_t^alpha |`` with
    ``r_t = (L_t / L_t(0)) / mean(L / L(0))``; the shared parameters get ``sum_t w_t g_t``.
    The reference ``L(0)`` is the mean loss of the first window (LibMTL: the first epoch); a
    window is an epoch or ``N`` steps, and the steps of that first window are plain sums.

    Args:
        task_names: the tasks.
        alpha: restoring-force strength (paper: 1.5).
        window: ``"epoch"`` or a number of steps for the reference loss.
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        alpha: float = 1.5,
        window: str | int = "epoch",
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.logits = torch.nn.Parameter(torch.zeros(self.num_tasks))
        self.windows = LossWindows(self.task_names, window, keep_last=1)
        self._config.update(alpha=self.alpha, window=window)

    def parameters(self) -> list[Tensor]:
        """The learnable weight logits."""
        return [self.logits]

    def plain_sum_this_step(self) -> bool:
        """Plain sums until the reference window is complete."""
        return self.windows.first is None

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Set the logits' gradient from the GradNorm loss; return ``w @ grads`` and ``w``."""
        logits = self.logits if self.logits.device == grads.device else self.logits.to(grads.device)
        weights = self.num_tasks * torch.softmax(logits, dim=0).to(grads.dtype)
        per_task = weights * grads.detach().norm(dim=1)
        reference = self.windows.first if self.windows.first is not None else losses
        ratios = losses.to(grads) / reference.to(grads)
        target = (per_task.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        (logit_grad,) = torch.autograd.grad((per_task - target).abs().sum(), self.logits)
        logit_grad = self._scale_own_gradient(logit_grad)
        self.logits.grad = logit_grad if self.logits.grad is None else self.logits.grad + logit_grad
        weights = weights.detach()
        return weights @ grads, weights

    def on_step_end(self, losses: Mapping[str, Tensor | float]) -> None:
        """Record losses until the reference window is complete."""
        if self.windows.first is None:
            self.windows.add(losses)

    def on_epoch_end(self, epoch: int) -> None:
        """Close the reference window when windows are epochs."""
        if self.windows.first is None:
            self.windows.end_epoch()

    def _extra_state(self) -> dict[str, Any]:
        return {"logits": self.logits.detach().cpu().clone(), "windows": self.windows.state_dict()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(torch.as_tensor(state["logits"]))
        self.windows.load_state_dict(state["windows"])
