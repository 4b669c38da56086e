"""Storage faults during a run: ENOSPC / EIO while a checkpoint or the best model is written
(the writer monkeypatched, or a fault armed at a write point), a read-only experiment folder,
a missing model file. Each time: one CheckpointError naming the file, no temporary folder
left behind, and the previous checkpoint still resumes the run exactly."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

import dwi_mtl.training.checkpoint as checkpoint
from dwi_mtl.errors import CheckpointError
from dwi_mtl.training import faults
from dwi_mtl.training.trainer import AbstractTrainer
from tests.reliability.runs import build_run, reference_run
from tests.unit.training.trainer_setup import compare_runs

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("storage")
    return folder, reference_run(folder)


def _fails_then_resumes_exactly(folder, reference, name, match):
    """Run ``name`` (a fault is set up), expect the error, resume, compare."""
    trainer = build_run(folder, name)
    with pytest.raises(CheckpointError, match=match):
        trainer.train_and_validate()
    faults.arm("")
    leftovers = [p.name for p in (folder / name / "checkpoint").iterdir()
                 if p.name.startswith(".tmp-")]
    assert not leftovers
    resumed = AbstractTrainer.init_from_checkpoint(folder, name)
    resumed.train_and_validate()
    compare_runs(reference, resumed, folder, ("reference", name))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_disk_error_inside_torch_save(reference, monkeypatch, code):
    folder, trainer = reference
    name = f"torch-save-{errno.errorcode[code]}"
    original, calls = checkpoint.torch.save, []

    def failing_save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(code, os.strerror(code), getattr(handle, "name", None))
        return original(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    _fails_then_resumes_exactly(folder, trainer, name, r"state\.pt")


@pytest.mark.parametrize("point", ["checkpoint.state_written", "checkpoint.before_rename",
                                   "best_model.written"])
def test_disk_full_at_each_write_point(reference, point):
    folder, trainer = reference
    faults.arm(f"{point}:{2 if point.startswith('best') else 3}:enospc")
    name = f"enospc-{point}"
    _fails_then_resumes_exactly(folder, trainer, name, "No space left on device")
    if point.startswith("best_model"):  # the first best model stayed in place until resumed
        assert not (folder / name / ".best_model.new").exists()
        assert (folder / name / "best_model" / "state.pt").is_file()


def test_read_only_experiment_folder(reference, monkeypatch):
    """The folder becomes read-only mid-run (EROFS on every new folder): the error names the
    checkpoint, the previous checkpoints are intact. (Tests run as root, which ignores
    permission bits, so the file system's refusal is simulated at ``mkdir``.)"""
    folder, trainer = reference
    name = "read-only"
    run = build_run(folder, name)
    original_mkdir = checkpoint.Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):
        if name in str(self) and run.progress.nb_checkpoints >= 3:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return original_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Path, "mkdir", read_only_mkdir)
    with pytest.raises(CheckpointError, match=r"Read-only file system") as info:
        run.train_and_validate()
    assert "checkpoint" in str(info.value)
    monkeypatch.undo()
    resumed = AbstractTrainer.init_from_checkpoint(folder, name)
    assert resumed.progress.nb_checkpoints == 2  # the third one failed
    resumed.train_and_validate()
    compare_runs(trainer, resumed, folder, ("reference", name))


def test_missing_model_file_falls_back_to_the_previous_checkpoint(reference, caplog):
    folder, trainer = reference
    name = "missing-state"
    run = build_run(folder, name, max_epochs=2)
    run.train_and_validate()
    latest = run.checkpoints.list()[-1]
    (latest.path / checkpoint.STATE_FILE).unlink()
    resumed = AbstractTrainer.init_from_checkpoint(folder, name, max_epochs=3)
    assert f"'{latest.path / checkpoint.STATE_FILE}' is unreadable" in caplog.text
    resumed.train_and_validate()
    compare_runs(trainer, resumed, folder, ("reference", name))


def test_missing_or_corrupt_best_model_file_is_named(reference, tmp_path):
    folder, _ = reference
    best = folder / "reference" / "best_model"
    copy = tmp_path / "best_model"
    shutil.copytree(best, copy)
    (copy / "best_epoch_losses.json").write_text('{"epoch": 99}')
    with pytest.raises(CheckpointError, match="best_epoch_losses.json' is corrupt"):
        checkpoint.read_state_folder(copy)
    (copy / checkpoint.STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"state\.pt' is unreadable"):
        checkpoint.read_state_folder(copy)
