"""Best-epoch monitor and patience."""

from __future__ import annotations

import math

import pytest

from dwi_mtl.errors import ConfigError
from dwi_mtl.training.monitors import BestEpochMonitor


def test_best_epoch_and_patience():
    monitor = BestEpochMonitor(patience=2, patience_delta=0.01)
    assert monitor.update(0, 1.0)
    assert monitor.update(1, 0.5)
    assert not monitor.update(2, 0.495)  # within patience_delta: not an improvement
    assert not monitor.is_patience_reached
    assert not monitor.update(3, 0.6)
    assert monitor.is_patience_reached and monitor.best_epoch == 1 and monitor.best_value == 0.5


def test_nan_and_inf_are_never_best():
    monitor = BestEpochMonitor()
    assert not monitor.update(0, math.nan)
    assert not monitor.update(1, math.inf)
    assert monitor.best_epoch is None
    assert monitor.update(2, 3.0)
    assert not monitor.update(3, math.nan) and monitor.best_epoch == 2


def test_state_roundtrip_keeps_new_patience():
    monitor = BestEpochMonitor(patience=1)
    monitor.update(0, 1.0)
    monitor.update(1, 2.0)
    assert monitor.is_patience_reached
    raised = BestEpochMonitor(patience=3)
    raised.load_state_dict(monitor.state_dict())
    assert raised.best_epoch == 0 and raised.nb_bad_epochs == 1 and not raised.is_patience_reached


@pytest.mark.parametrize(("patience", "delta"), [(0, 0.0), (2, -1.0)])
def test_bad_settings_are_refused(patience, delta):
    with pytest.raises(ConfigError):
        BestEpochMonitor(patience, delta)
