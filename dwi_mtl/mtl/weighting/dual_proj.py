"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from dwi_mtl.mtl.weighting.solvers import project_dual_cone
from dwi_mtl.mtl.weighting.upgrad import UPGrad, normalize_regularize


class DualProj(UPGrad):
    """DualProj: the mean of the task gradients projected onto their dual cone (Equation 11 of
    Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, as
    an aggregator in Quinton and Rey, "Jacobian Descent For Multi-Objective Optimization",
    2024).

    It shares UPGrad's arguments and Gramian conditioning; UPGrad projects each task
    gradient and averages the projections, DualProj projects the average once.

    Args:
        task_names: the tasks.
        norm_eps, reg_eps: Gramian conditioning (TorchJD's defaults).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """Dual-cone projection weights of the mean ``1 / T``."""
        conditioned = normalize_regularize(gram, self.norm_eps, self.reg_eps)
        size = gram.shape[0]
        return project_dual_cone(np.full(size, 1.0 / size), conditioned)
