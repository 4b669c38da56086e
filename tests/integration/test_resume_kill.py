"""Exact resume after a real SIGKILL (mid-epoch and during a checkpoint write), and SIGTERM.

The interrupted runs are subprocesses that kill themselves at a chosen batch (so the moment
is deterministic); the resume and the uninterrupted reference run in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dwi_mtl.training.signals import EXIT_CHECKPOINTED_ON_SIGNAL
from dwi_mtl.training.trainer import AbstractTrainer
from tests.unit.training.trainer_setup import compare_runs, make_hdf5, make_trainer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {"max_epochs": 2, "checkpoint_every_n_batches": 2}

CHILD = """
import os, signal, sys
from pathlib import Path
from tests.unit.training.trainer_setup import make_trainer
import dwi_mtl.training.checkpoint as checkpoint

folder, name, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
trainer = make_trainer(folder / "data.hdf5", folder, name, **{options})
if mode in ("batch", "validation"):
    where = ("training", 1, 3) if mode == "batch" else ("validation", 0, 4)
    def hook(phase, epoch, index, metrics):
        if (phase, epoch, index) == where:
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.on_batch_end = hook
else:  # die while the 4th checkpoint is being written, before its completion marker
    original = checkpoint._write_bytes
    def write(path, data, sync):
        if path.name == checkpoint.MARKER_FILE and trainer.progress.nb_checkpoints == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        original(path, data, sync)
    checkpoint._write_bytes = write
trainer.train_and_validate()
"""


def _child(folder: Path, name: str, mode: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(CHILD).replace("{options}", repr(OPTIONS))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, str(folder), name, mode], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    hdf5 = make_hdf5(folder)
    trainer = make_trainer(hdf5, folder, "reference", **OPTIONS)
    trainer.train_and_validate()
    return folder, trainer


@pytest.mark.parametrize("mode", ["batch", "validation", "checkpoint_write"])
def test_sigkill_then_resume_is_bit_for_bit(reference, mode):
    folder, trainer = reference
    result = _child(folder, f"killed-{mode}", mode)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    checkpoint_dir = folder / f"killed-{mode}" / "checkpoint"
    if mode == "checkpoint_write":
        assert any(p.name.startswith(".tmp-") for p in checkpoint_dir.iterdir())
    resumed = AbstractTrainer.init_from_checkpoint(folder, f"killed-{mode}")
    resumed.train_and_validate()
    compare_runs(trainer, resumed, folder, ("reference", f"killed-{mode}"))


def test_sigterm_on_the_train_script_exits_3_with_a_checkpoint(tmp_path):
    hdf5 = make_hdf5(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"hdf5_file: {hdf5}\n"
        "batch_sampler: {batch_size_training: 10}\n"
        "model: {hidden_size: 8}\n"
        "trainer: {max_epochs: 100000, device: cpu, progress_bar: false}\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train_model.py"), str(config), str(tmp_path),
         "run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    checkpoints = tmp_path / "run" / "checkpoint"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(checkpoints.glob("step_*"))) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_CHECKPOINTED_ON_SIGNAL, stderr[-2000:]
    assert "SIGTERM" in stderr
    resumed = AbstractTrainer.init_from_checkpoint(tmp_path, "run")
    epoch = resumed.epoch
    resumed.max_epochs = epoch + 1
    resumed.train_and_validate()
    assert resumed.epoch == epoch + 1
