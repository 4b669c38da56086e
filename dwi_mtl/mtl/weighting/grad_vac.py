"""GradVac: gradient vaccine with EMA similarity targets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting


class GradVac(GramianWeighting):
    """Gradient vaccine (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021).

    For each task ``i`` and each other task ``j`` (random order), when the cosine similarity
    of the (modified) ``g_i`` with ``g_j`` falls below its EMA target ``phi_ij``, a multiple of
    ``g_j`` is added to bring it to the target; the targets follow an EMA of rate ``beta``.
    The targets are checkpointed; computed on the Gramian, on the whole shared parameter vector.

    Args:
        task_names: the tasks.
        beta: EMA rate of the similarity targets.
        eps: small constant of the denominators.
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        beta: float = 0.5,
        eps: float = 1e-8,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if not 0.0 <= beta <= 1.0 or eps < 0:
            raise ConfigError(f"GradVac needs 0 <= beta <= 1 and eps >= 0, got {beta}, {eps}")
        self.beta, self.eps = float(beta), float(eps)
        self.targets = torch.zeros(self.num_tasks, self.num_tasks, dtype=torch.float64)
        self._config.update(beta=self.beta, eps=self.eps)

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """Sum over tasks of the coefficients of the vaccinated gradients."""
        size = gram.shape[0]
        generator = self._generator()
        targets = self.targets.numpy().copy()
        coefficients = np.eye(size)
        for i in range(size):
            others = [j for j in range(size) if j != i]
            order = torch.randperm(len(others), generator=generator).tolist()
            for j in (others[k] for k in order):
                self._vaccinate(gram, coefficients, targets, i, j)
        self.targets = torch.from_numpy(targets)
        return coefficients.sum(axis=0)

    def _vaccinate(
        self, g: np.ndarray, coefficients: np.ndarray, targets: np.ndarray, i: int, j: int
    ) -> None:
        """Correct the coefficients of task ``i`` towards the target similarity with ``j``."""
        cg = coefficients[i] @ g
        norm_i = math.sqrt(max(float(cg @ coefficients[i]), 0.0))
        norm_j = math.sqrt(max(float(g[j, j]), 0.0))
        phi = float(cg[j]) / (norm_i * norm_j + self.eps)
        target = float(targets[i, j])
        if phi < target:
            root_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
            root_target = math.sqrt(max(1.0 - target * target, 0.0))
            numerator = norm_i * (target * root_phi - phi * root_target)
            coefficients[i, j] += numerator / (norm_j * root_target + self.eps)
        targets[i, j] = (1.0 - self.beta) * target + self.beta * phi

    def _extra_state(self) -> dict[str, Any]:
        return {"targets": self.targets.clone()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.targets = torch.as_tensor(state["targets"], dtype=torch.float64).clone()
