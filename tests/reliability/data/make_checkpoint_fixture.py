"""Regenerate the committed checkpoint of the current format (the upgrade-path fixture).

Run from the repository root when the checkpoint format changes (after bumping
``dwi_mtl.training.checkpoint.CHECKPOINT_FORMAT_VERSION``)::

    python tests/reliability/data/make_checkpoint_fixture.py

It trains the small run of ``tests/reliability/runs.py`` (2 epochs, a checkpoint every 2
batches), stops it with an exception in the middle of epoch 1 and copies the newest checkpoint
to ``tests/reliability/data/checkpoint_v<version>/``. Older versions' folders stay committed:
``test_checkpoint_integrity.py`` resumes every one of them and expects the uninterrupted run's
weights, optimizer state and logs bit for bit, so a format change that breaks old runs fails.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from dwi_mtl.training.checkpoint import CHECKPOINT_FORMAT_VERSION  # noqa: E402
from tests.reliability.runs import FIXTURE_STOP, build_run  # noqa: E402
from tests.unit.training.trainer_setup import InterruptError, interrupt_at  # noqa: E402

logger = logging.getLogger("make_checkpoint_fixture")


def main() -> None:
    """Write ``checkpoint_v<CHECKPOINT_FORMAT_VERSION>/`` next to this script."""
    target = Path(__file__).resolve().parent / f"checkpoint_v{CHECKPOINT_FORMAT_VERSION}"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_run(Path(tmp), "fixture")
        interrupt_at(trainer, *FIXTURE_STOP)
        with contextlib.suppress(InterruptError):
            trainer.train_and_validate()
        latest = trainer.checkpoints.list()[-1]
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(latest.path, target / latest.path.name)
    logger.info("wrote %s", target)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
