"""Streamline read throughput of MultiSubjectDataset against raw h5py, measured in one run.

Workload (issue 2, "standard workload"): a synthetic file of 3 subjects, 64x64x48 volumes with
28 features, 5,000 streamlines each of 60-160 mm at 1 mm steps (~100 points), written by
dwi_mtl.data.synthetic.write_synthetic_hdf5 in a temporary folder. Each batch is 100 distinct
random streamline ids of one random subject (ids derived from a fixed seed, identical for every
reader). Printed, streamlines per second of:

- lazy MultiSubjectDataset (one handle, coalesced reads) and in-memory MultiSubjectDataset;
- raw h5py, per streamline: ``data[offset:offset + length]`` for each id (what a direct
  implementation does, and what dwi_ml's lazy mode does);
- raw h5py, coalesced ceiling: the same sorted, merged slices read straight from h5py with no
  reordering or conversion (the least work h5py can do for these ids);

and the ratios lazy / raw. Then the storage choices for the points dataset (contiguous, chunked
at several sizes, gzip) and the merge gap of coalesced reads, measured the same way.

The file is in the OS page cache after writing (warm reads); cold-disk reads are slower for
every reader alike. Readers of one section run interleaved, so compare figures and ratios
within a section: on a shared machine the load, hence absolute rates, drifts between sections.

Usage: python benchmarks/bench_dataset.py [--quick] [--batches N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.data.hdf5_reader import coalesce_ranges, read_packed
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.state import derive_generator

GROUP = "streamlines"
BATCH_SIZE = 100
NB_SUBJECTS = 3
NB_STREAMLINES = 5000

Batch = tuple[int, np.ndarray]


def make_batches(nb_batches: int, nb_subjects: int = NB_SUBJECTS,
                 nb_streamlines: int = NB_STREAMLINES, seed: int = 0) -> list[Batch]:
    """Random (subject index, 100 distinct ids) batches, the same for every reader."""
    rng = derive_generator(seed, 17)
    return [(int(rng.integers(nb_subjects)),
             rng.choice(nb_streamlines, size=BATCH_SIZE, replace=False))
            for _ in range(nb_batches)]


def rates(readers: dict[str, Callable[[Batch], object]], batches: list[Batch],
          repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` streamlines per second of each reader over all batches.

    Readers run in turn inside every repeat (interleaved), so a change of machine load during
    the run affects them alike and the ratios stay meaningful on a shared machine.
    """
    for read in readers.values():
        read(batches[0])  # open handles, warm caches
    best = dict.fromkeys(readers, 0.0)
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            for batch in batches:
                read(batch)
            elapsed = time.perf_counter() - start
            best[name] = max(best[name], len(batches) * BATCH_SIZE / elapsed)
    return best


class RawReader:
    """Direct h5py reads of the same ids (one handle, metadata loaded once)."""

    def __init__(self, path: Path) -> None:
        self.h5 = h5py.File(path, "r")
        names = sorted(self.h5)  # subj-00, -01, -02: training, validation, testing
        self.data = [self.h5[n][GROUP]["data"] for n in names]
        self.offsets = [self.h5[n][GROUP]["offsets"][()] for n in names]
        self.lengths = [self.h5[n][GROUP]["lengths"][()] for n in names]

    def per_streamline(self, batch: Batch) -> list[np.ndarray]:
        subject, ids = batch
        data, offsets, lengths = self.data[subject], self.offsets[subject], self.lengths[subject]
        return [data[offsets[i]:offsets[i] + lengths[i]] for i in ids]

    def coalesced(self, batch: Batch, max_gap: int = 2048) -> list[np.ndarray]:
        subject, ids = batch
        ids = np.sort(ids)
        starts = self.offsets[subject][ids]
        stops = starts + self.lengths[subject][ids]
        block_starts, block_stops = coalesce_ranges(starts, stops, max_gap)
        data = self.data[subject]
        return [data[a:b] for a, b in zip(block_starts, block_stops)]


def dataset_reader(dataset: MultiSubjectDataset) -> Callable[[Batch], object]:
    """Read a batch through the public subset API (all subjects are in 'subjects')."""
    subsets = [dataset.training, dataset.validation, dataset.testing]

    def read(batch: Batch) -> object:
        subject, ids = batch
        return subsets[subject].get_streamlines(0, GROUP, ids)

    return read


def main_comparison(path: Path, batches: list[Batch], repeats: int) -> None:
    """Lazy and in-memory datasets against raw h5py for the same ids."""
    lazy = MultiSubjectDataset(path, lazy=True)
    memory = MultiSubjectDataset(path, lazy=False)
    raw = RawReader(path)
    measured = rates({
        "lazy MultiSubjectDataset": dataset_reader(lazy),
        "in-memory MultiSubjectDataset": dataset_reader(memory),
        "raw h5py, one read per streamline": raw.per_streamline,
        "raw h5py, coalesced slices (ceiling)": raw.coalesced,
    }, batches, repeats)
    print(f"\nRandom batches of {BATCH_SIZE} streamlines, {len(batches)} batches, "
          f"best of {repeats}, interleaved (streamlines/s):")
    for name, value in measured.items():
        print(f"  {name:40s} {value:12,.0f}")
    lazy_rate = measured["lazy MultiSubjectDataset"]
    print(f"  ratio lazy / raw per-streamline         "
          f"{lazy_rate / measured['raw h5py, one read per streamline']:12.2f}x")
    print(f"  ratio lazy / raw coalesced ceiling      "
          f"{lazy_rate / measured['raw h5py, coalesced slices (ceiling)']:12.2f}x")
    print(f"  ratio in-memory / lazy                  "
          f"{measured['in-memory MultiSubjectDataset'] / lazy_rate:12.2f}x")


