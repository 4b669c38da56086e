"""Base classes of the MTL weightings: a model-independent ``backward`` API with checkpointed state.

A weighting receives the per-task losses of a step and the shared parameters (and, in
``rep_grad`` mode, the shared representation), and leaves in ``.grad`` exactly what the optimizer
should apply: the combined gradient on the shared parameters, each task's own gradient on its
task-specific parameters. Two families:

- :class:`LossWeighting`: the method only rescales the losses; one backward of the weighted
  objective (the task parameters then get the weighted task gradient, as that objective says).
- :class:`GradientWeighting`: the method combines the per-task gradients, computed once per step
  (see :mod:`dwi_mtl.mtl.weighting.gradients`); task parameters get their own task's gradient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import gradients as grad_ops
from dwi_mtl.mtl.weighting import gramian_passes, rep_passes
from dwi_mtl.state import derive_torch_generator

GRAD_MODES = ("loop", "vmap")


class TaskWeights(Mapping[str, float]):
    """The task weights a step used, as a read-only ``{task: float}`` mapping.

    The values stay on the device until first read, so returning them from ``backward`` forces
    no host synchronisation; the trainer reads (logs) them when it wants.

    Args:
        task_names: the task order.
        weights: ``(T,)`` tensor of weights.
    """

    def __init__(self, task_names: Sequence[str], weights: Tensor) -> None:
        self._names = list(task_names)
        self.tensor = weights.detach()
        self._values: list[float] | None = None

    def _materialize(self) -> list[float]:
        if self._values is None:
            self._values = [float(v) for v in self.tensor.double().cpu().tolist()]
        return self._values

    def __getitem__(self, name: str) -> float:
        return self._materialize()[self._names.index(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"TaskWeights({dict(zip(self._names, self._materialize()))})"


class AbsWeighting(ABC):
    """Common API of every weighting.

    Args:
        task_names: the tasks, in the order used for weights and states.
        seed: seed of the method's randomness, drawn per step from ``(seed, step)``.
    """

    def __init__(self, task_names: Sequence[str], *, seed: int = 0) -> None:
        names = list(task_names)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"task_names must be distinct strings, at least one, got {names!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.task_names = names
        self.seed = seed
        self.step = 0
        self._config: dict[str, Any] = {}
        #: set by the trainer under torch.distributed (a ``DistributedContext``): loss values,
        #: and a gradient method's per-task gradients, are then averaged over ranks.
        self.distributed: Any = None
        #: whether the last ``backward`` left shared gradients already averaged over ranks.
        self.reduced_shared_gradients = False

    @property
    def num_tasks(self) -> int:
        """Number of tasks ``T``."""
        return len(self.task_names)

    @abstractmethod
    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        representation: Tensor | Sequence[Tensor] | None = None,
        *,
        grad_scale: Tensor | float | None = None,
    ) -> TaskWeights:
        """Backpropagate the per-task losses, leaving in ``.grad`` what the optimizer applies.

        Args:
            losses: ``{task: scalar loss}`` for every task of ``task_names``, unscaled.
            shared_params: the shared parameters (``model.get_share_params()``).
            representation: the shared representation(s) the heads consume (``rep_grad``).
            grad_scale: a factor for every gradient left in ``.grad`` (gradient accumulation's
                ``1/N`` times the AMP loss scale, e.g. ``scaler.scale(torch.ones(()))`` which
                needs no sync). The method itself sees the unscaled losses and gradients, so
                non-homogeneous methods (UW, STCH, FAMO, Nash-MTL, ...) stay correct; the
                backward passes run on scaled losses (no fp16 underflow).

        Returns:
            The task weights used (a lazy ``{task: float}`` mapping).
        """

    def parameters(self) -> list[Tensor]:
        """Learnable weighting parameters the trainer adds to its optimizer (often none)."""
        return []

    def to(self, device: torch.device | str) -> AbsWeighting:
        """Move the learnable parameters in place (call before building the optimizer)."""
        for p in self.parameters():
            p.data = p.data.to(device)
        return self

    def on_step_end(self, losses: Mapping[str, Tensor | float]) -> None:  # noqa: B027
        """Hook called by the trainer after each optimizer step with the step's losses."""

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027
        """Hook called by the trainer at the end of each training epoch."""

    def get_config(self) -> dict[str, Any]:
        """Return the JSON-able constructor arguments (rebuild with ``get_weighting``)."""
        return {"name": type(self).__name__, "task_names": list(self.task_names),
                "seed": self.seed, **self._config}

    def state_dict(self) -> dict[str, Any]:
        """Return the step counter and the method's state (CPU tensors, numbers)."""
        state = {"step": self.step, "task_names": list(self.task_names)}
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ConfigError: when the state was saved for other tasks.
        """
        if list(state.get("task_names", self.task_names)) != self.task_names:
            raise ConfigError(
                f"weighting state is for tasks {state.get('task_names')}, not {self.task_names}"
            )
        self.step = int(state["step"])
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        """Method-specific state; override together with :meth:`_load_extra_state`."""
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027
        """Restore what :meth:`_extra_state` returned."""

    def _stack(self, losses: Mapping[str, Tensor]) -> list[Tensor]:
        """Return the losses as a list in task order, validating names and shapes.

        Raises:
            ConfigError: naming the missing or unexpected tasks, or a non-scalar loss.
        """
        missing = [n for n in self.task_names if n not in losses]
        extra = [n for n in losses if n not in self.task_names]
        if missing or extra:
            raise ConfigError(
                f"losses must have exactly the tasks {self.task_names}: missing {missing}, "
                f"unexpected {extra}"
            )
        out = []
        for name in self.task_names:
            loss = losses[name]
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ConfigError(f"losses['{name}'] must be a scalar tensor")
            out.append(loss.reshape(()))
        return out

    def _global_values(self, values: list[Tensor]) -> list[Tensor]:
        """Under torch.distributed, give each loss the value averaged over ranks.

        The gradient stays this rank's (``v - v.detach() + mean``), so a method's weights,
        computed from the loss values, are the same on every rank and equal to those of one
        process on the global batch, while the gradients still need the usual averaging.
        """
        if self.distributed is None:
            return values
        means = self.distributed.average_(torch.stack([v.detach() for v in values]))
        return [v - v.detach() + means[i] for i, v in enumerate(values)]

    def _generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from ``(seed, step)``: reproducible and resumable randomness."""
        return derive_torch_generator(self.seed, self.step, device=str(device))


