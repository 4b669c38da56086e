"""The hostile-input catalogue: every case feeds one bad input to a script's ``main`` and checks
one clear error (exit 2, a message naming the file/field/argument), no traceback from deep
inside torch or h5py, and nothing half-written.

A case is a function ``case(ctx) -> Attempt``: it builds its bad input under ``ctx.tmp`` (from
the valid inputs of :class:`Inputs`) and says which script to run with which arguments, what
the error must name and which paths must not exist afterwards. :func:`check_case` runs it.
``test_hostile_inputs.py`` runs the whole catalogue in CI; ``benchmarks/fault_injection.py``
runs it and counts the inputs that held.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dwi_mtl.cli import create_hdf5_dataset, resume_training, train_model
from tests.unit.data.real_inputs import small_25_config, write_json, write_small_25_subject
from tests.unit.training.trainer_setup import make_hdf5

SCRIPTS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "create_hdf5_dataset": create_hdf5_dataset.main,
    "train_model": train_model.main,
    "resume_training": resume_training.main,
}

TRAIN_CONFIG = (
    "batch_sampler: {batch_size_training: 10}\n"
    "model: {hidden_size: 8}\n"
    "trainer: {max_epochs: 1, device: cpu, progress_bar: false}\n"
)


@dataclass
class Inputs:
    """Valid inputs the cases start from (built once, never modified by a case)."""

    root: Path
    hdf5: Path = field(init=False)
    train_config: Path = field(init=False)
    subjects: Path = field(init=False)
    create_config: Path = field(init=False)
    lists: list[Path] = field(init=False)
    experiments: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hdf5 = make_hdf5(self.root, nb_streamlines=20)
        self.train_config = self.root / "train.yaml"
        self.train_config.write_text(TRAIN_CONFIG)
        self.subjects = self.root / "subjects"
        write_small_25_subject(self.subjects / "s1")
        write_small_25_subject(self.subjects / "s2", flip=True)
        self.create_config = write_json(self.root / "create.json", small_25_config())
        self.lists = []
        for split, text in (("train", "s1\n"), ("valid", "s2\n"), ("test", "")):
            path = self.root / f"{split}.txt"
            path.write_text(text)
            self.lists.append(path)
        self.experiments = self.root / "experiments"
        self.experiments.mkdir(exist_ok=True)
        code = train_model.main([str(self.train_config), str(self.experiments), "done",
                                 "--hdf5_file", str(self.hdf5)])
        if code != 0:
            raise RuntimeError("the valid training run of the hostile-input fixtures failed")

    @property
    def done(self) -> Path:
        """A completed experiment (checkpoint, best model, logs) of the valid config."""
        return self.experiments / "done"


@dataclass
class Context:
    """What a case gets: the valid inputs and its own empty folder."""

    inputs: Inputs
    tmp: Path

    def copy(self, source: Path, name: str | None = None) -> Path:
        """Copy a file or folder into the case's folder."""
        target = self.tmp / (name or source.name)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
        return target

    def create_args(self, subjects: Path | None = None, config: Path | None = None) -> list[str]:
        """Arguments of create_hdf5_dataset writing ``tmp/out.hdf5``."""
        lists = [str(p) for p in self.inputs.lists]
        return [str(subjects or self.inputs.subjects), str(self.tmp / "out.hdf5"),
                str(config or self.inputs.create_config), *lists]

    def train_args(self, config: Path | None = None, hdf5: Path | None = None,
                   *extra: str) -> list[str]:
        """Arguments of train_model writing experiment ``tmp/run``."""
        return [str(config or self.inputs.train_config), str(self.tmp), "run",
                "--hdf5_file", str(hdf5 or self.inputs.hdf5), *extra]


@dataclass
class Attempt:
    """One bad input: the script run, what its error must name, what must not be written."""

    script: str
    argv: list[str]
    names: str
    not_written: list[Path] = field(default_factory=list)


@dataclass
class Outcome:
    """What happened: held (all checks passed) or why not."""

    case: str
    held: bool
    detail: str


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_case(name: str, case: Callable[[Context], Attempt], inputs: Inputs,
               tmp: Path) -> Outcome:
    """Run one case; it holds when the script returns exit 2 with one error naming
    ``attempt.names`` (argparse errors: SystemExit 2 and a usage message) and nothing listed
    in ``not_written`` exists. Any other exception means a traceback escaped."""
    tmp.mkdir(parents=True, exist_ok=True)
    attempt = case(Context(inputs, tmp))
    collect = _Collect()
    logger = logging.getLogger("dwi_mtl")
    logger.addHandler(collect)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = SCRIPTS[attempt.script](attempt.argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
        collect.messages.append(stderr.getvalue())
    except Exception as exc:  # noqa: BLE001 - this is what the suite hunts for
        return Outcome(name, False, f"traceback: {type(exc).__name__}: {exc}")
    finally:
        logger.removeHandler(collect)
    if code != 2:
        return Outcome(name, False, f"exit code {code}, messages {collect.messages}")
    if len(collect.messages) != 1 or attempt.names not in collect.messages[0]:
        return Outcome(name, False, f"error does not name {attempt.names!r}: {collect.messages}")
    leftovers = [str(p) for p in attempt.not_written if p.exists()]
    if leftovers:
        return Outcome(name, False, f"half-written: {leftovers}")
    return Outcome(name, True, collect.messages[0].strip().splitlines()[-1][:200])


def all_cases() -> dict[str, Callable[[Context], Attempt]]:
    """Every case of the catalogue, by name (category prefix: hdf5_, tract_, config_, ...)."""
    from tests.reliability.hostile_files import FILE_CASES
    from tests.reliability.hostile_runs import RUN_CASES

    return {**FILE_CASES, **RUN_CASES}
