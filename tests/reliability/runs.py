"""The small real run every reliability test and the fault-injection benchmark interrupts.

One run = the real pipeline of ``tests/unit/training/trainer_setup.py`` (HDF5 file,
BatchSampler, BatchLoader, DataLoader, RecurrentTracker with dropout, ReferenceTrainer) for
:data:`OPTIONS`: 3 epochs of 6 training and 6 validation batches, a checkpoint every 2
training batches, so a run writes ~15 checkpoints, a best model per improving epoch and the
``.npy`` logs several times. :func:`run_child` runs it in a subprocess (``python -m
tests.reliability.child``) that resumes from the experiment folder when a checkpoint is there,
with faults armed through ``DWI_MTL_FAULT`` (see ``dwi_mtl.training.faults``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dwi_mtl.training.faults import FAULT_ENV
from dwi_mtl.training.trainer import AbstractTrainer
from tests.unit.training.trainer_setup import compare_runs, make_hdf5, make_trainer

ROOT = Path(__file__).resolve().parents[2]
OPTIONS: dict[str, Any] = {"max_epochs": 3, "checkpoint_every_n_batches": 2}
#: Where the committed upgrade-path checkpoint was taken (phase, epoch, batch index).
FIXTURE_STOP = ("training", 1, 2)


def build_run(folder: Path, name: str, **extra: Any) -> Any:
    """A fresh trainer of the standard run in ``folder`` (its ``data.hdf5`` made if missing)."""
    hdf5 = folder / "data.hdf5"
    if not hdf5.exists():
        make_hdf5(folder)
    return make_trainer(hdf5, folder, name, **{**OPTIONS, **extra})


def reference_run(folder: Path, name: str = "reference", **extra: Any) -> Any:
    """Train the standard run uninterrupted, in this process, and return its trainer."""
    trainer = build_run(folder, name, **extra)
    trainer.train_and_validate()
    return trainer


def run_child(
    folder: Path, name: str, fault: str = "", extra: dict[str, Any] | None = None,
    kill_after: float | None = None, timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run (or resume) the standard run in a subprocess.

    Args:
        folder: experiments folder (holds ``data.hdf5``).
        name: experiment name; resumed when it already has a checkpoint.
        fault: a ``DWI_MTL_FAULT`` value armed in the child ("" for none).
        extra: extra trainer options (JSON-able), e.g. ``{"comet_mode": "offline"}``.
        kill_after: SIGKILL the child after this many seconds (a random-moment kill).
        timeout: seconds before the child is considered hung.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: fault}
    command = [sys.executable, "-m", "tests.reliability.child", str(folder), name,
               json.dumps(extra or {})]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def resume_until_done(folder: Path, name: str, extra: dict[str, Any] | None = None,
                      max_runs: int = 5) -> int:
    """Resume the run with no fault until it completes; return the number of resumes."""
    for attempt in range(1, max_runs + 1):
        result = run_child(folder, name, extra=extra)
        if result.returncode == 0:
            return attempt
    raise AssertionError(f"{name} did not complete: {result.stderr[-3000:]}")


def final_trainer(folder: Path, name: str) -> Any:
    """The completed run's final state, rebuilt from its experiment folder."""
    return AbstractTrainer.init_from_checkpoint(folder, name)


def assert_same_as_reference(reference: Any, folder: Path, name: str) -> None:
    """Final weights, optimizer state and non-timing ``.npy`` logs equal, bit for bit."""
    compare_runs(reference, final_trainer(folder, name), folder, (reference.experiment.name, name))
