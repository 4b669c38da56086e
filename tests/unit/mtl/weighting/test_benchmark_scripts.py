"""The weighting benchmark scripts run end to end on a tiny budget and reject bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


def test_multidigits_quick_writes_csv_and_png(tmp_path: Path) -> None:
    result = run("multidigits.py", "--quick", "--out", str(tmp_path), "--methods", "ew", "upgrad")
    assert result.returncode == 0, result.stderr
    assert "Δp" in result.stdout
    with open(tmp_path / "multidigits.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["ew", "upgrad"]
    assert all(0.0 <= float(r["left"]) <= 1.0 for r in rows)
    assert (tmp_path / "multidigits.png").stat().st_size > 0


def test_multidigits_rejects_an_unknown_method(tmp_path: Path) -> None:
    result = run("multidigits.py", "--out", str(tmp_path), "--methods", "nope")
    assert result.returncode == 2
    assert "--methods: unknown ['nope']" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_bench_weighting_quick_prints_ratios() -> None:
    result = run("bench_weighting.py", "--quick", "--tasks", "2", "--batch", "16")
    assert result.returncode == 0, result.stderr
    assert "floor" in result.stdout and "upgrad" in result.stdout


def test_bench_weighting_measures_a_subset_on_the_cpu_clock() -> None:
    result = run("bench_weighting.py", "--quick", "--tasks", "2", "--batch", "8", "--rounds", "2",
                 "--methods", "pcgrad", "uw")
    assert result.returncode == 0, result.stderr
    assert "cpu clock" in result.stdout
    rows = [line.split()[:2] for line in result.stdout.splitlines()
            if line.startswith(("pcgrad", "uw", "mgda"))]
    assert rows == [["uw", "param"], ["pcgrad", "param"], ["pcgrad", "rep"], ["pcgrad", "vmap"]]


def test_bench_weighting_measures_one_mode_with_the_rep_grad_reference() -> None:
    result = run("bench_weighting.py", "--quick", "--tasks", "2", "--batch", "8", "--rounds", "2",
                 "--methods", "mgda", "--modes", "rep")
    assert result.returncode == 0, result.stderr
    assert "rep_floor" in result.stdout and "x EW (the least a Gramian rep_grad" in result.stdout
    rows = [line.split()[:2] for line in result.stdout.splitlines() if line.startswith("mgda")]
    assert rows == [["mgda", "rep"]]


def test_bench_weighting_rejects_an_unknown_method_and_cpu_clock_with_threads() -> None:
    result = run("bench_weighting.py", "--methods", "nope")
    assert result.returncode == 2 and "unknown methods ['nope']" in result.stderr
    result = run("bench_weighting.py", "--threads", "2")
    assert result.returncode == 2 and "--clock cpu" in result.stderr
