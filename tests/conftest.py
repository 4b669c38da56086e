"""Test-wide settings: offline Comet, a non-interactive matplotlib, deterministic torch threads."""

from __future__ import annotations

import os

# Comet must never probe the network in tests (anchors.md): offline mode only, no env details,
# no error tracking. Set before any comet_ml import.
os.environ.setdefault("COMET_AUTO_LOG_ENV_DETAILS", "false")
os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
