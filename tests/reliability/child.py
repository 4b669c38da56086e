"""Subprocess entry of the reliability runs: ``python -m tests.reliability.child FOLDER NAME
[OPTIONS_JSON]`` trains the standard run of :mod:`tests.reliability.runs` in ``FOLDER/NAME``,
resuming it from its checkpoint when there is one (a run killed before its first checkpoint
is complete had trained nothing: it is started again, as the resume script tells users to).
Exit 0 when training is complete, 3 when checkpointed on SIGTERM/SIGUSR1 (the scripts'
convention)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from dwi_mtl.training.checkpoint import CheckpointManager
from dwi_mtl.training.signals import CheckpointedOnSignal
from dwi_mtl.training.trainer import AbstractTrainer
from tests.reliability.runs import build_run


def main(argv: list[str]) -> int:
    """Train or resume; return the process exit code."""
    folder, name = Path(argv[0]), argv[1]
    extra = json.loads(argv[2]) if len(argv) > 2 else {}
    if CheckpointManager(folder / name / "checkpoint").exists():
        trainer = AbstractTrainer.init_from_checkpoint(folder, name)
    else:  # never started, or killed before its first checkpoint: nothing trained, start over
        shutil.rmtree(folder / name, ignore_errors=True)
        trainer = build_run(folder, name, **extra)
    try:
        trainer.train_and_validate()
    except CheckpointedOnSignal as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
