"""Checkpoint integrity and the upgrade path: every committed checkpoint format (one folder per
version under ``data/``, written by ``data/make_checkpoint_fixture.py``) still resumes the
standard run to the uninterrupted run's weights, optimizer state and logs, bit for bit; the
marker's version and checksums are verified on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dwi_mtl.errors import CheckpointError
from dwi_mtl.training.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    MARKER_FILE,
    READABLE_FORMAT_VERSIONS,
    read_state_folder,
)
from tests.reliability.runs import build_run, reference_run
from tests.unit.training.trainer_setup import compare_runs

pytestmark = pytest.mark.reliability

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(DATA.glob("checkpoint_v*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upgrade")
    return folder, reference_run(folder)


def test_the_current_format_has_a_committed_checkpoint():
    """Bumping CHECKPOINT_FORMAT_VERSION needs data/make_checkpoint_fixture.py to be run."""
    versions = {int(path.name.removeprefix("checkpoint_v")) for path in FIXTURES}
    assert CHECKPOINT_FORMAT_VERSION in versions
    assert versions <= set(READABLE_FORMAT_VERSIONS)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[path.name for path in FIXTURES])
def test_committed_checkpoint_resumes_bit_for_bit(reference, fixture):
    folder, trainer = reference
    (step,) = fixture.iterdir()
    marker = json.loads((step / MARKER_FILE).read_text())
    assert f"checkpoint_v{marker['format_version']}" == fixture.name
    name = f"upgrade-{fixture.name}"
    run = build_run(folder, name)
    shutil.copytree(step, run.checkpoints.folder / step.name)
    assert run.load_checkpoint()
    # the gradient norms the committed checkpoint logged were combined in float32 (before the
    # norms were combined in float64): those entries, and the mean of the epoch it interrupted,
    # match to float32 precision; every entry logged after it bit for bit, as do the weights
    # and the optimizer state
    history = run.history
    rounded = {key: len(values) for key, values in history.batch_series.items()
               if "grad_norm" in key}
    rounded.update({key: len(values) + 1 for key, values in history.epoch_series.items()
                    if "grad_norm" in key})
    run.train_and_validate()
    compare_runs(trainer, run, folder, ("reference", name), rounded)


def test_marker_tampering_is_refused_naming_the_checkpoint(tmp_path):
    (step,) = (DATA / f"checkpoint_v{CHECKPOINT_FORMAT_VERSION}").iterdir()
    copy = tmp_path / step.name
    shutil.copytree(step, copy)
    marker = json.loads((copy / MARKER_FILE).read_text())
    for bad, match in ((["not", "a", "dict"], "format version None"),
                       ({**marker, "format_version": 99}, "format version 99"),
                       ({**marker, "digest": marker["digest"] ^ 1}, "is corrupt"),
                       ({**marker, "checksum": "md5"}, "unknown checkpoint checksum 'md5'"),
                       ({**marker, "checksum": None}, "names no checksum"),
                       ({**marker, "files": ["state.pt"]}, "malformed 'files' entry")):
        (copy / MARKER_FILE).write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match) as info:
            read_state_folder(copy)
        assert step.name in str(info.value)
