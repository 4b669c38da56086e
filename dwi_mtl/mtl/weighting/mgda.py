"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting
from dwi_mtl.mtl.weighting.solvers import min_norm_simplex

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GramianWeighting):
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

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """The min-norm weights of the normalised gradients, divided by their normalisers.

        The normalised rows ``g_i / s_i`` are never built: their Gramian is ``G_ij / (s_i
        s_j)`` and their combination ``sum_i w_i g_i / s_i`` is ``(w / s) @ grads``, so the
        returned coefficients ``w / s`` apply to the raw gradients.
        """
        scale = self._normalizers(gram, losses.double().numpy())
        weights = min_norm_simplex(gram / np.outer(scale, scale))
        return np.asarray(weights) / scale

    def _normalizers(self, gram: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """The ``(T,)`` normalisers ``s``; the norms come from the Gramian's diagonal."""
        if self.normalization == "none":
            return np.ones(gram.shape[0])
        norms = np.maximum(np.sqrt(np.clip(np.diag(gram), 0.0, None)), 1e-12)
        if self.normalization == "l2":
            return norms
        values = np.maximum(losses, 1e-12)
        return values if self.normalization == "loss" else values * norms


def min_norm_weights(gram: np.ndarray) -> np.ndarray:
    """The MGDA weights of a Gramian (exposed for tests and other methods)."""
    return min_norm_simplex(gram)
