"""RLW: random loss weighting."""

from __future__ import annotations

import torch
from torch import Tensor

from dwi_mtl.mtl.weighting.abstract_weighting import LossWeighting


class RLW(LossWeighting):
    """Random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning", TMLR 2022).

    Each step draws ``w = softmax(z)``, ``z ~ N(0, I)``, from a generator seeded by
    ``(seed, step)`` (reproducible and resumable, never the global RNG), and backpropagates
    ``sum_t w_t L_t``.
    """

    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the randomly weighted sum and its weights."""
        z = torch.randn(self.num_tasks, generator=self._generator())
        weights = torch.softmax(z, dim=0).to(losses.device, losses.dtype)
        return (weights * losses).sum(), weights
