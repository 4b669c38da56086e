"""Streamlines/s of the batch pipeline against the raw h5py read rate of the same ids.

Standard workload (as bench_dataset.py): ``write_synthetic_hdf5`` defaults (3 subjects,
64x64x48 volumes of 28 features, 5,000 streamlines of 60-160 mm at 1 mm per subject, ~100
points each), every subject in the training set, batches of 100 streamlines planned by
``BatchSampler``. Measured in one run, side by side:

- raw h5py: the same ids read one streamline slice at a time from the open file;
- ``BatchLoader.load_batch`` through ``build_dataloader`` (each figure right after its own
  raw read, so a ratio compares rates measured under the same machine load): in memory /
  lazy, without / with trilinear interpolation of the 28-feature volume, 0 / 2 workers
  (one short warm-up epoch first, so worker start-up and volume caching are not counted;
  cache_size=3 so the three subjects' volumes stay cached: memory = 3 volumes + one batch);
- peak RSS of a child process streaming one whole epoch (lazy, with interpolation) of lazy
  files of growing size: it must stay flat, not grow with the file.

Usage: ``python benchmarks/bench_loader.py [--quick] [--rss-gb 3]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from dwi_mtl.data.multi_subject_dataset import MultiSubjectDataset
from dwi_mtl.data.synthetic import subject_name, write_synthetic_hdf5
from dwi_mtl.training.batch_loader import BatchLoader
from dwi_mtl.training.batch_sampler import BatchSampler
from dwi_mtl.training.dataloaders import build_dataloader

log = logging.getLogger("bench_loader")
GROUP, INPUT = "streamlines", "input"
BATCH = 100
POINT_BYTES = 12 * 101  # bytes of one ~100-point streamline
DWI_ML = {"lazy+interp": 102.0, "memory+interp": 184.0, "lazy": 680.0, "memory": 14800.0}


def write_workload(path: Path, nb_subjects: int = 3, nb_streamlines: int = 5000) -> Path:
    """The standard workload file with every subject in the training set."""
    names = [subject_name(i) for i in range(nb_subjects)]
    return write_synthetic_hdf5(path, nb_subjects=nb_subjects, nb_streamlines=nb_streamlines,
                                splits={"training": names, "validation": [], "testing": []})


def raw_rate(path: Path, batches: list[list[tuple[int, np.ndarray]]], names: list[str]) -> float:
    """Streamlines/s reading the same ids with plain h5py, one slice per streamline."""
    count = 0
    with h5py.File(path, "r") as h5:
        groups = {s: h5[f"{names[s]}/{GROUP}"] for s in range(len(names))}
        meta = {s: (g["offsets"][()], g["lengths"][()]) for s, g in groups.items()}
        start = time.perf_counter()
        for batch in batches:
            for s, ids in batch:
                data = groups[s]["data"]
                offsets, lengths = meta[s]
                for i in np.sort(ids):
                    data[offsets[i]:offsets[i] + lengths[i]]
                count += len(ids)
        return count / (time.perf_counter() - start)


def loader_rate(path: Path, lazy: bool, input_group: str | None, workers: int,
                nb_batches: int) -> float:
    """Streamlines/s of one capped epoch through build_dataloader, after a warm-up."""
    dataset = MultiSubjectDataset(path, lazy=lazy, cache_size=3)
    sampler = BatchSampler(dataset, GROUP, BATCH, max_batches_per_epoch_training=nb_batches)
    loader = BatchLoader(dataset, GROUP, input_group)
    dataloader = build_dataloader(sampler, loader, num_workers=workers, prefetch_factor=4)
    sampler.set_epoch(0)
    sampler.position = max(nb_batches - 3 * max(workers, 1), 0)  # short warm-up epoch
    for _ in dataloader:
        pass
    sampler.set_epoch(1)
    count = 0
    start = time.perf_counter()
    for batch in dataloader:
        count += batch.nb_streamlines
    elapsed = time.perf_counter() - start
    del dataloader
    return count / elapsed


def planned_ids(path: Path, nb_batches: int) -> list[list[tuple[int, np.ndarray]]]:
    """The ids of epoch 1's batches (those the loader measurements read)."""
    dataset = MultiSubjectDataset(path, lazy=True)
    sampler = BatchSampler(dataset, GROUP, BATCH, max_batches_per_epoch_training=nb_batches)
    sampler.set_epoch(0)
    sampler.set_epoch(1)
    return [[(int(s), ids) for s, ids in b] for b in sampler]


