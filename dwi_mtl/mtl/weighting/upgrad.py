"""UPGrad: unconflicting projection of gradients (Jacobian descent)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting
from dwi_mtl.mtl.weighting.solvers import project_dual_cone_rows


def normalize_regularize(gram: np.ndarray, norm_eps: float, reg_eps: float) -> np.ndarray:
    """Divide the Gramian by its trace (zero if below ``norm_eps``), then add ``reg_eps * I``.

    The same conditioning as TorchJD's dual-cone projector, so results agree with it.
    """
    trace = float(np.trace(gram))
    scaled = np.zeros_like(gram) if trace < norm_eps else gram / trace
    return scaled + reg_eps * np.eye(gram.shape[0])


class UPGrad(GramianWeighting):
    """UPGrad (Quinton and Rey, "Jacobian Descent For Multi-Objective Optimization", 2024).

    Each task gradient is projected onto the dual cone of all task gradients (the set of
    directions that conflict with none of them) and the projections are averaged: the result
    has a non-negative inner product with every task gradient.

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
        """Sum of the dual-cone projection weights of each ``e_t / T`` (one factorisation)."""
        conditioned = normalize_regularize(gram, self.norm_eps, self.reg_eps)
        size = gram.shape[0]
        return project_dual_cone_rows(np.eye(size) / size, conditioned).sum(axis=0)
