"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import gradients as grad_ops
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
        """Return the min-norm combination of the normalised gradients and its weights.

        The normalised rows ``g_i / s_i`` are never built: their Gramian is ``G_ij / (s_i
        s_j)`` and their combination ``sum_i w_i g_i / s_i`` is ``(w / s) @ grads``, so the
        ``(T, n)`` matrix is read twice (Gramian, combination) and never copied.
        """
        gram = grad_ops.gramian(grads)
        scale = self._normalizers(gram, losses.to(grads.device))
        normalized = (gram / (scale[:, None] * scale[None, :])).double().cpu().numpy()
        weights = torch.as_tensor(min_norm_simplex(normalized), dtype=grads.dtype)
        coefficients = weights.to(grads.device) / scale
        return coefficients @ grads, coefficients

    def _normalizers(self, gram: Tensor, losses: Tensor) -> Tensor:
        """The ``(T,)`` normalisers ``s``; the norms come from the Gramian's diagonal."""
        if self.normalization == "none":
            return torch.ones(gram.shape[0], dtype=gram.dtype, device=gram.device)
        norms = gram.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-12)
        if self.normalization == "l2":
            return norms
        values = losses.to(gram.dtype).clamp_min(1e-12)
        return values if self.normalization == "loss" else values * norms


def min_norm_weights(gram: np.ndarray) -> np.ndarray:
    """The MGDA weights of a Gramian (exposed for tests and other methods)."""
    return min_norm_simplex(gram)
