"""Learning-rate schedules: a float, a per-epoch list (CLI ``0.001*3 0.0001``) or a torch scheduler.

A per-epoch list gives epoch ``e`` the value ``values[e]``, and the last value for every later
epoch, so a resume that raises ``max_epochs`` continues the list correctly. A torch
``LRScheduler`` is stepped once per epoch by the trainer and checkpointed with its own
``state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dwi_mtl.errors import ConfigError


def parse_learning_rates(spec: str | float | Sequence[float | str]) -> list[float]:
    """Parse a learning-rate specification into a per-epoch list.

    Args:
        spec: a float, a list of floats, or a string such as ``"0.001*3 0.0001"`` meaning
            0.001 for three epochs then 0.0001 (items separated by spaces or commas; a list of
            such strings, as argparse ``nargs='+'`` gives, works too).

    Raises:
        ConfigError: naming the bad item when a value is not a positive number.
    """
    if isinstance(spec, (int, float)):
        items: list[str] = [repr(float(spec))]
    elif isinstance(spec, str):
        items = spec.replace(",", " ").split()
    else:
        items = [part for item in spec for part in str(item).replace(",", " ").split()]
    values: list[float] = []
    for item in items:
        value_text, _, count_text = item.partition("*")
        try:
            value = float(value_text)
            count = int(count_text) if count_text else 1
        except ValueError as exc:
            raise ConfigError(f"learning rate item {item!r} is not 'VALUE' or 'VALUE*N'") from exc
        if not value > 0 or count < 1:
            raise ConfigError(f"learning rate item {item!r} needs a value > 0 and N >= 1")
        values.extend([value] * count)
    if not values:
        raise ConfigError(f"learning rate specification {spec!r} is empty")
    return values


class LearningRateSchedule:
    """Set the optimizer's learning rate at the start of each epoch.

    Args:
        optimizer: the optimizer whose param groups receive the rate.
        learning_rates: a float, a per-epoch list or its string form (see
            :func:`parse_learning_rates`); ignored for the rate when ``scheduler`` is given,
            where it is the initial rate already set in the optimizer.
        scheduler: an optional torch LR scheduler (or a factory ``optimizer -> scheduler``),
            stepped at the end of every epoch.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        learning_rates: str | float | Sequence[float | str] = 1e-3,
        scheduler: Any | Callable[[torch.optim.Optimizer], Any] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.values = parse_learning_rates(learning_rates)
        if scheduler is not None and not hasattr(scheduler, "step"):
            scheduler = scheduler(optimizer)
        self.scheduler: Any = scheduler

    def value_at(self, epoch: int) -> float:
        """The rate of ``epoch`` from the per-epoch list (last value repeated)."""
        return self.values[min(int(epoch), len(self.values) - 1)]

    def start_epoch(self, epoch: int) -> None:
        """Apply the rate of ``epoch`` (a scheduler keeps the rate it set itself)."""
        if self.scheduler is None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.value_at(epoch)

    def end_epoch(self) -> None:
        """Step the torch scheduler, if any, once per epoch."""
        if self.scheduler is not None:
            self.scheduler.step()

    @property
    def current(self) -> float:
        """The rate of the first param group, as logged."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state (the list is configuration, rebuilt from parameters)."""
        return {"scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the torch scheduler's state."""
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
