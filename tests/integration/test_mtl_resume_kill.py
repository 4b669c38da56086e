"""MTLTrainer: exact resume after a real SIGKILL mid-epoch, inside a downstream evaluation
and while the checkpoint that follows a downstream evaluation is being written.

The interrupted runs are subprocesses that kill themselves at a chosen moment (so it is
deterministic); the resume and the uninterrupted reference run in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unit.mtl.test_mtl_trainer_resume import _assert_same_run, _build

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import os, signal, sys
from pathlib import Path
import dwi_mtl.training.checkpoint as checkpoint
from tests.unit.mtl.test_mtl_trainer_resume import _build

folder, mode = Path(sys.argv[1]), sys.argv[2]
calls = []
trainer = _build(folder, "cut", calls)
if mode == "batch":
    def hook(phase, epoch, index, metrics):
        if (phase, epoch, index) == ("training", 1, 3):
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.on_batch_end = hook
elif mode == "downstream":
    @trainer.callback_foreach_downstream_task()
    def die(task, model, epoch):
        if (task.name, epoch) == ("sign2", 1):
            os.kill(os.getpid(), signal.SIGKILL)
else:  # during the checkpoint written after the first downstream task of epoch 1
    original = checkpoint._write_bytes
    def write(path, data, sync):
        done = trainer.evaluations.downstream.get(1, {})
        if path.name == checkpoint.MARKER_FILE and list(done) == ["sign"]:
            os.kill(os.getpid(), signal.SIGKILL)
        original(path, data, sync)
    checkpoint._write_bytes = write
trainer.train_and_validate()
"""


@pytest.mark.parametrize("mode", ["batch", "downstream", "checkpoint"])
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path: Path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path), mode],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    reference = _build(tmp_path, "ref", [])
    reference.train_and_validate()
    calls: list[tuple[str, int]] = []
    resumed = _build(tmp_path, "cut", calls, resume=True)
    resumed.train_and_validate()
    _assert_same_run(tmp_path, reference, resumed)
    if mode == "downstream":  # the checkpointed downstream task is not evaluated again
        assert ("sign", 1) not in calls and ("hook", 1) not in calls and ("sign2", 1) in calls
    if mode == "checkpoint":  # its checkpoint never completed: it is evaluated again
        assert calls[:3] == [("hook", 1), ("sign", 1), ("sign2", 1)]
