"""Per-task loss averages over windows of steps or epochs.

LibMTL ties DWA, GradNorm's reference loss and STCH's warm-up to epochs; streaming data may
have no natural epoch. :class:`LossWindows` averages the per-task losses over consecutive
windows that close either at the end of each epoch (``window="epoch"``) or every ``N`` steps
(``window=N``), and keeps the first and the last few window means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from dwi_mtl.errors import ConfigError


def check_window(window: str | int, name: str = "window") -> str | int:
    """Validate a window argument: ``"epoch"`` or a positive number of steps.

    Raises:
        ConfigError: naming the argument, for any other value.
    """
    if window == "epoch":
        return window
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ConfigError(f"{name} must be 'epoch' or a positive number of steps, got {window!r}")
    return window


class LossWindows:
    """Running per-task loss means over windows of steps or epochs.

    Sums stay on the losses' device (no host synchronisation); a window's mean is stored when
    the window closes.

    Args:
        task_names: task order of the loss vectors.
        window: ``"epoch"`` (closed by :meth:`end_epoch`) or a number of steps.
        keep_last: how many of the latest window means to keep (the first is always kept).
    """

    def __init__(self, task_names: Sequence[str], window: str | int, keep_last: int = 2) -> None:
        self.task_names = list(task_names)
        self.window = check_window(window)
        self.keep_last = keep_last
        self.completed = 0
        self.first: Tensor | None = None
        self.last: list[Tensor] = []
        self._sum: Tensor | None = None
        self._steps = 0

    def add(self, losses: Mapping[str, Tensor | float]) -> None:
        """Add one step's losses; close the window when it is a step window that is full."""
        values = torch.stack([torch.as_tensor(losses[n]).detach().float() for n in self.task_names])
        self._sum = values if self._sum is None else self._sum + values.to(self._sum.device)
        self._steps += 1
        if self.window != "epoch" and self._steps >= int(self.window):
            self._close()

    def end_epoch(self) -> None:
        """Close the current window when windows are epochs."""
        if self.window == "epoch":
            self._close()

    def _close(self) -> None:
        if self._sum is None or self._steps == 0:
            return
        mean = self._sum / self._steps
        if self.first is None:
            self.first = mean
        self.last = (self.last + [mean])[-self.keep_last :]
        self.completed += 1
        self._sum, self._steps = None, 0

    def state_dict(self) -> dict[str, Any]:
        """Return the window sums and means as CPU tensors."""
        return {
            "completed": self.completed,
            "first": None if self.first is None else self.first.cpu(),
            "last": [m.cpu() for m in self.last],
            "sum": None if self._sum is None else self._sum.cpu(),
            "steps": self._steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.completed = int(state["completed"])
        self.first = None if state["first"] is None else torch.as_tensor(state["first"])
        self.last = [torch.as_tensor(m) for m in state["last"]]
        self._sum = None if state["sum"] is None else torch.as_tensor(state["sum"])
        self._steps = int(state["steps"])
