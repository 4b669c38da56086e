"""FairGrad: alpha-fair gradient weighting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting
from dwi_mtl.mtl.weighting.solvers import solve_power_fixed_point


class FairGrad(GramianWeighting):
    """FairGrad (Ban and Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

    The weights of the alpha-fair update solve ``G w = w^(-1/alpha)`` (``w > 0``); ``alpha = 0``
    is linear scalarisation (uniform weights ``1/T``). Solved as the minimiser of a strictly
    convex function (damped Newton), where LibMTL and TorchJD call ``least_squares``.

    Args:
        task_names: the tasks.
        alpha: fairness parameter (1: proportional fairness, as Nash-MTL).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        alpha: float = 1.0,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self._config.update(alpha=self.alpha)

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """Alpha-fair weights."""
        size = gram.shape[0]
        if self.alpha == 0 or not np.isfinite(gram).all() or np.trace(gram) <= 0:
            return np.full(size, 1.0 / size)
        return solve_power_fixed_point(gram, 1.0 / self.alpha, start=np.full(size, 1.0 / size))
