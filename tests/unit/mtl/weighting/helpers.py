"""A small real multi-task model (shared encoder + task heads) for the weighting tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dwi_mtl.mtl.weighting import WEIGHTINGS

LOSS_BASED = ("ew", "uw", "dwa", "gls", "rlw", "famo", "stch")
GRADIENT_BASED = tuple(name for name in WEIGHTINGS if name not in LOSS_BASED)


class TinyMTL(nn.Module):
    """Shared MLP encoder and one regression head per task."""

    def __init__(self, tasks: list[str], in_dim: int = 6, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tasks = tasks
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in tasks})

    def get_share_params(self) -> list[Tensor]:
        return list(self.encoder.parameters())

    def losses(self, x: Tensor, targets: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        rep = self.encoder(x)
        out = {t: ((self.heads[t](rep) - targets[t]) ** 2).mean() + 0.1 for t in self.tasks}
        return out, rep


def batch(tasks: list[str], step: int, in_dim: int = 6, size: int = 12) -> tuple[Tensor, dict]:
    """A deterministic regression batch for a given step."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, in_dim, generator=gen)
    targets = {t: torch.randn(size, 1, generator=gen) * (i + 1) for i, t in enumerate(tasks)}
    return x, targets