def _peak_rss_kb() -> int:
    """This process's peak RSS in kB (VmHWM: reset at exec, unlike ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_child(path: str) -> None:
    """Stream one epoch lazily with interpolation; print streamlines, seconds, RSS figures."""
    dataset = MultiSubjectDataset(path, lazy=True, cache_size=3)
    sampler = BatchSampler(dataset, GROUP, BATCH)
    loader = BatchLoader(dataset, GROUP, INPUT)
    base_rss = _peak_rss_kb()
    count, start = 0, time.perf_counter()
    first_rss = 0
    for items in sampler:
        count += loader.load_batch(items).nb_streamlines
        if not first_rss:
            first_rss = _peak_rss_kb()
    elapsed = time.perf_counter() - start
    peak = _peak_rss_kb()
    sys.stdout.write(f"{count} {elapsed:.3f} {base_rss} {first_rss} {peak}\n")


def rss_check(workdir: Path, sizes_gb: list[float]) -> None:
    """Peak RSS streaming lazy files of growing size (one child process per file)."""
    log.info("peak RSS streaming one epoch (lazy, interpolation, cache_size=3 volumes of 22 MB):")
    for size in sizes_gb:
        per_subject = max(int(size * 1e9 / POINT_BYTES / 3), 100)
        path = write_workload(workdir / f"rss_{size:g}.hdf5", nb_streamlines=per_subject)
        file_mb = path.stat().st_size / 1e6
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(path)],
                             check=True, capture_output=True, text=True).stdout.split()
        count, elapsed, base, first, peak = int(out[0]), float(out[1]), *map(int, out[2:])
        log.info("  file %8.0f MB  %9d streamlines  %7.0f streamlines/s  RSS after open %5.0f MB,"
                 " after 1st batch %5.0f MB, peak %5.0f MB (growth during the epoch %+.0f MB)",
                 file_mb, count, count / elapsed, base / 1024, first / 1024, peak / 1024,
                 (peak - first) / 1024)
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches, small RSS files")
    parser.add_argument("--batches", type=int, default=None, help="batches per measurement")
    parser.add_argument("--rss-gb", type=float, default=None,
                        help="also stream a lazy file of this size (GB) for the RSS check")
    parser.add_argument("--rss-only", action="store_true", help="only the RSS check")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    nb_batches = args.batches or (30 if args.quick else 150)
    sizes = [0.05, 0.1] if args.quick else [0.1, 0.3]
    sizes += [args.rss_gb] if args.rss_gb else []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if args.rss_only:
            rss_check(workdir, sizes)
            return 0
        path = write_workload(workdir / "standard.hdf5")
        names = [subject_name(i) for i in range(3)]
        ids = planned_ids(path, nb_batches)
        log.info("standard workload: %s (%.0f MB), %d batches of %d streamlines per figure,"
                 " %d CPUs, load average %.2f", path.name, path.stat().st_size / 1e6,
                 nb_batches, BATCH, os.cpu_count() or 0, os.getloadavg()[0])
        log.info("each figure is measured right after a raw h5py read of the same ids (one"
                 " slice per streamline); 'x raw' divides by that adjacent raw rate")
        log.info("%-8s %-8s %-8s %16s %14s %8s %10s", "mode", "interp", "workers",
                 "streamlines/s", "raw h5py /s", "x raw", "x dwi_ml")
        rates, raws = {}, {}
        for lazy in (False, True):
            for input_group in (None, INPUT):
                for workers in (0, 2):
                    key = (lazy, input_group, workers)
                    raws[key] = raw_rate(path, ids, names)
                    rates[key] = loader_rate(path, lazy, input_group, workers, nb_batches)
                    mode = "lazy" if lazy else "memory"
                    ref = DWI_ML[mode + ("+interp" if input_group else "")]
                    log.info("%-8s %-8s %-8d %16.0f %14.0f %8.2f %10.1f", mode,
                             "yes" if input_group else "no", workers, rates[key], raws[key],
                             rates[key] / raws[key], rates[key] / ref)
        lazy_raw = raws[(True, None, 0)]
        targets = [("lazy+interp, 1 process >= 5,000/s", rates[(True, INPUT, 0)] >= 5000),
                   ("memory+interp, 1 process >= 10,000/s", rates[(False, INPUT, 0)] >= 10000),
                   ("lazy without interp >= 0.5x raw", rates[(True, None, 0)] >= 0.5 * lazy_raw)]
        for name, ok in targets:
            log.info("target %-40s %s", name, "met" if ok else "NOT met")
        rss_check(workdir, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
