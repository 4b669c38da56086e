"""Fault-injection hooks: kill or signal the process at precise points of its writes.

The reliability suite (``tests/reliability``, ``benchmarks/fault_injection.py``) proves that a
run killed *anywhere* resumes exactly. Random-time kills from a parent process rarely land
inside a checkpoint write, so the writers call :func:`fault_point` at the moments that matter
(state written but no marker, marker written but not renamed, best model half-swapped, a log
file replaced, the Comet archive being written). A training subprocess started with the
environment variable :data:`FAULT_ENV` armed acts at the chosen hit of the chosen point::

    DWI_MTL_FAULT="checkpoint.before_rename:3"        # SIGKILL at the 3rd hit of that point
    DWI_MTL_FAULT="*:17"                              # SIGKILL at the 17th hit of any point
    DWI_MTL_FAULT="checkpoint.state_written:2:term"   # send SIGTERM to itself instead

Actions: ``kill`` (SIGKILL, the default), ``term`` (SIGTERM), ``usr1`` (SIGUSR1), ``enospc``
and ``eio`` (raise ``OSError`` with that errno, as a full or failing disk would). Several
specifications may be given, separated by commas. When the variable is unset (always, in
normal use) :func:`fault_point` returns at once: one global lookup, no cost worth measuring.
The point names are listed in :data:`FAULT_POINTS`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from dataclasses import dataclass

from dwi_mtl.errors import ConfigError

logger = logging.getLogger(__name__)

#: Environment variable read once, at import, by :func:`fault_point`.
FAULT_ENV = "DWI_MTL_FAULT"

#: Every point the library calls, in the order a checkpoint/best-model/log write reaches them.
FAULT_POINTS: tuple[str, ...] = (
    "checkpoint.state_written",    # state.pt written in the temporary folder, no marker yet
    "checkpoint.before_rename",    # marker written, temporary folder not renamed yet
    "checkpoint.renamed",          # new checkpoint in place, older ones not pruned yet
    "checkpoint.replacing",        # same-step checkpoint: old copy removed, new not renamed
    "best_model.written",          # new best model complete in its staging folder
    "best_model.swapping",         # old best model renamed aside, new one not in place yet
    "npy.file_replaced",           # one .npy log replaced, the others not yet
    "comet.ending",                # Comet experiment about to write its offline archive
)

_ACTIONS = ("kill", "term", "usr1", "enospc", "eio")


@dataclass
class _Fault:
    point: str
    hit: int
    action: str
    seen: int = 0


def parse_faults(text: str) -> list[_Fault]:
    """Parse a :data:`FAULT_ENV` value (``point:hit[:action]``, comma-separated).

    Raises:
        ConfigError: naming the variable for an unknown point or action or a bad hit number.
    """
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fields = item.split(":")
        if len(fields) not in (2, 3):
            raise ConfigError(f"{FAULT_ENV}: {item!r} is not 'point:hit[:action]'")
        point, hit, action = fields[0], fields[1], fields[2] if len(fields) == 3 else "kill"
        if point != "*" and point not in FAULT_POINTS:
            raise ConfigError(f"{FAULT_ENV}: unknown point {point!r}; known: {FAULT_POINTS}")
        if action not in _ACTIONS:
            raise ConfigError(f"{FAULT_ENV}: unknown action {action!r}; known: {_ACTIONS}")
        if not hit.isdigit() or int(hit) < 1:
            raise ConfigError(f"{FAULT_ENV}: hit must be a positive integer, got {hit!r}")
        faults.append(_Fault(point, int(hit), action))
    return faults


_ARMED: list[_Fault] = parse_faults(os.environ.get(FAULT_ENV, ""))


def fault_point(name: str) -> None:
    """Mark a point where a write can be interrupted; act if a fault is armed for it.

    Args:
        name: one of :data:`FAULT_POINTS`.

    Raises:
        OSError: when an ``enospc`` / ``eio`` fault is armed for this hit.
    """
    if not _ARMED:
        return
    due = []
    for fault in _ARMED:
        if fault.point in ("*", name):
            fault.seen += 1
            if fault.seen == fault.hit:
                due.append(fault.action)
    for action in due:  # every count updated first
        _act(action, name)


def arm(text: str) -> None:
    """Replace the armed faults (in-process tests; subprocesses use :data:`FAULT_ENV`)."""
    _ARMED[:] = parse_faults(text)


def _act(action: str, name: str) -> None:
    logger.warning("fault injection: %s at %s", action, name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("term", "usr1"):
        os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGUSR1)
    else:
        code = errno.ENOSPC if action == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code), name)


def hit_counts() -> dict[str, int]:
    """How many times each armed point was reached so far (to pick kill moments in a run)."""
    return {fault.point: fault.seen for fault in _ARMED}
