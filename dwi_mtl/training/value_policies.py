"""Value policies: values that change with the epoch (or step) and reach ``do_train_step``.

``train_model(model, ..., lr=Exponential(1e-3, 0.5), weights=Schedule(1.0, {10: 0.1}))`` calls
``model.do_train_step(*batch, lr=<lr.value>, weights=<weights.value>)`` for every batch.

The value of the epoch-driven policies is a function of the epoch only (recomputed in
``epoch_started``), so restoring it from a checkpoint is exact and calling ``epoch_started``
twice is harmless; :class:`DecreasingOnPlateau` and :class:`Switch` keep their history in their
state instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dwi_mtl.errors import ConfigError
from dwi_mtl.training.policies import ValuePolicy


def _check_epoch_keys(name: str, mapping: Mapping[int, Any]) -> dict[int, Any]:
    """Return ``mapping`` with int keys, raising a ConfigError naming ``name`` for bad ones."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{name}: expected a dict {{epoch: value}}, got {type(mapping).__name__}")
    checked: dict[int, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise ConfigError(f"{name}: keys must be non-negative integers, got {key!r}")
        checked[int(key)] = value
    return dict(sorted(checked.items()))


class Exponential(ValuePolicy):
    """``value = initial * multiplier ** (epoch // step_length)``, clipped to a range.

    Args:
        initial: value of epoch 0.
        multiplier: factor applied every ``step_length`` epochs.
        step_length: number of epochs between two changes.
        floordiv: when False the exponent is ``epoch / step_length`` (a smooth decay).
        min_value: lower bound of the value.
        max_value: upper bound of the value.
    """

    def __init__(
        self,
        initial: float,
        multiplier: float,
        step_length: int = 1,
        floordiv: bool = True,
        min_value: float = -math.inf,
        max_value: float = math.inf,
    ) -> None:
        if step_length <= 0:
            raise ConfigError(f"Exponential: step_length must be > 0, got {step_length}")
        super().__init__(float(initial))
        self.multiplier = float(multiplier)
        self.step_length = step_length
        self.floordiv = floordiv
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def epoch_started(self, epoch: int) -> None:
        """Recompute the value for ``epoch``."""
        power = epoch // self.step_length if self.floordiv else epoch / self.step_length
        value = self.initial * self.multiplier**power
        self.value = float(min(max(value, self.min_value), self.max_value))


class Multiply(ValuePolicy):
    """Multiply the value by the given factors at the given epochs.

    ``Multiply(1e-3, {10: 0.1, 20: 0.1})`` gives 1e-3 for epochs 0-9, 1e-4 for 10-19 and 1e-5
    from epoch 20 on.

    Args:
        initial: value before the first listed epoch.
        epoch_to_multiplier: ``{epoch: factor}``; each factor applies from its epoch on.
    """

    def __init__(self, initial: float, epoch_to_multiplier: Mapping[int, float]) -> None:
        super().__init__(initial)
        self.epoch_to_multiplier = _check_epoch_keys("Multiply", epoch_to_multiplier)

    def epoch_started(self, epoch: int) -> None:
        """Recompute the value for ``epoch`` from ``initial``."""
        value = self.initial
        for start, factor in self.epoch_to_multiplier.items():
            if start <= epoch:
                value = value * factor
        self.value = value


class Schedule(ValuePolicy):
    """A piecewise-constant value: each listed epoch sets the value from that epoch on.

    ``Schedule(1e-3, {5: 1e-4, 8: 1e-5})`` gives 1e-3 for epochs 0-4, 1e-4 for 5-7 and 1e-5
    after.

    Args:
        initial: value before the first listed epoch.
        epoch_to_value: ``{epoch: value}``.
    """

    def __init__(self, initial: Any, epoch_to_value: Mapping[int, Any]) -> None:
        super().__init__(initial)
        self.epoch_to_value = _check_epoch_keys("Schedule", epoch_to_value)

    def epoch_started(self, epoch: int) -> None:
        """Take the value of the last listed epoch not after ``epoch``."""
        value = self.initial
        for start, scheduled in self.epoch_to_value.items():
            if start <= epoch:
                value = scheduled
        self.value = value


class Switch(ValuePolicy):
    """Like :class:`Schedule` but driven by the global training step (for warm-ups).

    ``Switch(1e-4, {500: 1e-3})`` gives 1e-4 for the first 500 training batches of the run and
    1e-3 after, whatever the epoch length.

    Args:
        initial: value before the first listed step.
        step_to_value: ``{global_step: value}`` (steps count from 0 over the whole run).
    """

    def __init__(self, initial: Any, step_to_value: Mapping[int, Any]) -> None:
        super().__init__(initial)
        self.step_to_value = _check_epoch_keys("Switch", step_to_value)
        self.steps_done = 0

    def train_step_started(self, epoch: int, iteration: int) -> None:
        """Take the value of the last listed step not after the current one."""
        value = self.initial
        for start, scheduled in self.step_to_value.items():
            if start <= self.steps_done:
                value = scheduled
        self.value = value

    def train_step_finished(self, epoch: int, iteration: int, loss: Any) -> None:
        """Count the step."""
        self.steps_done += 1

    def state_dict(self) -> dict[str, Any]:
        """Save the step count and current value."""
        return {"steps_done": self.steps_done, "value": self.value}


class LambdaEpoch(ValuePolicy):
    """``value = func(epoch, *args, **kwargs)``, recomputed at every epoch start.

    Args:
        func: a deterministic function of the epoch.
        *args: extra positional arguments of ``func``.
        **kwargs: extra keyword arguments of ``func``.
    """

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not callable(func):
            raise ConfigError(f"LambdaEpoch: func must be callable, got {type(func).__name__}")
        self.func = func
        self.args = args
        self.kwargs = kwargs
        super().__init__(func(0, *args, **kwargs))

    def epoch_started(self, epoch: int) -> None:
        """Recompute the value for ``epoch``."""
        self.value = self.func(epoch, *self.args, **self.kwargs)


class DecreasingOnPlateau(ValuePolicy):
    """Multiply the value when a monitored quantity stops improving for ``patience`` epochs.

    The monitored quantity is the mean train loss of the epoch, or ``metrics[metric]`` when
    ``metric`` is given. It improves when it drops below ``best - max(atol, rtol * |best|)``
    (``mode="min"``) or rises above ``best + max(atol, rtol * |best|)`` (``mode="max"``).

    Args:
        initial: starting value.
        multiplier: factor applied at each plateau (e.g. 0.5).
        patience: epochs without improvement before the value changes.
        rtol: relative improvement threshold.
        atol: absolute improvement threshold.
        metric: name of a ``validate()`` metric to monitor instead of the train loss.
        mode: ``"min"`` or ``"max"``.
    """

    def __init__(
        self,
        *,
        initial: float,
        multiplier: float,
        patience: int,
        rtol: float = 0.0,
        atol: float = 0.0,
        metric: str | None = None,
        mode: str = "min",
    ) -> None:
        if patience < 1:
            raise ConfigError(f"DecreasingOnPlateau: patience must be >= 1, got {patience}")
        if mode not in ("min", "max"):
            raise ConfigError(f"DecreasingOnPlateau: mode must be 'min' or 'max', got {mode!r}")
        super().__init__(float(initial))
        self.multiplier = float(multiplier)
        self.patience = int(patience)
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.epochs_without_improvement = 0

    def state_dict(self) -> dict[str, Any]:
        """Save the value, the best monitored quantity and the plateau counter."""
        return {
            "value": self.value,
            "best": self.best,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def _monitored(self, train_losses: Sequence[Any], metrics: dict[str, Any] | None) -> float:
        """Return the quantity watched for a plateau."""
        if self.metric is None:
            return float(np.mean([np.mean(loss) for loss in train_losses]))
        if not metrics or self.metric not in metrics:
            raise ConfigError(
                f"DecreasingOnPlateau: metric '{self.metric}' not in the validate() metrics "
                f"{sorted(metrics or {})}"
            )
        return float(metrics[self.metric])

    def epoch_finished(
        self, epoch: int, *, train_losses: Sequence[Any], metrics: dict[str, Any] | None = None
    ) -> None:
        """Update the best value and decrease ``value`` after ``patience`` flat epochs."""
        current = self._monitored(train_losses, metrics)
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - current) > max(
            self.atol, self.rtol * abs(self.best)
        ):
            self.best = current
            self.epochs_without_improvement = 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.patience:
            self.value = self.value * self.multiplier
            self.epochs_without_improvement = 0
