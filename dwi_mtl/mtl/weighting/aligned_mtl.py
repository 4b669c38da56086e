"""Aligned-MTL: independent component alignment of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting

SCALE_MODES = ("min", "median", "rmse")


class Aligned_MTL(GramianWeighting):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023).

    Makes the task gradients orthogonal with equal norms (the condition number of the system
    becomes one): ``B = sqrt(lambda) V Sigma^(-1/2) V^T`` from the eigendecomposition of the
    Gramian restricted to its rank, ``lambda`` the smallest (``"min"``), median or mean
    (``"rmse"``) kept eigenvalue; the weights are ``B @ p`` with ``p`` the preference vector
    (ones, as the paper and LibMTL). Uses ``numpy.linalg.eigh`` (LibMTL's version calls the
    ``torch.symeig`` removed in torch 2).

    Args:
        task_names: the tasks.
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.
        pref_vector: preference weights (default ones).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        scale_mode: str = "min",
        pref_vector: Sequence[float] | None = None,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        if scale_mode not in SCALE_MODES:
            raise ConfigError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
        pref = [1.0] * self.num_tasks if pref_vector is None else [float(v) for v in pref_vector]
        if len(pref) != self.num_tasks:
            raise ConfigError(f"pref_vector needs {self.num_tasks} values, got {len(pref)}")
        self.scale_mode, self.pref_vector = scale_mode, pref
        self._config.update(scale_mode=scale_mode, pref_vector=pref)

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """``B @ pref`` with the balance transformation ``B``."""
        return balance_transformation(gram, self.scale_mode) @ np.asarray(self.pref_vector)


def balance_transformation(gram: np.ndarray, scale_mode: str = "min") -> np.ndarray:
    """The Aligned-MTL balance matrix of a Gramian (identity when the Gramian is zero)."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    tol = eigenvalues.max() * len(gram) * np.finfo(np.float32).eps
    keep = eigenvalues > tol
    if not keep.any():
        return np.eye(len(gram))
    order = np.argsort(eigenvalues[keep])[::-1]
    values, vectors = eigenvalues[keep][order], vectors[:, keep][:, order]
    lower_median = np.sort(values)[(len(values) - 1) // 2]  # as torch.median
    scale = {"min": values[-1], "median": lower_median, "rmse": values.mean()}[scale_mode]
    return np.sqrt(scale) * (vectors / np.sqrt(values)) @ vectors.T
