"""Best-epoch monitor with patience: which epoch is best, and when to stop.

The monitored value is the validation loss (the training loss when there is no validation
set). An epoch is *better* when its value is below the best so far by more than
``patience_delta``; after ``patience`` epochs in a row without improvement training stops.
A NaN or infinite value never counts as best, so ``best_model/`` never holds a NaN epoch.
"""

from __future__ import annotations

import math
from typing import Any

from dwi_mtl.errors import ConfigError


class BestEpochMonitor:
    """Track the best (lowest) value per epoch and the count of bad epochs.

    Args:
        patience: bad epochs in a row tolerated before stopping; None never stops.
        patience_delta: minimum decrease that counts as an improvement.
    """

    def __init__(self, patience: int | None = None, patience_delta: float = 1e-6) -> None:
        if patience is not None and int(patience) < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {patience}")
        if patience_delta < 0:
            raise ConfigError(f"patience_delta must be >= 0, got {patience_delta}")
        self.patience = None if patience is None else int(patience)
        self.patience_delta = float(patience_delta)
        self.best_value = math.inf
        self.best_epoch: int | None = None
        self.nb_bad_epochs = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` for ``epoch``; return True when it is the new best."""
        if math.isfinite(value) and value < self.best_value - self.patience_delta:
            self.best_value = float(value)
            self.best_epoch = int(epoch)
            self.nb_bad_epochs = 0
            return True
        self.nb_bad_epochs += 1
        return False

    @property
    def is_patience_reached(self) -> bool:
        """Whether ``patience`` bad epochs in a row have been seen."""
        return self.patience is not None and self.nb_bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Return the monitor's state (best value and epoch, bad-epoch count, settings)."""
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "nb_bad_epochs": self.nb_bad_epochs,
            "patience": self.patience,
            "patience_delta": self.patience_delta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best value/epoch and bad-epoch count (settings stay as constructed,
        so a resume can raise the patience)."""
        self.best_value = float(state["best_value"])
        self.best_epoch = state["best_epoch"]
        self.nb_bad_epochs = int(state["nb_bad_epochs"])
