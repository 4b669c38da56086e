"""Kill anywhere: a training subprocess SIGKILLed at precise points of its writes (checkpoint,
best model swap, .npy logs, Comet offline archive), resumed until it
completes, ends bit for bit like the uninterrupted run (weights, optimizer state, .npy logs).

The CI subset: one kill per write point. ``benchmarks/fault_injection.py`` runs many more
(random points and hits, random moments, several kills per run).
"""

from __future__ import annotations

import random
import signal

import pytest

from tests.reliability.runs import (
    assert_same_as_reference,
    reference_run,
    resume_until_done,
    run_child,
)

pytestmark = pytest.mark.reliability

#: (point, hit): the first checkpoint (nothing trained yet: the run starts over), then late
#: enough hits that there is a previous checkpoint / best model.
KILLS = [
    ("checkpoint.state_written", 1),
    ("checkpoint.before_rename", 7),
    ("checkpoint.renamed", 12),
    ("best_model.swapping", 2),
    ("npy.file_replaced", 40),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill_anywhere")
    return folder, reference_run(folder)


@pytest.mark.parametrize(("point", "hit"), KILLS, ids=[p for p, _ in KILLS])
def test_sigkill_at_a_write_point_then_resume_is_bit_for_bit(reference, point, hit):
    folder, trainer = reference
    name = f"killed-{point}"
    result = run_child(folder, name, fault=f"{point}:{hit}")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    resume_until_done(folder, name)
    assert_same_as_reference(trainer, folder, name)
    assert (folder / name / "best_model" / "state.pt").is_file()


def test_two_kills_in_a_row_at_any_point(reference):
    """Killed, killed again during the resume, then completed."""
    folder, trainer = reference
    rng = random.Random(11)
    name = "killed-twice"
    for _ in range(2):
        result = run_child(folder, name, fault=f"*:{rng.randint(5, 60)}")
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    resume_until_done(folder, name)
    assert_same_as_reference(trainer, folder, name)


def test_sigkill_while_the_comet_offline_archive_is_written(reference):
    """Comet offline: killed as the archive is written at the end, resumed (a new archive of
    the same experiment key), the run's results unchanged."""
    folder, trainer = reference
    name = "killed-comet"
    extra = {"comet_mode": "offline"}
    result = run_child(folder, name, fault="comet.ending:1", extra=extra)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    resume_until_done(folder, name, extra=extra)
    assert_same_as_reference(trainer, folder, name)
    assert list((folder / name / "comet").glob("*.zip"))
