"""scripts/create_hdf5_dataset.py end to end: --help, a real run, and bad input exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dwi_mtl.cli.common import EXIT_BAD_INPUT
from dwi_mtl.cli.create_hdf5_dataset import main, read_subject_list
from dwi_mtl.data import MultiSubjectDataset
from tests.unit.data.real_inputs import small_25_config, write_json, write_small_25_subject

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "create_hdf5_dataset.py"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("script")
    subjects = root / "subjects"
    write_small_25_subject(subjects / "s1")
    write_small_25_subject(subjects / "s2", flip=True)
    (root / "train.txt").write_text("s1\n\n# a comment\n")
    (root / "valid.txt").write_text("s2  # held out\n")
    (root / "test.txt").write_text("")
    return {"root": root, "subjects": subjects, "config": write_json(root / "config.json",
                                                                    small_25_config())}


def _args(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    root = inputs["root"]
    return [str(inputs["subjects"]), str(out), str(inputs["config"]), str(root / "train.txt"),
            str(root / "valid.txt"), str(root / "test.txt"), *extra]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_help() -> None:
    result = _run(["--help"])
    assert result.returncode == 0
    assert "--remove_invalid" in result.stdout and "--step_size" in result.stdout


def test_script_creates_dataset(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data.hdf5"
    result = _run(_args(inputs, out, "--step_size", "1.0"))
    assert result.returncode == 0, result.stderr
    dataset = MultiSubjectDataset(out, lazy=True)
    assert dataset.training.subject_names == ["s1"]
    assert dataset.validation.subject_names == ["s2"]
    assert dataset.step_size == 1.0


def test_script_bad_input_exit_code_and_one_line(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data.hdf5"
    result = _run(_args(inputs, out, "--compress", "-1"))
    assert result.returncode == EXIT_BAD_INPUT
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "compress must be positive" in errors[0]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_read_subject_list(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("a\n b \n#c\n\nd # e\n")
    assert read_subject_list(path) == ["a", "b", "d"]


@pytest.mark.parametrize("case", ["missing_list", "existing_output", "two_splits",
                                  "unknown_key", "missing_subject"])
def test_main_bad_inputs(inputs: dict[str, Path], tmp_path: Path, case: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data.hdf5"
    args = _args(inputs, out)
    expected = {"missing_list": "nope.txt' does not exist",
                "existing_output": "already exists",
                "two_splits": "subject 's1' is in both",
                "unknown_key": "unknown key(s) ['extra']",
                "missing_subject": "subject 'ghost' has no folder"}[case]
    if case == "missing_list":
        args[3] = str(tmp_path / "nope.txt")
    elif case == "existing_output":
        out.write_bytes(b"old")
    elif case == "two_splits":
        args[5] = str(write_list(tmp_path / "t.txt", "s1"))
    elif case == "unknown_key":
        config = small_25_config()
        config["dwi"]["extra"] = 1
        args[2] = str(write_json(tmp_path / "c.json", config))
    else:
        args[5] = str(write_list(tmp_path / "t.txt", "ghost"))
    assert main(args) == EXIT_BAD_INPUT
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and expected in errors[0]
    leftovers = {p.name for p in tmp_path.iterdir()} - {"t.txt", "c.json"}
    assert leftovers == ({"data.hdf5"} if case == "existing_output" else set())
    if case == "existing_output":
        assert out.read_bytes() == b"old"
    assert main(args + ["-f"]) == (0 if case == "existing_output" else EXIT_BAD_INPUT)


def write_list(path: Path, *names: str) -> Path:
    """Write a subject list file."""
    path.write_text("\n".join(names) + "\n")
    return path
