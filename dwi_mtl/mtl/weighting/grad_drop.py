"""GradDrop: gradient sign dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting.abstract_weighting import GradientWeighting


class GradDrop(GradientWeighting):
    """Gradient sign dropout (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models
    with Gradient Sign Dropout", NeurIPS 2020).

    Per coordinate, the sign purity ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` sets the chance
    of keeping the positive components (otherwise the negative ones); a task's kept fraction is
    ``leak + (1 - leak) * mask``. The paper applies it at the representation: use
    ``rep_grad=True``. Uniform draws come from a generator seeded by ``(seed, step)``, on the
    gradients' device. Reported weights are the kept fraction of each task's coordinates.

    Args:
        task_names: the tasks.
        leak: per-task leak in [0, 1] (0: pure GradDrop).
        rep_grad, grad_mode, seed: see :class:`GradientWeighting`.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        leak: float | Sequence[float] = 0.0,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, rep_grad=rep_grad, grad_mode=grad_mode, seed=seed)
        leaks = [float(leak)] * self.num_tasks if isinstance(leak, int | float) else list(leak)
        if len(leaks) != self.num_tasks or not all(0.0 <= v <= 1.0 for v in leaks):
            raise ConfigError(f"leak must be one value or one per task, all in [0, 1]; got {leak}")
        self.leak = leaks
        self._config.update(leak=leaks)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the sign-dropped sum of the gradients and the kept fractions."""
        purity = 0.5 * (1.0 + grads.sum(dim=0) / grads.abs().sum(dim=0))
        uniform = torch.rand(
            purity.shape, generator=self._generator(grads.device), dtype=grads.dtype,
            device=grads.device,
        )
        keep_positive, keep_negative = purity > uniform, purity < uniform
        leak = torch.tensor(self.leak, dtype=grads.dtype, device=grads.device)[:, None]
        masks = keep_positive[None] * (grads > 0) + keep_negative[None] * (grads < 0)
        kept = leak + (1.0 - leak) * masks
        return (kept * grads).sum(dim=0), kept.mean(dim=1)
