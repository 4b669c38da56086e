"""The default gradient step: combine losses, backward, accumulate, clip, optimizer step, AMP.

:class:`GradientStepper` is what :meth:`AbstractTrainer.train_step` uses between
``compute_batch_loss`` and the next batch; other engines can reuse it. It is stateful (it is
in every checkpoint): the optimizer and AMP scaler states live in their own entries, and the
stepper itself saves the gradients accumulated so far when a checkpoint falls between two
optimizer steps of a gradient-accumulation cycle, so such a resume is exact too.

Loss combination: a scalar loss is used as is; a dict of per-task losses goes through the
configured MTL weighting (``weighting.backward(losses, shared_params)``, which leaves the
gradients in ``.grad`` and returns the task weights) or, without a weighting, equal weights
(the sum of the losses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from dwi_mtl.errors import ConfigError


def split_losses(losses: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return ``(total, per-task dict)`` for a scalar tensor or a dict of scalar tensors.

    Raises:
        ConfigError: when ``compute_batch_loss`` returned something else.
    """
    if isinstance(losses, torch.Tensor):
        if losses.numel() != 1:
            raise ConfigError(
                f"compute_batch_loss must return a scalar, got shape {tuple(losses.shape)}"
            )
        return (losses if losses.dim() == 0 else losses.reshape(())), {}
    if isinstance(losses, dict) and losses and all(
        isinstance(v, torch.Tensor) for v in losses.values()
    ):
        tasks = {str(name): value.reshape(()) for name, value in losses.items()}
        return torch.stack(list(tasks.values())).sum(), tasks
    raise ConfigError(
        "compute_batch_loss must return a scalar tensor or a non-empty dict of scalar tensors, "
        f"got {type(losses).__name__}"
    )


class GradientStepper:
    """Backward and optimizer steps with clipping, accumulation, weighting and AMP.

    Args:
        optimizer: the optimizer.
        params: the parameters whose gradients are clipped and measured.
        shared_params: the parameters shared by all tasks (for MTL weightings).
        clip_grad: max gradient norm (None: no clipping; the norm is still logged).
        accumulation_steps: optimizer step every N backward passes.
        weighting: an MTL weighting (``backward(losses, shared_params)``) or None.
        scaler: a ``torch.amp.GradScaler`` for mixed precision on CUDA, or None.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        shared_params: Sequence[torch.Tensor] | None = None,
        clip_grad: float | None = None,
        accumulation_steps: int = 1,
        weighting: Any = None,
        scaler: Any = None,
    ) -> None:
        if clip_grad is not None and not clip_grad > 0:
            raise ConfigError(f"clip_grad must be > 0 or None, got {clip_grad}")
        if int(accumulation_steps) < 1:
            raise ConfigError(f"gradient_accumulation_steps must be >= 1, got {accumulation_steps}")
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.shared_params = list(shared_params) if shared_params is not None else self.params
        self.clip_grad = clip_grad
        self.accumulation_steps = int(accumulation_steps)
        self.weighting = weighting
        self.scaler = scaler
        self.nb_accumulated = 0

    def backward(self, total: torch.Tensor, tasks: dict[str, torch.Tensor]) -> dict[str, float]:
        """Accumulate the gradients of one batch; return the task weights used."""
        scale = 1.0 / self.accumulation_steps
        self.nb_accumulated += 1
        if tasks and self.weighting is not None:
            scaled = {name: loss * scale for name, loss in tasks.items()}
            if self.scaler is not None:
                scaled = {name: self.scaler.scale(loss) for name, loss in scaled.items()}
            weights = self.weighting.backward(scaled, self.shared_params)
            return {name: float(w) for name, w in (weights or {}).items()}
        loss = total if self.accumulation_steps == 1 else total * scale
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()
        return {name: 1.0 for name in tasks}

    @property
    def step_due(self) -> bool:
        """Whether enough batches were accumulated for an optimizer step."""
        return self.nb_accumulated >= self.accumulation_steps

    def grad_norm(self) -> tuple[float, float]:
        """Unscale (AMP), clip, and return the gradient norm before and after clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0, 0.0
        if self.clip_grad is not None:
            before = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad))
            return before, min(before, float(self.clip_grad)) if math.isfinite(before) else before
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
        return norm, norm

    def step(self) -> None:
        """Apply the optimizer step (through the AMP scaler) and clear the gradients."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.discard()

    def discard(self) -> None:
        """Drop the accumulated gradients without stepping (a skipped non-finite batch)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nb_accumulated = 0

    def state_dict(self) -> dict[str, Any]:
        """Accumulation count and, mid-cycle, the accumulated gradients (CPU copies)."""
        grads = None
        if self.nb_accumulated:
            grads = [None if p.grad is None else p.grad.detach().cpu().clone() for p in self.params]
        return {"nb_accumulated": self.nb_accumulated, "grads": grads}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the accumulation count and gradients."""
        self.nb_accumulated = int(state["nb_accumulated"])
        grads = state.get("grads")
        if grads is None:
            return
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = None if grad is None else grad.to(param.device, param.dtype)
