"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.mtl.weighting.abstract_weighting import GramianWeighting


class PCGrad(GramianWeighting):
    """Gradient surgery (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    For each task ``i``, ``g_i`` is projected onto the normal plane of every other ``g_j`` it
    conflicts with (negative inner product), visiting the others in a random order; the
    projected gradients are summed. Everything is done on the Gramian (each projected gradient
    is a combination of the original ones), so the big gradients are touched once. The order is
    drawn from a generator seeded by ``(seed, step)``.
    """

    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """Sum over tasks of the coefficients of the projected gradient."""
        size = gram.shape[0]
        generator = self._generator()
        weights = np.zeros(size)
        for i in range(size):
            order = torch.randperm(size, generator=generator).tolist()
            coefficients = np.zeros(size)
            coefficients[i] = 1.0
            for j in order:
                if j == i:
                    continue
                inner = float(gram[j] @ coefficients)
                if inner < 0.0 and gram[j, j] > 0.0:
                    coefficients[j] -= inner / gram[j, j]
            weights += coefficients
        return weights