class LossWeighting(AbsWeighting):
    """A weighting that only rescales the losses: one backward of the weighted objective."""

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        representation: Tensor | Sequence[Tensor] | None = None,
        *,
        grad_scale: Tensor | float | None = None,
    ) -> TaskWeights:
        """Backpropagate ``combine_losses`` of the losses (see :meth:`AbsWeighting.backward`)."""
        values = self._global_values(self._stack(losses))
        self.reduced_shared_gradients = False
        objective, weights = self.combine_losses(torch.stack(values))
        (objective if grad_scale is None else objective * grad_scale).backward()
        self.step += 1
        return TaskWeights(self.task_names, weights)

    @abstractmethod
    def combine_losses(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return the scalar objective to backpropagate and the ``(T,)`` task weights."""


class GradientWeighting(AbsWeighting):
    """A weighting that combines per-task gradients computed once per step.

    Args:
        task_names: the tasks.
        rep_grad: take the per-task gradients at the shared representation passed to
            ``backward`` (one encoder pass) instead of at the shared parameters.
        grad_mode: ``"loop"`` (``T`` backward passes) or ``"vmap"`` (one batched pass) for the
            parameter-mode gradients.
        seed: seed of the method's randomness.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        *,
        rep_grad: bool = False,
        grad_mode: str = "loop",
        seed: int = 0,
    ) -> None:
        super().__init__(task_names, seed=seed)
        if grad_mode not in GRAD_MODES:
            raise ConfigError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
        self.rep_grad = bool(rep_grad)
        self.grad_mode = grad_mode
        self._matrix: Tensor | None = None  # reused flat storage of the loop mode's matrix
        self._rep_matrix: Tensor | None = None  # the same for rep_grad's matrix
        self._grad_scale: Tensor | float | None = None
        self._config.update(rep_grad=self.rep_grad, grad_mode=grad_mode)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        representation: Tensor | Sequence[Tensor] | None = None,
        *,
        grad_scale: Tensor | float | None = None,
    ) -> TaskWeights:
        """Combine the per-task gradients (see :meth:`AbsWeighting.backward`).

        Raises:
            ConfigError: ``rep_grad`` without a representation, or no shared parameter.
        """
        stacked = self._stack(losses)
        if type(self).transform_losses is not GradientWeighting.transform_losses:
            stacked = self._global_values(stacked)  # a transform needs the global values
        values = self.transform_losses(stacked)
        self._grad_scale = grad_scale
        self.reduced_shared_gradients = False
        scaled = values if grad_scale is None else [v * grad_scale for v in values]
        if self.plain_sum_this_step():
            torch.autograd.backward(torch.stack(scaled).sum())
            self.step += 1
            return TaskWeights(self.task_names, torch.ones(self.num_tasks))
        detached = torch.stack(values).detach()
        if self.rep_grad:
            if self.distributed is not None:
                raise ConfigError("rep_grad=True cannot run under torch.distributed: the rows "
                                  "at the representation are per-sample; use rep_grad=False")
            reps = _as_tensor_list(representation, "representation (rep_grad=True)")
            buffer = self._buffer_for(reps, "_rep_matrix")
            reached = rep_passes.head_pass(scaled, reps, _shared_or_none(shared_params), buffer)
            if reached is None:  # the graph needs the generic path
                matrix = grad_ops.representation_gradients(scaled, reps, out=buffer)
            else:
                matrix = buffer
            combined, weights = self._combine_unscaled(matrix, detached, grad_scale)
            if reached is None:
                grad_ops.backward_through_representation(scaled, reps, combined)
            else:
                rep_passes.encoder_pass(reached, reps, combined)
        else:
            shared = [p for p in _as_tensor_list(shared_params, "shared_params") if p.requires_grad]
            if not shared:
                raise ConfigError("shared_params has no parameter that requires grad")
            weights = self._parameter_mode(scaled, detached, shared, grad_scale)
        self.step += 1
        return TaskWeights(self.task_names, weights)

    def _parameter_mode(
        self,
        losses: list[Tensor],
        values: Tensor,
        shared: list[Tensor],
        grad_scale: Tensor | float | None,
    ) -> Tensor:
        """Per-task gradients at the shared parameters, combined into their ``.grad``.

        Args:
            losses: the (scaled) losses to differentiate.
            values: their unscaled values, detached.
            shared: the shared parameters.
            grad_scale: see :meth:`AbsWeighting.backward`.

        Returns:
            The ``(T,)`` weights used.
        """
        if self.grad_mode == "vmap":
            matrix = grad_ops.batched_gradients(losses, shared)
        else:
            matrix = grad_ops.loop_gradients(losses, shared, out=self._buffer_for(shared))
        matrix, values = self._reduce_rows(matrix, values)
        combined, weights = self._combine_unscaled(matrix, values, grad_scale)
        grad_ops.write_shared_gradient(shared, combined)
        return weights

    def _reduce_rows(self, matrix: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Average the ``(T, n)`` matrix and the loss values over ranks in one collective.

        Afterwards every rank combines the same rows into the same shared gradient, as one
        process would with the global batch, so the trainer leaves the shared parameters out
        of its own gradient averaging (:attr:`reduced_shared_gradients`).
        """
        if self.distributed is None:
            return matrix, losses
        flat = torch.cat([matrix.reshape(-1), losses.to(matrix.dtype)])
        self.distributed.average_(flat)
        matrix.copy_(flat[: matrix.numel()].view_as(matrix))
        self.reduced_shared_gradients = True
        return matrix, flat[matrix.numel():].to(losses.dtype)

    def _combine_unscaled(
        self, matrix: Tensor, losses: Tensor, grad_scale: Tensor | float | None
    ) -> tuple[Tensor, Tensor]:
        """Run :meth:`combine` on unscaled gradients; return the combination scaled back."""
        if grad_scale is None:
            return self.combine(matrix, losses)
        combined, weights = self.combine(matrix.div_(grad_scale), losses)
        return combined * grad_scale, weights

    def _scale_own_gradient(self, grad: Tensor) -> Tensor:
        """Scale a gradient a method sets on its own parameters like every other gradient."""
        scale = getattr(self, "_grad_scale", None)
        return grad if scale is None else grad * scale

    def _buffer_for(self, tensors: list[Tensor], attribute: str = "_matrix") -> Tensor:
        """A ``(T, n)`` gradient matrix for ``tensors`` on storage reused across steps.

        The storage (slot ``attribute``: ``"_matrix"`` in parameter mode, ``"_rep_matrix"``
        with ``rep_grad``) is kept while dtype and device match and it is large enough, so a
        representation whose size changes with the batch does not allocate a fresh matrix
        (page faults on CPU) at every step; the matrix is a contiguous view of its start.
        """
        size = sum(t.numel() for t in tensors)
        ref = tensors[0]
        storage = getattr(self, attribute)
        if (
            storage is None
            or storage.numel() < self.num_tasks * size
            or storage.dtype != ref.dtype
            or storage.device != ref.device
        ):
            storage = grad_ops.new_matrix(self.num_tasks, tensors).view(-1)
            setattr(self, attribute, storage)
        return storage[: self.num_tasks * size].view(self.num_tasks, size)

    def transform_losses(self, losses: list[Tensor]) -> list[Tensor]:
        """Per-task loss transform applied before differentiation (identity by default)."""
        return losses

    def plain_sum_this_step(self) -> bool:
        """Whether this step is a plain equal-weight step (warm-up windows); False by default."""
        return False

    @abstractmethod
    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Combine the ``(T, n)`` gradient matrix into ``(n,)``; also return the ``(T,)`` weights.

        Args:
            grads: per-task gradients, one row per task.
            losses: the (transformed) loss values, detached.
        """


class GramianWeighting(GradientWeighting):
    """A gradient method whose combination is ``w @ J`` with ``w`` computed from ``J J^T``.

    The ``T x T`` Gramian (with the loss values) is the only thing copied to the host (float64)
    per step. In parameter mode with ``grad_mode="loop"``, not distributed and at most
    :data:`~dwi_mtl.mtl.weighting.gramian_passes.MAX_TASKS` tasks, the passes run through
    :func:`~dwi_mtl.mtl.weighting.gramian_passes.gramian_backward`: the last task's gradient is
    never stored nor read back, and ``w @ J`` is written over it in place.
    """

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(w @ grads, w)`` with ``w = weights_from_gramian(...)``."""
        weights = self._host_weights(grad_ops.gramian(grads), losses, None)
        w = torch.as_tensor(weights, dtype=grads.dtype).to(grads.device, non_blocking=True)
        return w @ grads, w

    def _parameter_mode(
        self,
        losses: list[Tensor],
        values: Tensor,
        shared: list[Tensor],
        grad_scale: Tensor | float | None,
    ) -> Tensor:
        """The fused Gramian passes where they apply, else the generic path."""
        if (
            self.grad_mode != "loop"
            or self.distributed is not None
            or self.num_tasks > gramian_passes.MAX_TASKS
        ):
            return super()._parameter_mode(losses, values, shared, grad_scale)
        used: list[np.ndarray] = []

        def weights_of(gram: Tensor) -> np.ndarray:
            used.append(self._host_weights(gram, values, grad_scale))
            return used[0]

        head = self._buffer_for(shared)[: self.num_tasks - 1]
        gramian_passes.gramian_backward(losses, shared, head, weights_of)
        ref = shared[0]
        return torch.as_tensor(used[0], dtype=ref.dtype).to(ref.device, non_blocking=True)

    def _host_weights(
        self, gram: Tensor, losses: Tensor, grad_scale: Tensor | float | None
    ) -> np.ndarray:
        """Copy the Gramian (unscaled by ``grad_scale``) and the losses to the host in one
        transfer and return :meth:`weights_from_gramian` (ones if the Gramian overflowed)."""
        if grad_scale is not None:
            gram = gram / (grad_scale * grad_scale)
        tasks = self.num_tasks
        if gram.device.type == "cpu" and losses.device.type == "cpu":  # no transfer to batch
            matrix = gram.double().numpy()
            losses_host = losses.reshape(-1).double()
        else:
            values = torch.cat(
                [gram.reshape(-1).double(), losses.reshape(-1).to(gram.device).double()]
            ).cpu().numpy()
            matrix = values[: tasks * tasks].reshape(tasks, tasks)
            losses_host = torch.from_numpy(values[tasks * tasks:])
        if not np.isfinite(matrix).all():  # overflowed (AMP): let the step be skipped downstream
            return np.ones(tasks)
        return np.asarray(self.weights_from_gramian(matrix, losses_host))

    @abstractmethod
    def weights_from_gramian(self, gram: np.ndarray, losses: Tensor) -> np.ndarray:
        """Return the ``(T,)`` weights of the rows given the float64 Gramian.

        Args:
            gram: the ``(T, T)`` Gramian of the unscaled gradients, float64, on the host.
            losses: the (transformed) loss values, float64, on the host.
        """


def _shared_or_none(value: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    """The shared tensors as a list (``rep_grad`` does not require them: empty if absent)."""
    if value is None:
        return []
    return [value] if isinstance(value, Tensor) else [t for t in value if isinstance(t, Tensor)]


def _as_tensor_list(value: Tensor | Sequence[Tensor] | None, name: str) -> list[Tensor]:
    """Return ``value`` as a non-empty list of tensors, or raise a ConfigError naming it."""
    if value is None:
        raise ConfigError(f"{name} is required")
    tensors = [value] if isinstance(value, Tensor) else list(value)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise ConfigError(f"{name} must be a tensor or a non-empty sequence of tensors")
    return list({id(t): t for t in tensors}.values())  # each tensor once
