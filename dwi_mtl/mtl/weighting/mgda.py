"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GradientWeighting
from dwi_mtl.mtl.weighting.solvers import min_norm_simplex

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientWeighting):
    """Multiple-gradient descent (Sener and Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018; Désidéri, "Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization", C. R. Math. 2012).

    The gradients are first normalised (``"none"``, ``"l2"``: by their norm, ``"loss"``: by
    the loss, ``"loss+"``: by both, as in the paper's code and LibMTL); the combined gradient is
    the exact minimum-norm point of the convex hull of the normalised gradients (an exact
    active-set solve on the Gramian instead of Frank-Wolfe iterations).

    Args:
        task_names: the tasks.
        normalization: one of ``"none"``, ``"l2"``, ``"loss"``, ``"loss+"``.
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        normalization: str = "none",
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        self.normalization = normalization
        self._config.update(normalization=normalization)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the min-norm combination of the normalised gradients and its weights."""
        scale = self._normalizers(grads, losses)
        normalized = grads / scale[:, None]
        gram = (normalized @ normalized.T).double().cpu().numpy()
        weights = torch.as_tensor(min_norm_simplex(gram), dtype=grads.dtype).to(grads.device)
        return weights @ normalized, weights / scale

    def _normalizers(self, grads: Tensor, losses: Tensor) -> Tensor:
        if self.normalization == "none":
            return torch.ones(grads.shape[0], dtype=grads.dtype, device=grads.device)
        norms = grads.norm(dim=1).clamp_min(1e-12)
        if self.normalization == "l2":
            return norms
        values = losses.to(grads.dtype).clamp_min(1e-12)
        return values if self.normalization == "loss" else values * norms


def min_norm_weights(gram: np.ndarray) -> np.ndarray:
    """The MGDA weights of a Gramian (exposed for tests and other methods)."""
    return min_norm_simplex(gram)
