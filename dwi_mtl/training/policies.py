"""Training policies for :func:`dwi_mtl.training.train_model` (the deep_pipe interface).

A :class:`Policy` is told when an epoch starts and finishes (and, optionally, about every train
step and the start of validation); it may stop training by raising :class:`EarlyStopping`. A
:class:`ValuePolicy` also carries a ``value`` that changes over time; ``train_model`` passes it
to the model's ``do_train_step`` under the keyword the policy was given (``lr=...``,
``weights=...``). Value policies are in :mod:`dwi_mtl.training.value_policies`.

Every policy has ``state_dict()`` / ``load_state_dict()`` so the checkpoint of a run holds it and
a resumed run continues exactly. By default the state is every attribute whose value is plain
data (numbers, strings, lists, dicts, numpy arrays), which covers small user policies such as a
counter without any code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dwi_mtl.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

_PLAIN_SCALARS = (bool, int, float, str, type(None), np.generic)


class EarlyStopping(Exception):  # noqa: N818 (deep_pipe public name)
    """Raised by a policy to end training cleanly after the current epoch or step.

    ``train_model`` catches it, writes the checkpoint (marked complete) and flushes the logs.
    It is not a :class:`StopIteration` on purpose: raising that inside a generator would turn it
    into a ``RuntimeError``.
    """


def _is_plain(value: Any) -> bool:
    """Tell whether ``value`` is plain data a checkpoint can hold (no live objects)."""
    if isinstance(value, _PLAIN_SCALARS):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype != object
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False


class Policy:
    """Interface of the training policies, with no-op hooks.

    ``train_model`` calls, in this order: ``epoch_started(epoch)``, then for every batch
    ``train_step_started(epoch, iteration)`` / ``train_step_finished(epoch, iteration, loss)``,
    then ``validation_started(epoch, train_losses)`` and ``epoch_finished(epoch,
    train_losses=..., metrics=...)``. A run resumed in the middle of an epoch restores the
    policy's state and does *not* call ``epoch_started`` again for that epoch, exactly as an
    uninterrupted run would not.
    """

    def epoch_started(self, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (0-based)."""

    def train_step_started(self, epoch: int, iteration: int) -> None:
        """Called before each training batch; ``iteration`` counts batches within the epoch."""

    def train_step_finished(self, epoch: int, iteration: int, loss: Any) -> None:
        """Called after each training batch with the loss ``do_train_step`` returned."""

    def validation_started(self, epoch: int, train_losses: Sequence[Any]) -> None:
        """Called after the last training batch of ``epoch``, before ``validate()``."""

    def epoch_finished(
        self, epoch: int, *, train_losses: Sequence[Any], metrics: dict[str, Any] | None = None
    ) -> None:
        """Called at the end of ``epoch`` with its train losses and the validation metrics."""

    def scalars(self) -> dict[str, float]:
        """Scalars to log (TensorBoard) after each epoch; ``""`` means the policy's own name."""
        return {}

    def close(self) -> None:
        """Release resources (progress bars) when training ends, normally or not."""

    def state_dict(self) -> dict[str, Any]:
        """Return every attribute holding plain data (override for anything else)."""
        return {key: value for key, value in vars(self).items() if _is_plain(value)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the attributes saved by :meth:`state_dict` (also those set after init)."""
        for key, value in state.items():
            setattr(self, key, value)


class ValuePolicy(Policy):
    """A policy carrying a ``value`` that ``train_model`` passes to ``do_train_step``.

    Args:
        initial: the value before any epoch started.
    """

    def __init__(self, initial: Any) -> None:
        self.initial = initial
        self.value = initial

    def state_dict(self) -> dict[str, Any]:
        """Save the current value (the configuration comes from the constructor)."""
        return {"value": self.value} if _is_plain(self.value) else {}

    def scalars(self) -> dict[str, float]:
        """Log the current value when it is a number."""
        if isinstance(self.value, (int, float, np.number)) and not isinstance(self.value, bool):
            return {"": float(self.value)}
        return {}


class NEpochs(Policy):
    """Stop training after ``n_epochs`` epochs (useful with a large ``n_epochs`` and patience).

    Args:
        n_epochs: number of epochs to run, at least 1.
    """

    def __init__(self, n_epochs: int) -> None:
        if int(n_epochs) < 1:
            raise ConfigError(f"NEpochs: n_epochs must be >= 1, got {n_epochs}")
        self.n_epochs = int(n_epochs)

    def epoch_finished(
        self, epoch: int, *, train_losses: Sequence[Any], metrics: dict[str, Any] | None = None
    ) -> None:
        """Raise :class:`EarlyStopping` once ``n_epochs`` epochs are done."""
        if epoch + 1 >= self.n_epochs:
            raise EarlyStopping

    def state_dict(self) -> dict[str, Any]:
        """Stateless: the epoch comes from the run (a resume may change ``n_epochs``)."""
        return {}


class TimeProfiler(Policy):
    """Measure the time of training steps, validation and whole epochs.

    The durations of the last epoch (seconds) are available in :attr:`last`, logged at INFO
    level and returned by :meth:`scalars`, which ``train_model`` logs as
    ``<keyword>_epoch``, ``<keyword>_train_step_mean`` and ``<keyword>_validation``.
    """

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self._epoch_start = 0.0
        self._step_start = 0.0
        self._validation_start = 0.0
        self._step_times: list[float] = []

    def epoch_started(self, epoch: int) -> None:
        """Start the epoch clock."""
        self._epoch_start = time.perf_counter()
        self._step_times = []

    def train_step_started(self, epoch: int, iteration: int) -> None:
        """Start the step clock (and the epoch clock after a mid-epoch resume)."""
        self._step_start = time.perf_counter()
        if not self._epoch_start:
            self._epoch_start = self._step_start

    def train_step_finished(self, epoch: int, iteration: int, loss: Any) -> None:
        """Record the step duration."""
        self._step_times.append(time.perf_counter() - self._step_start)

    def validation_started(self, epoch: int, train_losses: Sequence[Any]) -> None:
        """Start the validation clock."""
        self._validation_start = time.perf_counter()

    def epoch_finished(
        self, epoch: int, *, train_losses: Sequence[Any], metrics: dict[str, Any] | None = None
    ) -> None:
        """Store and log the epoch's durations."""
        now = time.perf_counter()
        self.last = {
            "epoch": now - self._epoch_start,
            "train_step_mean": float(np.mean(self._step_times)) if self._step_times else 0.0,
            "validation": now - self._validation_start if self._validation_start else 0.0,
        }
        self._epoch_start = 0.0
        self._validation_start = 0.0
        logger.info("epoch %d times (s): %s", epoch, {k: round(v, 4) for k, v in self.last.items()})

    def scalars(self) -> dict[str, float]:
        """The last epoch's durations."""
        return dict(self.last)

    def state_dict(self) -> dict[str, Any]:
        """Durations are not part of a run's state: nothing to save."""
        return {}


class TQDM(Policy):
    """A tqdm progress bar over each epoch's batches, showing the running mean loss.

    Args:
        show_loss: display the mean train loss of the epoch so far.
        leave: keep each epoch's finished bar on screen.
    """

    def __init__(self, show_loss: bool = True, leave: bool = False) -> None:
        self.show_loss = show_loss
        self.leave = leave
        self._bar: Any = None
        self._losses: list[float] = []

    def train_step_started(self, epoch: int, iteration: int) -> None:
        """Open the epoch's bar lazily (so a resumed epoch gets one too)."""
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=f"epoch {epoch}", initial=iteration, leave=self.leave)

    def train_step_finished(self, epoch: int, iteration: int, loss: Any) -> None:
        """Advance the bar and show the mean loss."""
        if self._bar is None:
            return
        self._bar.update(1)
        if self.show_loss:
            self._losses.append(float(np.mean(loss)))
            self._bar.set_postfix(loss=f"{np.mean(self._losses):.4g}", refresh=False)

    def epoch_finished(
        self, epoch: int, *, train_losses: Sequence[Any], metrics: dict[str, Any] | None = None
    ) -> None:
        """Close the epoch's bar."""
        self.close()

    def close(self) -> None:
        """Close the bar if one is open."""
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._losses = []

    def state_dict(self) -> dict[str, Any]:
        """A progress bar has no state a resume needs."""
        return {}


