"""Fault injection: kill-anywhere trials, storage/signal/numerical faults and hostile inputs.

Prints the table of RELIABILITY.md: how many trials, faults and hostile inputs were tried and
how many held. One kill-anywhere trial trains the standard run of ``tests/reliability/runs.py``
(3 epochs, ~15 checkpoints, best model, .npy logs; 2 trials in 8 with Comet offline) in a
subprocess that is SIGKILLed, resumed (and sometimes killed again) until it completes; it holds
when the final weights, optimizer state and non-timing .npy logs equal the uninterrupted run's
bit for bit. Kill moments rotate between a random write point (``DWI_MTL_FAULT``: a random hit
among those the run reaches), a random hit of any point, a random wall-clock moment, and two
or three kills in a row. The storage, signal, numerical and integrity faults are the
``tests/reliability`` tests (run here through pytest, counted per file); the hostile inputs are
the whole catalogue of ``tests/reliability/hostile*.py``.

Usage::

    python benchmarks/fault_injection.py             # 60 kill-anywhere trials (~20 min, 2 cores)
    python benchmarks/fault_injection.py --trials 100
    python benchmarks/fault_injection.py --quick     # 6 trials, a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _name, _value in (("COMET_AUTO_LOG_ENV_DETAILS", "false"),
                      ("COMET_ERROR_TRACKING_ENABLE", "false"),
                      ("COMET_DISABLE_AUTO_LOGGING", "1")):
    os.environ.setdefault(_name, _value)

from dwi_mtl.training import faults  # noqa: E402
from tests.reliability.hostile import Inputs, all_cases, check_case  # noqa: E402
from tests.reliability.runs import (  # noqa: E402
    assert_same_as_reference,
    reference_run,
    resume_until_done,
    run_child,
)

COMET = {"comet_mode": "offline"}
FAULT_FILES = {
    "storage faults (ENOSPC/EIO, read-only, missing files)": "test_storage_faults.py",
    "signals and numerical faults": "test_signals_and_numerics.py",
    "checkpoint integrity and upgrade path": "test_checkpoint_integrity.py",
}


def count_hits(folder: Path) -> tuple[Any, dict[str, int]]:
    """Run the reference (Comet offline) in-process with every point armed but never reached,
    and return it with the number of times each point was hit."""
    faults.arm(",".join(f"{point}:{10**9}" for point in faults.FAULT_POINTS))
    trainer = reference_run(folder, comet_mode="offline")
    hits = faults.hit_counts()
    faults.arm("")
    return trainer, hits


def random_moment_kill(folder: Path, name: str, extra: dict[str, Any] | None,
                       duration: float, rng: random.Random) -> tuple[Any, str]:
    """SIGKILL a fresh run at a random moment of its training (after the imports, which take
    about the first 40% of a run here); start again when the run finished first."""
    for _ in range(5):
        delay = rng.uniform(0.4 * duration, 0.95 * duration)
        result = run_child(folder, name, extra=extra, kill_after=delay)
        if result.returncode == -signal.SIGKILL:
            break
        shutil.rmtree(folder / name, ignore_errors=True)
    return result, f"t={delay:.2f}s"


def one_trial(index: int, folder: Path, reference: Any, hits: dict[str, int],
              durations: dict[bool, float], rng: random.Random) -> dict[str, Any]:
    """Kill one run (one to three times) the trial's way, resume it to the end, compare."""
    name = f"trial-{index:03d}"
    kind = ("point", "any", "time", "multi")[index % 4]
    extra = COMET if index % 8 in (1, 4) else None  # an "any" and a "point" trial in 8
    reached = {p: n for p, n in hits.items() if n and (extra or not p.startswith("comet"))}
    kills, landed = (rng.randint(2, 3) if kind == "multi" else 1), 0
    moments = []
    for _ in range(kills):
        if kind == "time":
            result, moment = random_moment_kill(folder, name, extra, durations[bool(extra)], rng)
            moments.append(moment)
        else:
            if kind == "any":
                fault = f"*:{rng.randint(1, sum(reached.values()))}"
            else:
                point = ("comet.ending" if extra and rng.random() < 0.5
                         else rng.choice(sorted(reached)))
                fault = f"{point}:{rng.randint(1, reached[point])}"
            result = run_child(folder, name, fault=fault, extra=extra)
            moments.append(fault)
        landed += result.returncode == -signal.SIGKILL
        if result.returncode not in (0, -signal.SIGKILL):
            return {"name": name, "kind": kind, "held": False, "landed": landed,
                    "detail": result.stderr[-500:]}
    try:
        resumes = resume_until_done(folder, name, extra=extra)
        assert_same_as_reference(reference, folder, name)
    except AssertionError as exc:
        return {"name": name, "kind": kind, "held": False, "landed": landed,
                "detail": f"{moments}: {exc}"}
    return {"name": name, "kind": kind, "held": True, "landed": landed, "resumes": resumes,
            "detail": " ".join(moments)}


