"""Where a training run is: epoch, phase, batches consumed, running sums (checkpointed state).

Split out of :mod:`dwi_mtl.training.loop` (which keeps *when* things happen); the engine holds
one :class:`RunProgress` and saves its ``state_dict()`` in every checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

TRAINING, VALIDATION = "training", "validation"


class RunProgress:
    """Where the run is: epoch, phase, batches consumed in the phase, global batch counters."""

    def __init__(self) -> None:
        self.epoch = 0
        self.phase = TRAINING
        self.batch = 0
        self.steps = {TRAINING: 0, VALIDATION: 0}
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.training_summary: dict[str, float] = {}
        self.stopped = ""
        self.nb_checkpoints = 0

    def accumulate(self, metrics: dict[str, float]) -> None:
        """Add a batch's finite metrics to the phase's running sums."""
        for name, value in metrics.items():
            if math.isfinite(value):
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1

    def summary(self) -> dict[str, float]:
        """The phase's means so far."""
        return {name: self.sums[name] / self.counts[name] for name in self.sums}

    def start_phase(self, phase: str) -> None:
        """Reset the batch counter and sums for ``phase``."""
        self.phase, self.batch, self.sums, self.counts = phase, 0, {}, {}

    def state_dict(self) -> dict[str, Any]:
        """All attributes (plain values)."""
        return {key: value for key, value in vars(self).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        vars(self).update(state)
