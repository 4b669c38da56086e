"""The base class of every MTL architecture: task bookkeeping, shared parameters, rep_grad.

An architecture splits a multi-task network into a *shared part* (the parameters that influence
several tasks, returned by :meth:`AbsArchitecture.get_share_params`) and *task-specific parts*
(the decoders, gates, attention modules, ... of one task). With ``rep_grad=True`` it records the
*representation*: the tensors at the cut between the two parts. Every shared parameter reaches
the losses only through these tensors, and no task-specific parameter lies upstream of them, so
a weighting can take per-task gradients at the representation (cheap: the encoder is not
traversed) and push one combined gradient back into the encoder (see
``docs/mtl_architectures.md``, section "rep_grad").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError

#: Key under which a representation shared by all tasks is recorded.
SHARED_KEY = "__shared__"


class AbsArchitecture(nn.Module):
    """An abstract multi-task architecture (LibMTL's interface, for any encoder).

    Args:
        task_name: the names of all tasks, in order.
        encoder_class: a class or zero-argument factory returning a new encoder ``nn.Module``;
            architectures with several experts or columns call it once per copy.
        decoders: ``{task: nn.Module}`` mapping each task's representation to its prediction.
        rep_grad: record the shared representation so that per-task gradients can be taken
            there (:meth:`get_representation`).
        multi_input: each task has its own input; ``forward(inputs, task_name)`` then computes
            that task only.
        device: where the parameters live (``"cpu"``, ``"cuda"``, a ``torch.device``).
        **kwargs: hyper-parameters of the architecture (see each subclass).

    Raises:
        ConfigError: for an empty or duplicated ``task_name``, decoders that do not match the
            tasks, or an ``encoder_class`` that does not build an ``nn.Module``.
    """

    #: Name of the architecture in the registry (:func:`get_architecture`).
    arch_name = "abstract"

    def __init__(
        self,
        task_name: Sequence[str],
        encoder_class: Callable[[], nn.Module],
        decoders: Mapping[str, nn.Module],
        rep_grad: bool,
        multi_input: bool,
        device: str | torch.device,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.task_name = _check_task_names(task_name)
        self.task_num = len(self.task_name)
        if not callable(encoder_class):
            raise ConfigError(f"encoder_class must be a class or a factory, got {encoder_class!r}")
        self.encoder_class = encoder_class
        self.decoders = nn.ModuleDict(_check_decoders(decoders, self.task_name))
        self.rep_grad = bool(rep_grad)
        self.multi_input = bool(multi_input)
        self.device = torch.device(device)
        self.kwargs = dict(kwargs)
        self._representation: dict[str, tuple[Tensor, ...]] = {}

    # ------------------------------------------------------------------ construction helpers
    def _make_encoder(self) -> nn.Module:
        """Build one new encoder with ``encoder_class`` and check that it is a module."""
        encoder = self.encoder_class()
        if not isinstance(encoder, nn.Module):
            raise ConfigError(
                f"encoder_class must build an nn.Module, {self.encoder_class!r} returned "
                f"{type(encoder).__name__}"
            )
        return encoder

    def _forbid_multi_input(self) -> None:
        """Raise when the method needs every task to see the same input."""
        if self.multi_input:
            raise ConfigError(
                f"{type(self).__name__} does not support multi_input=True: its tasks exchange "
                "features inside the encoder, so every task must see the same input"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: Any, task_name: str | None = None) -> dict[str, Tensor]:
        """Predict every task (or only ``task_name``) from ``inputs``.

        Args:
            inputs: the encoder's input: a tensor of any shape, a packed streamline batch
                (an object with ``points``/``lengths``/``inputs``), or anything the encoder
                accepts. Passed to the encoder unchanged.
            task_name: with ``multi_input``, the task whose input this is; only that task is
                predicted. Without it, every task is predicted.

        Returns:
            ``{task: prediction}``.

        Raises:
            ConfigError: if ``task_name`` is not one of the tasks.
        """
        if task_name is not None and task_name not in self.task_name:
            raise ConfigError(f"task_name '{task_name}' is not one of {self.task_name}")
        tasks = [task_name] if task_name is not None else list(self.task_name)
        if task_name is None or not self.multi_input:
            self._representation = {}
        else:
            self._representation.pop(task_name, None)
        return self._forward_tasks(inputs, tasks)

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Compute the predictions of ``tasks``; implemented by each architecture."""
        raise NotImplementedError

    def _rep_key(self, tasks: list[str]) -> str:
        """Key of a representation computed for ``tasks`` from one input."""
        return tasks[0] if self.multi_input and len(tasks) == 1 else SHARED_KEY

    def _record(self, key: str, *tensors: Any) -> tuple[Any, ...]:
        """Mark ``tensors`` as (part of) the representation and return what tasks consume.

        With ``rep_grad``, each tensor that depends on parameters is replaced by an alias
        (a view, no copy) that only task-specific modules consume: the gradient at the alias is
        then the gradient through the task-specific parts only, even when the original tensor
        also feeds later shared stages (MTAN), so ``backward(alias, grad)`` is exact.
        """
        if not self.rep_grad:
            return tensors
        out = tuple(t.view_as(t) if _needs_grad(t) else t for t in tensors)
        recorded = tuple(t for t in out if _needs_grad(t))
        if recorded:
            self._representation[key] = self._representation.get(key, ()) + recorded
        return out

    # ------------------------------------------------------------------ rep_grad
    def get_representation(self, task_names: Iterable[str] | None = None) -> list[Tensor]:
        """Return the representation tensors recorded by the last forward pass(es).

        Args:
            task_names: restrict to the representations used by these tasks (with
                ``multi_input`` each task's forward records its own); default: all recorded.

        Returns:
            The tensors (attached to the graph) at the cut between the shared part and the
            task-specific parts. Per-task gradients there are ``torch.autograd.grad(loss_t,
            reps, retain_graph=True, allow_unused=True)``; ``torch.autograd.backward(reps,
            grads)`` then fills the shared parameters' ``.grad``.

        Raises:
            ConfigError: if ``rep_grad`` is False or nothing was recorded.
        """
        if not self.rep_grad:
            raise ConfigError(f"{type(self).__name__} was built with rep_grad=False")
        wanted = None if task_names is None else set(task_names) | {SHARED_KEY}
        reps = [
            t
            for key, tensors in self._representation.items()
            if wanted is None or key in wanted
            for t in tensors
        ]
        if not reps:
            raise ConfigError("no representation recorded: call forward() first")
        return reps

    def clear_representation(self) -> None:
        """Drop the recorded representation (and the graph it keeps alive)."""
        self._representation = {}

    # ------------------------------------------------------------------ parameters
    def shared_modules(self) -> list[nn.Module | nn.Parameter]:
        """The modules (or bare parameters) that are shared; implemented by each architecture."""
        raise NotImplementedError

    def get_share_params(self) -> list[nn.Parameter]:
        """Return the shared parameters (each once), disjoint from the task-specific ones."""
        seen: set[int] = set()
        params: list[nn.Parameter] = []
        for item in self.shared_modules():
            for param in [item] if isinstance(item, nn.Parameter) else item.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
        return params

    def get_task_params(self) -> list[nn.Parameter]:
        """Return every parameter that is not shared (decoders, gates, attention, ...)."""
        shared = {id(p) for p in self.get_share_params()}
        return [p for p in self.parameters() if id(p) not in shared]

    def zero_grad_share_params(self) -> None:
        """Set the gradients of the shared parameters to zero (in place, keeping the tensors)."""
        for param in self.get_share_params():
            if param.grad is not None:
                param.grad.detach_()
                param.grad.zero_()

    def get_config(self) -> dict[str, Any]:
        """Return the JSON-able description of the architecture (name, tasks, options).

        Encoder and decoders are built objects and are recorded by whoever built them.
        """
        kwargs = {k: v for k, v in self.kwargs.items() if _is_jsonable(v)}
        return {
            "name": self.arch_name,
            "task_name": list(self.task_name),
            "rep_grad": self.rep_grad,
            "multi_input": self.multi_input,
            "kwargs": kwargs,
        }


def _check_task_names(task_name: Sequence[str]) -> list[str]:
    """Validate the list of task names (non-empty, unique strings)."""
    if isinstance(task_name, str) or not isinstance(task_name, Sequence):
        raise ConfigError(f"task_name must be a list of task names, got {task_name!r}")
    names = list(task_name)
    if not names:
        raise ConfigError("task_name must name at least one task")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ConfigError(f"task_name entries must be non-empty strings, got {bad}")
    if len(set(names)) != len(names):
        raise ConfigError(f"task_name has duplicated tasks: {names}")
    return names


def _check_decoders(decoders: Mapping[str, nn.Module], tasks: list[str]) -> dict[str, nn.Module]:
    """Check that ``decoders`` holds exactly one ``nn.Module`` per task."""
    if not isinstance(decoders, Mapping):
        raise ConfigError(f"decoders must be a dict {{task: nn.Module}}, got {type(decoders)}")
    missing = [t for t in tasks if t not in decoders]
    extra = [t for t in decoders if t not in tasks]
    if missing or extra:
        raise ConfigError(
            f"decoders must match task_name {tasks}: missing {missing}, extra {extra}"
        )
    for task in tasks:
        if not isinstance(decoders[task], nn.Module):
            raise ConfigError(f"decoders['{task}'] must be an nn.Module")
    return {task: decoders[task] for task in tasks}


def _needs_grad(value: Any) -> bool:
    """Whether ``value`` is a tensor that autograd tracks."""
    return isinstance(value, Tensor) and value.requires_grad


def _is_jsonable(value: Any) -> bool:
    """Whether ``value`` is made of JSON types only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_jsonable(v) for k, v in value.items())
    return False


def positive_int(kwargs: Mapping[str, Any], name: str, default: int | None = None) -> int:
    """Read a positive integer hyper-parameter from ``kwargs``, raising a clear ConfigError."""
    value = kwargs.get(name, default)
    if value is None:
        raise ConfigError(f"missing architecture argument '{name}' (a positive integer)")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"architecture argument '{name}' must be a positive integer, got {value!r}"
        )
    return value
