"""FAMO: fast adaptive multitask optimization."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import LossWeighting

_EPS = 1e-8


class FAMO(LossWeighting):
    """Fast adaptive multitask optimization (Liu et al., "FAMO: Fast Adaptive Multitask
    Optimization", NeurIPS 2023).

    Weights ``z = softmax(xi)``; the objective ``sum_t z_t log(L_t - m_t + eps) / c`` with
    ``c = sum_t z_t / (L_t - m_t + eps)`` (``m`` the minimum losses, 0) balances the rates of
    decrease of the losses at O(1) cost. The logits ``xi`` are updated by the method's own Adam
    optimizer (learning rate ``w_lr``, weight decay ``gamma``) from the change in log-loss
    between the previous step and this one. The paper and LibMTL re-evaluate the batch after
    the optimizer step for that; using the next step's losses instead needs no extra forward
    pass (and suits streaming data). ``xi``, its Adam state and the previous losses are all
    checkpointed.

    Args:
        task_names: the tasks.
        w_lr: learning rate of the logits.
        gamma: weight decay of the logits.
        seed: unused.
    """

    def __init__(
        self, task_names: Sequence[str], *, w_lr: float = 0.025, gamma: float = 1e-3, seed: int = 0
    ) -> None:
        super().__init__(task_names, seed=seed)
        if w_lr <= 0 or gamma < 0:
            raise ConfigError(f"FAMO needs w_lr > 0 and gamma >= 0, got {w_lr}, {gamma}")
        self.logits = torch.zeros(self.num_tasks, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=w_lr, weight_decay=gamma)
        self.previous: Tensor | None = None
        self._config.update(w_lr=float(w_lr), gamma=float(gamma))

    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Update the logits from the previous step, then return the FAMO objective."""
        self._to_device(losses.device)
        current = losses.detach()
        if self.previous is not None:
            self._update_logits(self.previous, current)
        self.previous = current.clone()
        z = torch.softmax(self.logits.detach(), dim=0).to(losses.dtype)
        shifted = losses + _EPS
        c = (z / shifted.detach()).sum()
        return (z * shifted.log() / c).sum(), z / (c * shifted.detach())

    def _update_logits(self, previous: Tensor, current: Tensor) -> None:
        delta = (previous + _EPS).log() - (current + _EPS).log()
        with torch.enable_grad():
            z = torch.softmax(self.logits, dim=0)
            (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta.to(z.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad
        self.optimizer.step()

    def _to_device(self, device: torch.device) -> None:
        if self.logits.device == device:
            return
        optimizer_state = self.optimizer.state_dict()
        self.logits.data = self.logits.data.to(device)
        self.optimizer.load_state_dict(optimizer_state)

    def _extra_state(self) -> dict[str, Any]:
        optimizer_state = self.optimizer.state_dict()
        for values in optimizer_state["state"].values():
            for key, value in list(values.items()):
                if isinstance(value, Tensor):
                    values[key] = value.detach().cpu().clone()
        return {
            "logits": self.logits.detach().cpu().clone(),
            "optimizer": optimizer_state,
            "previous": None if self.previous is None else self.previous.cpu(),
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.logits.data = torch.as_tensor(state["logits"]).clone()
        self.optimizer.load_state_dict(state["optimizer"])
        self.previous = None if state["previous"] is None else torch.as_tensor(state["previous"])
