"""benchmarks/bench_training.py runs (tiny sizes) and prints its figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_training.py"


def test_bench_training_prints_throughput_and_loader_share(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("bench_training", SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--batches", "1", "--batch_size", "8"]) == 0
    out = capsys.readouterr().out
    for text in ("CPU recurrent", "CPU transformer", "loader share",
                 "transformer / recurrent throughput ratio"):
        assert text in out
    assert "GPU" in out
