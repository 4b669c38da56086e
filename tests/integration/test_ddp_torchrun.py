"""The real launcher: ``torchrun --nproc_per_node=2 scripts/train_model.py`` on CPU (gloo).

One launch only (each torchrun start costs ~25 s here); the 2-rank numerics are covered by
``test_ddp.py`` with ``torch.multiprocessing.spawn``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dwi_mtl.cli import resume_training
from dwi_mtl.logging.npy_history import load_npy_logs
from tests.unit.training.trainer_setup import make_hdf5

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_trains_then_resumes_on_one_process(tmp_path: Path) -> None:
    hdf5 = make_hdf5(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        "batch_sampler: {batch_size_training: 10, seed: 3, max_batches_per_epoch_training: 3,"
        " max_batches_per_epoch_validation: 2}\n"
        "model: {hidden_size: 8, dropout: 0.0}\n"
        "trainer: {max_epochs: 2, device: cpu, progress_bar: false, tensorboard: true}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "scripts" / "train_model.py"), str(config), str(tmp_path), "ddp",
         "--hdf5_file", str(hdf5)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    params = json.loads((run / "parameters.json").read_text())
    assert params["batch_sampler"]["config"]["world_size"] == 2
    logs = load_npy_logs(run / "logs")
    # each logged batch is the global one: the two shards' streamlines summed
    np.testing.assert_array_equal(logs["training_nb_streamlines_per_batch"], [10.0] * 6)
    assert len(logs["validation_loss_per_epoch"]) == 2
    assert len(list((run / "tensorboard").rglob("events.out.tfevents.*"))) == 1  # rank 0 only
    assert (run / "best_model" / "state.pt").is_file()

    assert resume_training.main([str(tmp_path), "ddp", "--new_max_epochs", "3"]) == 0
    logs = load_npy_logs(run / "logs")
    assert len(logs["validation_loss_per_epoch"]) == 3
    params = json.loads((run / "parameters.json").read_text())
    assert params["batch_sampler"]["config"]["world_size"] == 1
