"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting
from dwi_mtl.mtl.weighting.solvers import project_dual_cone
from dwi_mtl.mtl.weighting.upgrad import normalize_regularize


class DualProj(GramianWeighting):
    """DualProj: the mean of the task gradients projected onto their dual cone (Equation 11 of
    Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, as
    an aggregator in Quinton and Rey, "Jacobian Descent For Multi-Objective Optimization",
    2024).

    Args:
        task_names: the tasks.
        norm_eps, reg_eps: Gramian conditioning (TorchJD's defaults).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if norm_eps < 0 or reg_eps < 0:
            raise ConfigError(f"norm_eps and reg_eps must be >= 0, got {norm_eps}, {reg_eps}")
        self.norm_eps, self.reg_eps = float(norm_eps), float(reg_eps)
        self._config.update(norm_eps=self.norm_eps, reg_eps=self.reg_eps)

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """Dual-cone projection weights of the mean ``1 / T``."""
        conditioned = normalize_regularize(gram, self.norm_eps, self.reg_eps)
        size = gram.shape[0]
        return project_dual_cone(np.full(size, 1.0 / size), conditioned)
