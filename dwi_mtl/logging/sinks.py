"""The log-sink interface the training engine dispatches to (Comet, TensorBoard, ...).

The engine calls every sink with the same numbers: one call per training/validation batch
(``step`` is the global batch counter of that phase, restored on resume so steps never
repeat or jump) and one per finished epoch. A sink is stateful like everything else in a
checkpoint: Comet stores its experiment key, TensorBoard the step to purge from on resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class LogSink:
    """Base class of log sinks; every method is a no-op so sinks override only what they use."""

    def log_parameters(self, parameters: dict[str, Any]) -> None:
        """Record the run's (flattened) hyper-parameters once, at the start of a fresh run."""

    def log_batch(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        """Record the metrics of one batch of ``phase`` at global ``step``."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record the summary of a finished ``epoch`` (keys prefixed by their phase)."""

    def flush(self) -> None:
        """Push buffered records to disk; called before each checkpoint."""

    def close(self) -> None:
        """Release files and connections at the end of training (or on interruption)."""

    def state_dict(self) -> dict[str, Any]:
        """Return what is needed to continue logging after a resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; called before any ``log_*`` call of a resumed run."""


class LogDispatcher(LogSink):
    """Forward every call to a list of named sinks (their states are keyed by name)."""

    def __init__(self, sinks: dict[str, LogSink] | None = None) -> None:
        self.sinks: dict[str, LogSink] = dict(sinks or {})

    def add(self, name: str, sink: LogSink) -> None:
        """Register ``sink`` under ``name`` (the key of its state in checkpoints)."""
        self.sinks[name] = sink

    def _each(self) -> Sequence[LogSink]:
        return list(self.sinks.values())

    def log_parameters(self, parameters: dict[str, Any]) -> None:
        for sink in self._each():
            sink.log_parameters(parameters)

    def log_batch(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks.values():  # every batch: no copy (sinks are added at set-up)
            sink.log_batch(phase, step, metrics)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for sink in self._each():
            sink.log_epoch(epoch, metrics)

    def flush(self) -> None:
        for sink in self._each():
            sink.flush()

    def close(self) -> None:
        for sink in self._each():
            sink.close()

    def state_dict(self) -> dict[str, Any]:
        return {name: sink.state_dict() for name, sink in self.sinks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, sink in self.sinks.items():
            if name in state:
                sink.load_state_dict(state[name])


def flatten_parameters(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``a.b.c`` keys with scalar or string values (for loggers)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_parameters(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def build_sinks(
    experiment: Any,
    comet_mode: str,
    comet_workspace: str | None,
    comet_project: str | None,
    tensorboard: bool,
    every: int,
) -> dict[str, LogSink]:
    """Build the optional sinks of a run: Comet (unless disabled) and TensorBoard.

    Comet and TensorBoard are imported only when used, so a run with both off imports neither.

    Args:
        experiment: the run's :class:`~dwi_mtl.training.experiment.ExperimentFolder` (its
            ``comet``/``tensorboard`` folders and ``name``).
        comet_mode: "online", "offline" or "disabled".
        comet_workspace, comet_project: Comet destination (online mode).
        tensorboard: whether to write TensorBoard event files.
        every: log per-batch metrics every ``every`` batches.

    Returns:
        Sink name -> sink, in dispatch order.
    """
    from dwi_mtl.logging.comet import CometSink

    sinks: dict[str, LogSink] = {}
    comet = CometSink(
        comet_mode, experiment.comet, comet_workspace, comet_project, experiment.name, every
    )
    if comet.enabled:
        sinks["comet"] = comet
    if tensorboard:
        from dwi_mtl.logging.tensorboard import TensorBoardSink

        sinks["tensorboard"] = TensorBoardSink(experiment.tensorboard, every)
    return sinks
