"""SIGTERM / SIGUSR1: checkpoint at the next batch boundary, then exit for requeue.

Cluster schedulers (SLURM ``--signal``, Kubernetes) send SIGTERM or SIGUSR1 before killing a
job. While training, :class:`SignalCatcher` turns those signals into a flag; the engine checks
it after every batch, writes a checkpoint and raises :class:`CheckpointedOnSignal`. The
scripts turn that into exit code :data:`EXIT_CHECKPOINTED_ON_SIGNAL` (3): "checkpointed on a
signal, requeue me" — a job script can test ``$? -eq 3`` and ``scontrol requeue`` itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

#: Process exit code of the scripts after a checkpoint written on SIGTERM/SIGUSR1.
EXIT_CHECKPOINTED_ON_SIGNAL = 3

DEFAULT_SIGNALS: tuple[int, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None
)


class CheckpointedOnSignal(Exception):  # noqa: N818 - an outcome, not an error
    """Training stopped after checkpointing because a termination signal was received."""

    exit_code = EXIT_CHECKPOINTED_ON_SIGNAL

    def __init__(self, signum: int, checkpoint_path: str) -> None:
        super().__init__(
            f"received {signal.Signals(signum).name}: checkpoint written to {checkpoint_path}; "
            f"exit code {EXIT_CHECKPOINTED_ON_SIGNAL} means 'resume me'"
        )
        self.signum = signum
        self.checkpoint_path = checkpoint_path


class SignalCatcher:
    """Context manager recording SIGTERM/SIGUSR1 instead of dying; restores handlers on exit.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, signals: Sequence[int] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        logger.warning(
            "received %s: a checkpoint will be written at the next batch boundary",
            signal.Signals(signum).name,
        )
        self.received = signum

    def __enter__(self) -> SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
