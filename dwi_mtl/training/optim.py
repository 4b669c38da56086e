"""Build a torch optimizer from a name (``"Adam"``, ``"SGD"``, ``"RAdam"``, ...) or a class."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from dwi_mtl.errors import ConfigError


def resolve_optimizer_class(optimizer: str | type) -> type:
    """Return the optimizer class named by ``optimizer`` (case-insensitive torch.optim name,
    a ``module.Class`` import path, or a class).

    Raises:
        ConfigError: naming the value when it is not an optimizer class.
    """
    if isinstance(optimizer, type):
        cls = optimizer
    elif "." in optimizer:
        from dwi_mtl.state import import_class

        try:
            cls = import_class(optimizer)
        except ImportError as exc:
            raise ConfigError(f"optimizer {optimizer!r}: {exc}") from exc
    else:
        names = {
            name.lower(): getattr(torch.optim, name)
            for name in dir(torch.optim)
            if isinstance(getattr(torch.optim, name), type)
            and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
        }
        if optimizer.lower() not in names:
            raise ConfigError(
                f"unknown optimizer {optimizer!r}; use a torch.optim name such as Adam, AdamW, "
                "SGD, RAdam, or a 'module.Class' path"
            )
        cls = names[optimizer.lower()]
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer {optimizer!r} is not a torch.optim.Optimizer subclass")
    return cls


def build_optimizer(
    optimizer: str | type,
    params: Iterable[Any],
    lr: float,
    weight_decay: float = 0.0,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Create the optimizer over ``params`` with ``lr``, ``weight_decay`` and extra kwargs."""
    cls = resolve_optimizer_class(optimizer)
    try:
        result: torch.optim.Optimizer = cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"optimizer {cls.__name__} rejects its arguments: {exc}") from exc
    return result