LAYOUTS: list[tuple[str, int | None, str | None]] = [
    ("contiguous (default)", None, None),
    ("chunks of 4,096 points", 4096, None),
    ("chunks of 16,384 points", 16384, None),
    ("chunks of 65,536 points", 65536, None),
    ("gzip, chunks of 16,384 points", 16384, "gzip"),
]


def storage_comparison(workdir: Path, nb_batches: int, repeats: int, nb_subjects: int,
                       nb_streamlines: int, quick: bool) -> None:
    """Lazy read rate for several layouts of the points dataset (same streamlines).

    Chunks are read whole into h5py's 1 MB chunk cache: on small subjects a batch touches few
    chunks and the cache serves it, on large subjects every id lands in another chunk and
    whole chunks are read for one streamline. Both sizes are measured.
    """
    layouts = [LAYOUTS[0], LAYOUTS[2], LAYOUTS[4]] if quick else LAYOUTS
    batches = make_batches(nb_batches, nb_subjects, nb_streamlines)
    readers = {}
    for name, chunks, compression in layouts:
        file_name = f"layout_{nb_streamlines}_{chunks}_{compression}.hdf5"
        path = write_synthetic_hdf5(workdir / file_name, nb_subjects=nb_subjects,
                                    volume_shape=(8, 8, 8),
                                    nb_features=1, nb_streamlines=nb_streamlines,
                                    points_chunks=chunks, compression=compression,
                                    splits={"training": [f"subj-{i:02d}"
                                                         for i in range(nb_subjects)]})
        readers[name] = subject_reader(MultiSubjectDataset(path, lazy=True))
    # gzip is 10-50x slower: fewer batches keep the run short, the rate stays comparable
    measured = rates({k: v for k, v in readers.items() if "gzip" not in k}, batches, repeats)
    measured.update(rates({k: v for k, v in readers.items() if "gzip" in k},
                          batches[: max(2, len(batches) // 10)], 1))
    baseline = measured[layouts[0][0]]
    print(f"\nPoints dataset layout, lazy reads, {nb_subjects} subject(s) x {nb_streamlines:,} "
          "streamlines (streamlines/s):")
    for name, _, _ in layouts:
        value = measured[name]
        print(f"  {name:40s} {value:12,.0f}   ({value / baseline:.2f}x contiguous)")
    for path in workdir.glob(f"layout_{nb_streamlines}_*.hdf5"):
        path.unlink()


def subject_reader(dataset: MultiSubjectDataset) -> Callable[[Batch], object]:
    """Read a batch of training subject ``subject`` (all subjects in training)."""
    def read(batch: Batch) -> object:
        subject, ids = batch
        return dataset.training.get_streamlines(subject, GROUP, ids)
    return read


def gap_comparison(path: Path, batches: list[Batch], repeats: int) -> None:
    """Lazy read rate for several merge gaps of coalesced reads."""
    dataset = MultiSubjectDataset(path, lazy=True)
    subsets = [dataset.training, dataset.validation, dataset.testing]

    def reader(gap: int) -> Callable[[Batch], object]:
        def read(batch: Batch) -> object:
            subject, ids = batch
            name = subsets[subject].subject_names[0]
            info = dataset._meta.streamlines[(name, GROUP)]
            source = dataset._file.dataset(f"{name}/{GROUP}/data")
            return read_packed(source, info.offsets, info.lengths, ids, max_gap=gap)
        return read

    gaps = {f"max_gap={gap:,} points": reader(gap) for gap in (0, 256, 2048, 16384)}
    gaps["whole subject span"] = reader(10**9)
    print("\nMerge gap of coalesced reads, lazy (streamlines/s):")
    for label, value in rates(gaps, batches, repeats).items():
        print(f"  {label:40s} {value:12,.0f}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer batches and layouts.")
    parser.add_argument("--batches", type=int, help="Batches per measurement.")
    parser.add_argument("--repeats", type=int, help="Repeats (best is kept).")
    parser.add_argument("--workdir", help="Folder for the generated files (default: temp).")
    args = parser.parse_args(argv)
    batches = make_batches(args.batches or (40 if args.quick else 300))
    repeats = args.repeats or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench_dataset_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        path = write_synthetic_hdf5(workdir / "standard.hdf5", nb_subjects=NB_SUBJECTS,
                                    nb_streamlines=NB_STREAMLINES)
        with h5py.File(path) as h5:
            points = [h5[n][GROUP]["lengths"][()] for n in h5]
        mean_points = statistics.mean(float(p.mean()) for p in points)
        print(f"standard workload: {path.stat().st_size / 1e6:.0f} MB, {NB_SUBJECTS} subjects, "
              f"64x64x48x28 volumes, {NB_STREAMLINES} streamlines/subject, "
              f"{mean_points:.0f} points/streamline on average "
              f"(written in {time.perf_counter() - start:.1f} s)")
        main_comparison(path, batches, repeats)
        gap_comparison(path, batches, repeats)
        nb_batches = len(batches)
        storage_comparison(workdir, nb_batches, repeats, NB_SUBJECTS, NB_STREAMLINES, args.quick)
        storage_comparison(workdir, nb_batches, repeats, 1, 50_000, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
