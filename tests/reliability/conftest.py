"""Shared fixtures of the reliability tests."""

from __future__ import annotations

import pytest

from dwi_mtl.training import faults


@pytest.fixture(autouse=True)
def _disarm():
    """Every test leaves the in-process fault injection disarmed."""
    yield
    faults.arm("")
