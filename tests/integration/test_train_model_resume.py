"""train_model resumed after an exception, a SIGTERM mid-epoch and a real SIGKILL ends with the
same weights, optimizer state, policy state and loss logs as an uninterrupted call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.training.signals import CheckpointedOnSignal

pytestmark = pytest.mark.integration

# The run shared by every test: Dropout (model-side randomness), Adam, a plateau lr policy
# (state), validate() metrics, random batches with a random augmentation. Written to a file
# so a subprocess can run it.
RUN_CODE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    import numpy as np
    import torch
    from torch import nn

    from dwi_mtl.training import (DecreasingOnPlateau, Infinite, Policy, TorchModel,
                                  load_by_random_id, train_model)

    X = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    Y = (X[:, :3].sum(1) > 0).astype(np.int64)


    class Hook(Policy):
        '''Calls ``action(epoch, iteration)`` before each step (interruptions in tests).'''

        def __init__(self, action=None):
            self.action = action

        def train_step_started(self, epoch, iteration):
            if self.action is not None:
                self.action(epoch, iteration)

        def state_dict(self):
            return {}


    def build():
        torch.manual_seed(0)
        np.random.seed(0)
        architecture = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3),
                                     nn.Linear(16, 2))
        model = TorchModel(architecture, nn.Softmax(-1), nn.CrossEntropyLoss(), torch.optim.Adam)
        source = load_by_random_id(X.__getitem__, Y.__getitem__, ids=range(200), random_state=3)
        return model, Infinite(source, jitter, batch_size=16, n_iters_per_epoch=5)


    def jitter(item):
        '''An augmentation drawing from numpy's global generator (restored on resume).'''
        x, y = item
        return x + np.random.normal(scale=0.1, size=x.shape).astype(np.float32), y


    def run(checkpoints_path, action=None, n_epochs=6):
        model, batch_iter = build()
        validate = lambda: {"accuracy": float(np.mean(model.do_inf_step(X).argmax(1) == Y))}
        lr = DecreasingOnPlateau(initial=1e-2, multiplier=0.5, patience=1, atol=1e-3)
        train_model(model, batch_iter, n_epochs=n_epochs, lr=lr, validate=validate,
                    checkpoints_path=checkpoints_path, hook=Hook(action))
        return model, lr


    def sleep_forever_at(marker, epoch, iteration):
        def action(e, i):
            if (e, i) == (epoch, iteration):
                Path(marker).write_text("ready")
                time.sleep(120)
        return action


    if __name__ == "__main__":
        checkpoints_path, out = sys.argv[1], sys.argv[2]
        marker = os.environ.get("KILL_MARKER")
        action = sleep_forever_at(marker, 3, 2) if marker else None
        model, _ = run(checkpoints_path, action)
        torch.save(model.state_dict(), out)
    """
)


@pytest.fixture()
def run_module(tmp_path, monkeypatch):
    path = tmp_path / "tm_run.py"
    path.write_text(RUN_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("tm_run")
    yield module
    sys.modules.pop("tm_run", None)


def assert_same_run(got_dir: Path, got_model, want_dir: Path, want_model) -> None:
    got, want = got_model.state_dict(), want_model.state_dict()
    for name, tensor in want["architecture"].items():
        assert torch.equal(got["architecture"][name], tensor), name
    for index, state in want["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer"]["state"][index][key], value), (index, key)
    got_logs, want_logs = load_npy_logs(got_dir / "logs"), load_npy_logs(want_dir / "logs")
    for name in ("training_loss_per_batch", "training_loss_per_epoch",
                 "validation_accuracy_per_epoch", "run_lr_per_epoch"):
        np.testing.assert_array_equal(got_logs[name], want_logs[name], err_msg=name)


def test_exception_mid_epoch_then_resume_equals_uninterrupted(run_module, tmp_path):
    reference, reference_lr = run_module.run(tmp_path / "reference")

    def crash(epoch, iteration):
        if (epoch, iteration) == (3, 2):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_module.run(tmp_path / "run", crash)
    resumed, resumed_lr = run_module.run(tmp_path / "run")
    assert_same_run(tmp_path / "run", resumed, tmp_path / "reference", reference)
    assert resumed_lr.state_dict() == reference_lr.state_dict()
    assert len(load_npy_logs(tmp_path / "run" / "logs")["training_loss_per_batch"]) == 30


def test_sigterm_checkpoints_mid_epoch_and_resume_equals_uninterrupted(run_module, tmp_path):
    reference, _ = run_module.run(tmp_path / "reference")

    def terminate(epoch, iteration):
        if (epoch, iteration) == (2, 3):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(CheckpointedOnSignal):
        run_module.run(tmp_path / "run", terminate)
    losses = load_npy_logs(tmp_path / "run" / "logs")["training_loss_per_batch"]
    assert len(losses) == 2 * 5 + 4  # checkpoint written right after batch 3 of epoch 2
    resumed, _ = run_module.run(tmp_path / "run")
    assert_same_run(tmp_path / "run", resumed, tmp_path / "reference", reference)


def test_sigkill_subprocess_then_resume_equals_uninterrupted(run_module, tmp_path):
    reference, _ = run_module.run(tmp_path / "reference")
    script = tmp_path / "tm_run.py"
    env = {**os.environ, "KILL_MARKER": str(tmp_path / "marker")}
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"),
                              str(tmp_path / "never.pt")], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "marker").exists():
            assert child.poll() is None, "the training subprocess ended before the kill"
            assert time.monotonic() < deadline, "the training subprocess never got to epoch 3"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    env.pop("KILL_MARKER")
    subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / "out.pt")],
                   env=env, check=True, timeout=300)
    resumed = torch.load(tmp_path / "out.pt", weights_only=False)
    for name, tensor in reference.state_dict()["architecture"].items():
        assert torch.equal(resumed["architecture"][name], tensor), name
    got_logs = load_npy_logs(tmp_path / "run" / "logs")
    want_logs = load_npy_logs(tmp_path / "reference" / "logs")
    np.testing.assert_array_equal(got_logs["training_loss_per_batch"],
                                  want_logs["training_loss_per_batch"])
