"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting
from dwi_mtl.mtl.weighting.solvers import cagrad_weights


class CAGrad(GramianWeighting):
    """Conflict-averse gradient descent (Liu et al., "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021).

    Maximises the worst task improvement in a ball of radius ``c ||g0||`` around the mean
    gradient ``g0``: ``d = g0 + c ||g0|| / ||g_w|| g_w`` with ``w`` the solution of the dual
    on the simplex (solved with SLSQP on the Gramian, no cvxpy). ``rescale`` divides ``d`` by
    ``1 + c^2`` (1, the paper's default), ``1 + c`` (2) or nothing (0).

    Args:
        task_names: the tasks.
        c: radius scale (0 gives the mean gradient).
        rescale: 0, 1 or 2 as above.
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        c: float = 0.5,
        rescale: int = 1,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if c < 0 or rescale not in (0, 1, 2):
            raise ConfigError(f"CAGrad needs c >= 0 and rescale in (0, 1, 2), got {c}, {rescale}")
        self.c, self.rescale = float(c), rescale
        self._config.update(c=self.c, rescale=rescale)

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """CAGrad weights of the rows, rescaled."""
        weights = cagrad_weights(gram, self.c)
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return weights / divisor
