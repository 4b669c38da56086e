"""Nash-MTL: multi-task learning as a bargaining game."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting
from dwi_mtl.mtl.weighting.solvers import solve_power_fixed_point


class Nash_MTL(GramianWeighting):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

    The Nash bargaining weights solve ``G alpha = 1 / alpha`` (``alpha > 0``, ``G`` the
    Gramian). The paper's code approximates it with cvxpy CCP iterations; here the equation is
    solved to machine precision as the minimiser of the strictly convex
    ``alpha^T G alpha / 2 - sum log alpha`` on the Gramian normalised by its Frobenius norm
    ``f`` (then ``alpha = alpha_f / sqrt(f)``), by a damped Newton method warm-started from the
    previous solution, with no optional solver. The combined gradient's norm is clipped to
    ``max_norm`` (0 disables); weights may be recomputed every ``update_weights_every`` steps.

    Args:
        task_names: the tasks.
        max_norm: clip of the combined gradient's norm (paper: 1.0).
        update_weights_every: recompute the weights every this many steps.
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if max_norm < 0 or update_weights_every < 1:
            raise ConfigError(
                f"Nash_MTL needs max_norm >= 0 and update_weights_every >= 1, got {max_norm}, "
                f"{update_weights_every}"
            )
        self.max_norm, self.update_weights_every = float(max_norm), int(update_weights_every)
        self.alpha = np.ones(self.num_tasks)  # solution for the normalised Gramian
        self.scale = 1.0
        self._config.update(max_norm=self.max_norm, update_weights_every=self.update_weights_every)

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """Bargaining weights (recomputed on schedule), norm-clipped."""
        if self.step % self.update_weights_every == 0:
            frobenius = float(np.linalg.norm(gram))
            if frobenius > 0 and np.isfinite(frobenius):
                self.alpha = solve_power_fixed_point(gram / frobenius, 1.0, start=self.alpha)
                self.scale = 1.0 / np.sqrt(frobenius)
        alpha = self.alpha * self.scale
        if self.max_norm > 0:
            norm = float(np.sqrt(max(alpha @ gram @ alpha, 0.0)))
            if norm > self.max_norm:
                alpha *= self.max_norm / norm
        return alpha

    def _extra_state(self) -> dict[str, Any]:
        return {"alpha": self.alpha.copy(), "scale": float(self.scale)}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.alpha = np.asarray(state["alpha"], dtype=np.float64).copy()
        self.scale = float(state["scale"])
