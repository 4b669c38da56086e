"""EW: equal weighting, the baseline every method is compared to."""

from __future__ import annotations

import torch
from torch import Tensor

from dwi_mtl.mtl.weighting.abstract_weighting import LossWeighting


class EW(LossWeighting):
    """Equal weighting: backpropagate the plain sum of the task losses.

    The reference point of every multi-task comparison, e.g. in Lin et al., "Reasonable
    Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022
    (LibMTL's ``EW``): ``L = sum_t L_t``, all weights 1.
    """

    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(sum(L), ones)``."""
        return losses.sum(), torch.ones_like(losses).detach()
