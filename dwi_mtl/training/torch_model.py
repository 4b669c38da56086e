"""TorchModel: an architecture with its activation, criterion and optimizer (deep_pipe style).

:func:`dwi_mtl.training.train_model` drives a model through two methods:
``do_train_step(*inputs, lr, **values)`` (one optimisation step, returns the loss) and
``do_inf_step(*inputs)`` (prediction). Subclasses may take extra keyword values, e.g.
``do_train_step(self, *inputs, lr, weights)``, which ``train_model`` feeds from value policies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from dwi_mtl.errors import ConfigError, NonFiniteError

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def to_device(value: Any, device: torch.device) -> Any:
    """Move a batch element to ``device``: numpy arrays become tensors, objects with ``.to`` move.

    Lists and tuples are converted element-wise; anything else is returned unchanged.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.ascontiguousarray(value)).to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    if hasattr(value, "to"):
        return value.to(device)
    return value


class TorchModel:
    """Everything one training or inference step needs for a given architecture.

    Args:
        architecture: the network; ``architecture(*inputs)`` returns logits.
        activation: applied to the logits at inference (``nn.Softmax(-1)``, ``torch.sigmoid``,
            or ``nn.Identity()``).
        criterion: ``criterion(logits, *targets)`` returns the scalar loss.
        optimizer: a ``torch.optim.Optimizer`` built on ``architecture.parameters()``, or an
            optimizer class/factory called with those parameters (``torch.optim.Adam``).
        n_targets: how many of the trailing batch elements are targets for the criterion.
        device: where to run; by default the device of the architecture's parameters.

    Raises:
        ConfigError: when an argument has the wrong type.
    """

    def __init__(
        self,
        architecture: nn.Module,
        activation: Callable[[torch.Tensor], torch.Tensor],
        criterion: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer | OptimizerFactory,
        n_targets: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(architecture, nn.Module):
            raise ConfigError(
                "TorchModel: architecture must be a torch.nn.Module, "
                f"got {type(architecture).__name__}"
            )
        if not callable(activation) or not callable(criterion):
            raise ConfigError("TorchModel: activation and criterion must be callables")
        if n_targets < 0:
            raise ConfigError(f"TorchModel: n_targets must be >= 0, got {n_targets}")
        if device is None:
            first = next(architecture.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.architecture = architecture.to(self.device)
        self.activation = activation
        self.criterion = criterion
        self.n_targets = n_targets
        self.optimizer = self._build_optimizer(optimizer)

    def _build_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        """Return ``optimizer`` itself or build it from the architecture's parameters."""
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        if not callable(optimizer):
            raise ConfigError(
                "TorchModel: optimizer must be a torch.optim.Optimizer or an optimizer class, "
                f"got {type(optimizer).__name__}"
            )
        built = optimizer(self.architecture.parameters())
        if not isinstance(built, torch.optim.Optimizer):
            raise ConfigError(
                f"TorchModel: optimizer factory returned {type(built).__name__}, not an Optimizer"
            )
        return built

    def optimizer_options(self) -> set[str]:
        """Names of the options the optimizer's parameter groups accept (``momentum``, ...)."""
        return {key for group in self.optimizer.param_groups for key in group if key != "params"}

    def set_optimizer_options(self, **options: Any) -> None:
        """Set ``lr`` and other per-group options on every parameter group.

        Raises:
            ConfigError: for an option the optimizer does not have, naming it.
        """
        for group in self.optimizer.param_groups:
            for name in options:
                if name not in group or name == "params":
                    raise ConfigError(
                        f"TorchModel.do_train_step: unknown keyword '{name}': it is neither a "
                        "parameter of do_train_step nor an option of "
                        f"{type(self.optimizer).__name__} ({sorted(self.optimizer_options())})"
                    )
            group.update(options)

    def do_train_step(self, *inputs: Any, lr: float, **values: Any) -> float:
        """Run one optimisation step on a batch and return its loss.

        Args:
            *inputs: the batch: network inputs followed by ``n_targets`` targets (numpy arrays
                or tensors; moved to the model's device).
            lr: learning rate for this step.
            **values: other optimizer options for this step (``momentum``, ``weight_decay``).

        Returns:
            The loss as a Python float.

        Raises:
            NonFiniteError: when the loss is NaN or inf (no step is applied).
        """
        self.set_optimizer_options(lr=lr, **values)
        self.architecture.train()
        split = len(inputs) - self.n_targets
        tensors = [to_device(item, self.device) for item in inputs]
        logits = self.architecture(*tensors[:split])
        loss = self.criterion(logits, *tensors[split:])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteError(f"TorchModel.do_train_step: the loss is not finite ({value})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value

    def do_inf_step(self, *inputs: Any) -> np.ndarray:
        """Predict on a batch: ``activation(architecture(*inputs))`` in eval mode, no gradients.

        Returns:
            The predictions as a numpy array on the CPU.
        """
        was_training = self.architecture.training
        self.architecture.eval()
        try:
            with torch.no_grad():
                tensors = [to_device(item, self.device) for item in inputs]
                output = self.activation(self.architecture(*tensors))
        finally:
            self.architecture.train(was_training)
        return output.detach().cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        """Return the architecture's and the optimizer's states."""
        return {
            "architecture": self.architecture.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the states returned by :meth:`state_dict`."""
        self.architecture.load_state_dict(state["architecture"])
        self.optimizer.load_state_dict(state["optimizer"])