def kill_anywhere(trials: int, seed: int) -> list[dict[str, Any]]:
    """Run the kill-anywhere trials; return one record per trial."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="fault_injection_") as tmp:
        folder = Path(tmp)
        reference, hits = count_hits(folder)
        sys.stdout.write(f"write points reached by one run: {hits}\n")
        durations = {}
        for comet in (False, True):
            start = time.monotonic()
            run_child(folder, f"timing-{comet}", extra=COMET if comet else None)
            durations[comet] = time.monotonic() - start
        records = []
        for index in range(trials):
            record = one_trial(index, folder, reference, hits, durations, rng)
            records.append(record)
            sys.stdout.write(f"  {record['name']} {record['kind']:5s} kills landed "
                             f"{record['landed']} held={record['held']} {record['detail']}\n")
            sys.stdout.flush()
    return records


def hostile_inputs() -> tuple[int, int, list[str]]:
    """Run the hostile-input catalogue; return (tried, held, failures). (Imported with the rest
    at start, so the whole run uses one version of the code.)"""
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="hostile_") as tmp:
        inputs = Inputs(Path(tmp) / "inputs")
        outcomes = [check_case(name, case, inputs, Path(tmp) / name)
                    for name, case in sorted(all_cases().items())]
    logging.disable(logging.NOTSET)
    return len(outcomes), sum(o.held for o in outcomes), [
        f"{o.case}: {o.detail}" for o in outcomes if not o.held]


def fault_tests() -> dict[str, tuple[int, int]]:
    """Run the storage/signal/numerical/integrity tests; (tried, held) per file."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, name in FAULT_FILES.items():
            report = Path(tmp) / f"{name}.xml"
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"--junitxml={report}", str(ROOT / "tests" / "reliability" / name)],
                           cwd=ROOT, capture_output=True, text=True, check=False)
            suite = ElementTree.parse(report).getroot().find("testsuite")
            assert suite is not None
            tried = int(suite.get("tests", 0)) - int(suite.get("skipped", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            results[label] = (tried, tried - failed)
    return results


def disabled_cost(calls: int = 1_000_000) -> tuple[float, float]:
    """Cost of a disarmed :func:`fault_point` (ns per call) and of one checkpoint save of the
    standard run (ms), measured side by side: the hooks' overhead as a share of a save."""
    import timeit

    from dwi_mtl.training.checkpoint import CheckpointManager

    faults.arm("")
    per_call = timeit.timeit(lambda: faults.fault_point("checkpoint.renamed"), number=calls)
    with tempfile.TemporaryDirectory() as tmp:
        from tests.reliability.runs import build_run

        trainer = build_run(Path(tmp), "cost")
        state = trainer.checkpoint_state()
        manager = CheckpointManager(Path(tmp) / "checkpoints", durability="none")
        saves = 20
        seconds = timeit.timeit(lambda: manager.save(state, step=next(counter)), number=saves)
    return per_call / calls * 1e9, seconds / saves * 1e3


counter = iter(range(10**9))


def main() -> None:
    """Parse the arguments, run every part, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60, help="kill-anywhere trials")
    parser.add_argument("--quick", action="store_true", help="6 trials (smoke run)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    trials = 6 if args.quick else args.trials
    start = time.monotonic()
    records = kill_anywhere(trials, args.seed)
    tried, held, failures = hostile_inputs()
    fault_results = fault_tests()
    rows = []
    for kind in ("point", "any", "time", "multi"):
        subset = [r for r in records if r["kind"] == kind]
        rows.append((f"kill anywhere: {kind}", len(subset), sum(r["held"] for r in subset),
                     f"{sum(r['landed'] for r in subset)} SIGKILLs landed"))
    rows.append(("kill anywhere: total", len(records), sum(r["held"] for r in records),
                 f"{sum(r['landed'] for r in records)} SIGKILLs landed"))
    rows.extend((label, n, ok, "pytest cases") for label, (n, ok) in fault_results.items())
    rows.append(("hostile inputs (distinct)", tried, held, "exit 2, file named, nothing written"))
    sys.stdout.write("\n| what | tried | held | note |\n|---|---:|---:|---|\n")
    for label, n, ok, note in rows:
        sys.stdout.write(f"| {label} | {n} | {ok} | {note} |\n")
    nanoseconds, milliseconds = disabled_cost()
    points_per_save = 4  # state_written, before_rename, renamed (+ npy/best model ones)
    sys.stdout.write(f"\ndisarmed fault_point: {nanoseconds:.0f} ns per call; one checkpoint "
                     f"save: {milliseconds:.2f} ms; hooks / save = "
                     f"{points_per_save * nanoseconds / (milliseconds * 1e6):.2e}\n")
    sys.stdout.write(f"elapsed {time.monotonic() - start:.0f} s\n")
    for failure in failures + [f"{r['name']}: {r['detail']}" for r in records if not r["held"]]:
        sys.stdout.write(f"FAILED {failure}\n")


if __name__ == "__main__":
    main()
