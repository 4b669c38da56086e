"""The default gradient step: combine losses, backward, accumulate, clip, optimizer step, AMP.

:class:`GradientStepper` is what :meth:`AbstractTrainer.train_step` uses between
``compute_batch_loss`` and the next batch; other engines can reuse it. It is stateful (it is
in every checkpoint): the optimizer and AMP scaler states live in their own entries, and the
stepper itself saves the gradients accumulated so far when a checkpoint falls between two
optimizer steps of a gradient-accumulation cycle, so such a resume is exact too.

Loss combination: a scalar loss is used as is; a dict of per-task losses goes through the
configured MTL weighting or, without a weighting, equal weights (the sum of the losses). The
weighting receives the *unscaled* losses and ``grad_scale = (1 / accumulation_steps) * AMP
scale`` (a device tensor: no host sync), the model's shared representation when it has
``rep_grad=True``, and ``on_step_end`` after every optimizer step with the mean losses of the
accumulation cycle. The task weights are returned as the weighting's lazy mapping: they are
read (one host copy) when the trainer logs them, after the step's gradient-norm sync.

Under torch.distributed (``distributed``: a
:class:`~dwi_mtl.training.distributed.DistributedContext`), :meth:`GradientStepper.grad_norm`
first averages the gradients over ranks in one collective, leaving out the shared parameters
when the weighting already averaged their per-task gradients; see ``docs/distributed.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


def total_norm(grads: list[torch.Tensor]) -> float:
    """The L2 norm of all ``grads`` together, as a Python float (one pass over each).

    The per-tensor norms are combined in float64, so that norms that each fit in float32 do
    not overflow to inf together (which would read as a non-finite gradient). On CPU they are
    combined in Python (``math.hypot``): measured in the training loop of
    ``benchmarks/bench_trainer_overhead.py``, stacking them and taking a second norm costs
    ~18 us more per step than the few scalar reads (two more small kernels and their
    allocations). On an accelerator each scalar read would be a host synchronisation: the
    norms are combined on the device and read once.
    """
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads)
    device = norms[0].device.type
    if device == "cpu":
        return math.hypot(*[float(norm) for norm in norms])
    stacked = torch.stack(norms)
    return float(torch.linalg.vector_norm(stacked if device == "mps" else stacked.double()))


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
        model: the model, for ``get_representation`` with a ``rep_grad`` weighting.
        distributed: a ``DistributedContext`` to average gradients over ranks, or None.
        notify_step_end: call ``weighting.on_step_end`` from :meth:`step` with the cycle's
            mean task losses (False for engines that call it themselves).
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
        *,
        model: Any = None,
        distributed: Any = None,
        notify_step_end: bool = False,
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
        self.model = model
        self.distributed = distributed
        if distributed is not None and weighting is not None:
            weighting.distributed = distributed
        self.nb_accumulated = 0
        self.notify_step_end = notify_step_end
        self._cycle_losses: dict[str, torch.Tensor] = {}
        self._shared_reduced = True  # every backward of the cycle averaged the shared rows
        self._synced = False
        self._released = False  # the last cycle's gradients are freed (reset when one ends)

    def backward(
        self,
        total: torch.Tensor,
        tasks: dict[str, torch.Tensor],
        representation: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> Mapping[str, Any]:
        """Accumulate the gradients of one batch; return the task weights used.

        Args:
            total: the summed loss (used as is without per-task losses or weighting).
            tasks: the per-task losses (empty for a scalar loss).
            representation: for a ``rep_grad`` weighting, the shared representation(s) the
                engine recorded; None takes it from ``model.get_representation`` (and
                releases it afterwards with ``model.clear_representation``).

        The weights are a mapping whose values may be 0-dim device tensors or lazy floats:
        ``float()`` them when logging.
        """
        self.release_gradients()  # a new cycle drops the last step's gradients (if not yet)
        self.nb_accumulated += 1
        self._synced = False
        if tasks and self.weighting is not None:
            if self.notify_step_end:
                self._record_cycle_losses(tasks)
            from_model = representation is None and getattr(self.weighting, "rep_grad", False)
            if from_model:
                get_rep = getattr(self.model, "get_representation", None)
                if callable(get_rep):
                    representation = get_rep(list(tasks))
            weights = self.weighting.backward(tasks, self.shared_params, representation,
                                              grad_scale=self._grad_scale(total))
            clear = getattr(self.model, "clear_representation", None)
            if from_model and representation is not None and callable(clear):
                clear()  # release the recorded activations (and their graph) now
            self._shared_reduced &= bool(getattr(self.weighting, "reduced_shared_gradients",
                                                 False))
            return weights if weights is not None else {}
        self._shared_reduced = False
        loss = total if self.accumulation_steps == 1 else total * (1.0 / self.accumulation_steps)
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()
        return dict.fromkeys(tasks, 1.0)

    def _grad_scale(self, like: torch.Tensor) -> torch.Tensor | float | None:
        """``(1 / N) * AMP scale`` as a device tensor (no sync); None when it is 1."""
        inverse = 1.0 / self.accumulation_steps
        if self.scaler is not None:
            return self.scaler.scale(torch.ones((), device=like.device)) * inverse
        return None if self.accumulation_steps == 1 else inverse

    def _record_cycle_losses(self, tasks: dict[str, torch.Tensor]) -> None:
        """Sum the detached task losses of the accumulation cycle (for ``on_step_end``)."""
        for name, loss in tasks.items():
            value = loss.detach()
            previous = self._cycle_losses.get(name)
            self._cycle_losses[name] = value if previous is None else previous + value

    @property
    def step_due(self) -> bool:
        """Whether enough batches were accumulated for an optimizer step."""
        return self.nb_accumulated >= self.accumulation_steps

    def grad_norm(self) -> tuple[float, float]:
        """Average over ranks (distributed), unscale (AMP), clip; return the norm before and
        after clipping."""
        self.sync_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0, 0.0
        if self.clip_grad is not None:
            before = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad))
            return before, min(before, float(self.clip_grad)) if math.isfinite(before) else before
        norm = total_norm(grads)
        return norm, norm

    def sync_gradients(self) -> None:
        """Average the accumulated gradients over ranks (no-op outside torch.distributed).

        One collective; the shared parameters are left out when every backward of the cycle
        went through a gradient weighting that already averaged their per-task gradients
        (averaging them again would be a wasted collective, and inexact for 3+ ranks).
        """
        if self.distributed is None or not self.nb_accumulated or self._synced:
            return
        params = self.params
        if self._shared_reduced and self.weighting is not None:
            shared = {id(p) for p in self.shared_params}
            params = [p for p in self.params if id(p) not in shared]
        self.distributed.average_gradients_(params)
        self._shared_reduced = True
        self._synced = True  # not twice per cycle (grad_norm may be called again)

    def step(self) -> None:
        """Apply the optimizer step (through the AMP scaler), clear the gradients, and call the
        weighting's ``on_step_end`` with the cycle's mean task losses."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        losses, count = self._cycle_losses, self.nb_accumulated
        # the gradients stay until the next batch releases them before its forward, as in the
        # canonical loop (zero_grad, forward, backward, step): released here, at the end of
        # the step, glibc may return their pages to the system (its trim threshold) and the
        # next step faults them in again (~3% slower CPU steps in bench_trainer_overhead.py
        # --malloc default)
        self._end_cycle()
        if losses and self.notify_step_end and hasattr(self.weighting, "on_step_end"):
            means = {name: value / count for name, value in losses.items()}
            if self.distributed is not None:
                stacked = self.distributed.average_(torch.stack(list(means.values())))
                means = dict(zip(means, stacked, strict=True))
            self.weighting.on_step_end(means)

    def discard(self) -> None:
        """Drop the accumulated gradients without stepping (a skipped non-finite batch)."""
        self.optimizer.zero_grad(set_to_none=True)
        self._end_cycle()

    def release_gradients(self) -> None:
        """Free the last step's gradients; a no-op mid-cycle or when already released.

        Engines call it before a batch's forward (the canonical ``zero_grad, forward, backward,
        step``: the activations never coexist with the last step's gradients) and at the end
        of a training phase; :meth:`backward` calls it too, for engines that do not.
        """
        if self.nb_accumulated == 0 and not self._released:
            self.optimizer.zero_grad(set_to_none=True)
            self._released = True

    def _end_cycle(self) -> None:
        """Reset the accumulation cycle (its gradients stay until the next release)."""
        self.nb_accumulated = 0
        self._released = False
        self._cycle_losses = {}
        self._shared_reduced = True
        self._synced = False

    def state_dict(self) -> dict[str, Any]:
        """Accumulation count and, mid-cycle, the accumulated gradients and task losses (CPU)."""
        grads = None
        if self.nb_accumulated:
            grads = [None if p.grad is None else p.grad.detach().cpu().clone() for p in self.params]
        return {"nb_accumulated": self.nb_accumulated, "grads": grads,
                "cycle_losses": {k: v.detach().cpu() for k, v in self._cycle_losses.items()},
                "shared_reduced": self._shared_reduced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the accumulation count, gradients and cycle losses."""
        self.nb_accumulated = int(state["nb_accumulated"])
        self._synced = False
        self._released = False
        self._shared_reduced = bool(state.get("shared_reduced", True))
        device = self.params[0].device if self.params else torch.device("cpu")
        self._cycle_losses = {k: v.to(device) for k, v in state.get("cycle_losses", {}).items()}
        grads = state.get("grads")
        if grads is None:
            return
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = None if grad is None else grad.to(param.device, param.dtype)