class PolicyGroup:
    """The named policies of one ``train_model`` call, called together and saved together.

    Every hook is delivered to every policy, in the order given, even when one of them raises
    :class:`EarlyStopping` (so each sees the same epochs); the first ``EarlyStopping`` is
    raised again afterwards. Any other exception propagates at once.

    Args:
        policies: keyword name -> policy (the names key their states in checkpoints).
    """

    def __init__(self, policies: dict[str, Policy]) -> None:
        self.policies = dict(policies)

    def _each(self, hook: str, *args: Any, **kwargs: Any) -> None:
        stop: EarlyStopping | None = None
        for policy in self.policies.values():
            try:
                getattr(policy, hook)(*args, **kwargs)
            except EarlyStopping as exc:
                stop = stop or exc
        if stop is not None:
            raise stop

    def epoch_started(self, epoch: int) -> None:
        """Deliver ``epoch_started`` to every policy."""
        self._each("epoch_started", epoch)

    def train_step_started(self, epoch: int, iteration: int) -> None:
        """Deliver ``train_step_started`` to every policy."""
        self._each("train_step_started", epoch, iteration)

    def train_step_finished(self, epoch: int, iteration: int, loss: Any) -> None:
        """Deliver ``train_step_finished`` to every policy."""
        self._each("train_step_finished", epoch, iteration, loss)

    def validation_started(self, epoch: int, train_losses: Sequence[Any]) -> None:
        """Deliver ``validation_started`` to every policy."""
        self._each("validation_started", epoch, train_losses)

    def epoch_finished(
        self, epoch: int, *, train_losses: Sequence[Any], metrics: dict[str, Any] | None = None
    ) -> None:
        """Deliver ``epoch_finished`` to every policy."""
        self._each("epoch_finished", epoch, train_losses=train_losses, metrics=metrics)

    def values(self) -> dict[str, Any]:
        """Current ``value`` of every value policy, by keyword name."""
        return {
            name: policy.value
            for name, policy in self.policies.items()
            if isinstance(policy, ValuePolicy)
        }

    def scalars(self) -> dict[str, float]:
        """Every policy's scalars, named ``<keyword>`` or ``<keyword>_<scalar>``."""
        flat: dict[str, float] = {}
        for name, policy in self.policies.items():
            for key, value in policy.scalars().items():
                flat[f"{name}_{key}" if key else name] = float(value)
        return flat

    def close(self) -> None:
        """Close every policy (progress bars), ignoring nothing: errors propagate."""
        for policy in self.policies.values():
            policy.close()

    def state_dict(self) -> dict[str, Any]:
        """Each policy's state by keyword name."""
        return {name: policy.state_dict() for name, policy in self.policies.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore each policy's state.

        Raises:
            CheckpointError: when the checkpoint's policy names differ from this call's.
        """
        if set(state) != set(self.policies):
            raise CheckpointError(
                f"the checkpoint was written with policies {sorted(state)} but this call passes "
                f"{sorted(self.policies)}: pass the same keyword policies to resume"
            )
        for name, policy in self.policies.items():
            policy.load_state_dict(state[name])
