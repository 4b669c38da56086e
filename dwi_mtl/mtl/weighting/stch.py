"""STCH: smooth Tchebycheff scalarization with a warm-up over windows of steps or epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import LossWeighting
from dwi_mtl.mtl.weighting.loss_windows import LossWindows

_EPS = 1e-20


class STCH(LossWeighting):
    """Smooth Tchebycheff scalarization (Lin et al., "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024).

    During the warm-up (the first ``warmup`` windows) the objective is ``sum_t log L_t``; the
    mean loss of the last warm-up window becomes the nadir vector ``z``; afterwards the
    objective is ``T * mu * logsumexp(log(L_t / z_t) / mu)``. LibMTL counts the warm-up in
    epochs; here a window is an epoch or ``N`` steps. Reported weights are the softmax weights
    (times ``T``) on the normalised log-losses (``1 / L_t`` during the warm-up).

    Args:
        task_names: the tasks.
        mu: smoothing parameter (small: close to the Tchebycheff max).
        warmup: number of warm-up windows (0: no normalisation, ``z = 1``).
        window: ``"epoch"`` or a number of steps.
        seed: unused.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        mu: float = 1.0,
        warmup: int = 1,
        window: str | int = "epoch",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, seed=seed)
        if mu <= 0:
            raise ConfigError(f"mu must be positive, got {mu}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(f"warmup must be a non-negative integer, got {warmup!r}")
        self.mu = float(mu)
        self.warmup = warmup
        self.windows = LossWindows(self.task_names, window, keep_last=1)
        self.nadir: Tensor | None = None
        self._config.update(mu=self.mu, warmup=warmup, window=window)

    def in_warmup(self) -> bool:
        """Whether the warm-up windows are still running."""
        return self.windows.completed < self.warmup

    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the STCH (or warm-up) objective and its weights."""
        if self.in_warmup():
            return torch.log(losses + _EPS).sum(), (1.0 / (losses.detach() + _EPS))
        if self.nadir is None:
            last = self.windows.last
            self.nadir = last[-1].detach().clone() if last else torch.ones(self.num_tasks)
        nadir = self.nadir.to(losses.device, losses.dtype)
        normalized = torch.log(losses / nadir + _EPS)
        objective = self.num_tasks * self.mu * torch.logsumexp(normalized / self.mu, dim=0)
        weights = self.num_tasks * torch.softmax(normalized.detach() / self.mu, dim=0)
        return objective, weights

    def on_step_end(self, losses: Mapping[str, Tensor | float]) -> None:
        """Record the losses while the warm-up runs."""
        if self.in_warmup():
            self.windows.add(losses)

    def on_epoch_end(self, epoch: int) -> None:
        """Close the window when windows are epochs."""
        if self.in_warmup():
            self.windows.end_epoch()

    def _extra_state(self) -> dict[str, Any]:
        nadir = None if self.nadir is None else self.nadir.cpu()
        return {"windows": self.windows.state_dict(), "nadir": nadir}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.windows.load_state_dict(state["windows"])
        self.nadir = None if state["nadir"] is None else torch.as_tensor(state["nadir"])
