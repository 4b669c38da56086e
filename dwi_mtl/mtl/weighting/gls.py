"""GLS: geometric loss strategy."""

from __future__ import annotations

from torch import Tensor

from dwi_mtl.mtl.weighting.abstract_weighting import LossWeighting


class GLS(LossWeighting):
    """Geometric loss strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019).

    Objective ``(prod_t L_t)^(1/T)``, computed as ``exp(mean(log L))`` for stability. The
    reported weights are the objective's derivatives ``GLS / (T L_t)``. Losses must be positive.
    """

    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the geometric mean of the losses and its derivatives."""
        objective = losses.log().mean().exp()
        weights = objective.detach() / (self.num_tasks * losses.detach())
        return objective, weights
