"""Overhead of AbstractTrainer against a hand-written loop, and of its checkpoints, in one run.

Three figures, each a ratio measured side by side in this process:

1. Step time. The same MLP (a step of a few ms on CPU), the same in-memory batches, the same
   Adam optimizer: a hand-written loop (shuffle with a seeded permutation, zero_grad, forward,
   loss, backward, step, ``loss.item()`` for logging) against ``AbstractTrainer`` with its
   defaults on (.npy histories, gradient norm, non-finite checks, tqdm progress bar drawn to
   /dev/null, best-model monitor, one atomic checkpoint at the end of each epoch). Target
   <= 1.03. Measured two ways:

   - interleaved batch by batch (:class:`InterleavedSource`): before the trainer gets a batch,
     the hand-written step runs on it, and so does the hand-written step plus the per-batch
     gradient norm that the trainer logs and checks by default, each with its own model.
     Medians of ~1400 per-step times; the steadiest figure here (within +-0.5% run to run),
     and the one that separates the cost of the norm from the trainer's own;
   - epoch by epoch: the two loops alternate whole epochs in one run; medians and minima are
     compared, per training step and for the whole epoch (checkpoint included).
2. Checkpoint save + load against plain ``torch.save`` + ``torch.load`` of the same state dict
   (model, Adam state, RNG states, histories...). Ours adds a CRC32, fsync of file and folder,
   an atomic rename, pruning and verification on load. Target <= 1.2x.
3. The slowdown of an epoch with ``checkpoint_every_n_batches=50``.

Usage: python benchmarks/bench_trainer_overhead.py [--quick] [--batches N] [--repeats N]
    [--clock wall|cpu] [--malloc fixed|default]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwi_mtl.state import derive_generator
from dwi_mtl.training.batch_sources import MemoryBatchSource
from dwi_mtl.training.optimization import total_norm
from dwi_mtl.training.trainer import AbstractTrainer

#: The clock of every measurement: wall time (``--clock wall``, default) or the CPU time of the
#: whole process, every thread included (``--clock cpu``: steadier on a shared machine, where
#: other processes take the cores; time spent waiting for the disk is not counted).
CLOCK = time.perf_counter


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def calibrate_batch_size(width: int, step_ms: float) -> int:
    """The batch size (a multiple of 16) whose hand-written step takes about ``step_ms`` here.

    The step time is close to linear in the batch size: time two sizes, interpolate.
    """
    model = make_model(width)
    HAND_OPTIMIZERS[id(model)] = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = {}
    for size in (64, 256):
        batches = make_batches(20, size)
        hand_loop(model, batches, 0)  # warm-up
        times[size] = min(hand_loop(model, batches, e) for e in range(1, 4)) / 20 * 1e3
    slope = (times[256] - times[64]) / 192
    size = 64 + (step_ms - times[64]) / slope if slope > 0 else 128
    return max(16, int(round(size / 16)) * 16)


def make_batches(nb_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(batch_size, 128, generator=generator),
             torch.randint(0, 10, (batch_size,), generator=generator))
            for _ in range(nb_batches)]


class MemoryTrainer(AbstractTrainer):
    """AbstractTrainer fed by in-memory batches (no validation set)."""

    def _build_sources(self, sampler: Any, loader: Any, num_workers: int, device: Any) -> Any:
        return sampler, None

    def prepare_batch(self, batch: Any) -> Any:
        return batch

    def compute_batch_loss(self, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        loss: torch.Tensor = nn.functional.cross_entropy(self.model(inputs), targets)
        return loss


def hand_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any,
              with_norm: bool = False) -> float:
    """One hand-written step; ``with_norm`` adds what the trainer adds by default: the
    gradient norm, logged and checked. Returns the loss (read for logging)."""
    inputs, targets = batch
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    if with_norm:
        math.isfinite(total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    optimizer.step()
    return loss.item()


def hand_loop(model: nn.Module, batches: list[Any], epoch: int) -> float:
    """One epoch of the hand-written loop; returns its wall time."""
    optimizer = HAND_OPTIMIZERS[id(model)]
    order = derive_generator(0, epoch).permutation(len(batches))
    start = CLOCK()
    losses = [hand_step(model, optimizer, batches[index]) for index in order]  # noqa: F841
    return CLOCK() - start


HAND_OPTIMIZERS: dict[int, torch.optim.Optimizer] = {}


def make_trainer(folder: Path, name: str, batches: list[Any], width: int,
                 trainer_class: type = MemoryTrainer, **options: Any) -> Any:
    trainer = trainer_class(make_model(width), folder, name, MemoryBatchSource(batches, seed=0),
                            None, weight_decay=0.0, device="cpu", progress_bar=True,
                            handle_signals=True, **options)
    trainer.progress_reporter.stream = open(os.devnull, "w")  # noqa: SIM115 - bar drawn, hidden
    return trainer


def trainer_epoch(trainer: Any) -> float:
    """Run one more epoch (a separate ``train_and_validate`` call); return its wall time."""
    trainer.max_epochs = trainer.epoch + 1
    start = CLOCK()
    trainer.train_and_validate()
    return CLOCK() - start


class AlternatingTrainer(MemoryTrainer):
    """Runs one hand-written epoch at the start of each of its own epochs, timed apart.

    Both loops thus alternate inside one ``train_and_validate`` call, and the trainer's epoch
    time (from the end of one ``on_epoch_start`` to the start of the next) includes everything
    it does between batches: logs, best model, the epoch-end checkpoint.
    """

    def setup(self, hand_model: nn.Module, batches: list[Any]) -> None:
        self.hand_model, self.hand_batches = hand_model, batches
        self.hand_times: list[float] = []
        self.epoch_times: list[float] = []
        self.epoch_end_times: list[float] = []
        self._mark: float | None = None
        self._last_batch_end = 0.0

    def on_batch_end(self, phase: str, epoch: int, index: int, metrics: dict[str, float]) -> None:
        if index == len(self.hand_batches) - 1:
            self._last_batch_end = CLOCK()

    def on_epoch_start(self, epoch: int) -> None:
        now = CLOCK()
        if self._mark is not None:
            self.epoch_times.append(now - self._mark)
            self.epoch_end_times.append(now - self._last_batch_end)
        self.hand_times.append(hand_loop(self.hand_model, self.hand_batches, epoch))
        self._mark = CLOCK()


def bench_steps(folder: Path, batches: list[Any], width: int, repeats: int) -> None:
    model = make_model(width)
    HAND_OPTIMIZERS[id(model)] = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = make_trainer(folder, "steps", batches, width, trainer_class=AlternatingTrainer)
    trainer.setup(model, batches)
    trainer.max_epochs = repeats + 2
    trainer.train_and_validate()
    n = len(batches)
    # epoch 0 of each loop is a warm-up; the trainer's last epoch has no closing mark. Epoch
    # i of the trainer directly follows hand-written epoch i: their ratio is taken per pair.
    hand_times = trainer.hand_times[1:len(trainer.epoch_times)]
    epoch_times, end_times = trainer.epoch_times[1:], trainer.epoch_end_times[1:]
    step_times = [e - x for e, x in zip(epoch_times, end_times)]
    step_ratios = [s / h for s, h in zip(step_times, hand_times)]
    epoch_ratios = [e / h for e, h in zip(epoch_times, hand_times)]
    for label, pick in (("median", statistics.median), ("min", min)):
        hand, steps = pick(hand_times) / n * 1e3, pick(step_times) / n * 1e3
        epoch, end = pick(epoch_times) / n * 1e3, pick(end_times) * 1e3
        print(f"step time ({label} of {len(step_times)} alternated epochs): hand-written loop "
              f"{hand:.3f} ms; AbstractTrainer {steps:.3f} ms per training step, {epoch:.3f} ms "
              f"per step over the whole epoch (epoch end: .npy logs, best model, checkpoint, "
              f"{end:.1f} ms)")
        print(f"  ratio of the {label}s AbstractTrainer / hand-written: {steps / hand:.3f} per "
              f"step [target <= 1.03]; {epoch / hand:.3f} per {n}-batch epoch")
    print(f"  per-pair ratio per step, median {statistics.median(step_ratios):.3f} "
          f"[{_quartiles(step_ratios)}]; per epoch, median "
          f"{statistics.median(epoch_ratios):.3f}")


class InterleavedSource(MemoryBatchSource):
    """Runs, before the trainer gets each batch, the hand-written step on it, and the same
    step plus the gradient norm the trainer logs, each with its own model and optimizer.

    The three steps alternate batch by batch, so a burst of load from other processes
    weighs on all three; the medians of thousands of per-step times are compared. The
    trainer's step time runs from one batch handed out to the next: everything the engine
    does per batch (logs, progress bar, checks) is in it.
    """

    def setup(self, width: int) -> None:
        self.steps: dict[str, list[float]] = {"hand": [], "norm": [], "trainer": []}
        self.loops = {}
        for name in ("hand", "norm"):
            model = make_model(width)
            self.loops[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
        self._handed_out: float | None = None

    def _step(self, name: str, batch: Any) -> None:
        model, optimizer = self.loops[name]
        start = CLOCK()
        hand_step(model, optimizer, batch, with_norm=name == "norm")
        self.steps[name].append(CLOCK() - start)

    def _iterate(self, order: list[int]) -> Any:
        for count, index in enumerate(order):
            if self._handed_out is not None:
                self.steps["trainer"].append(CLOCK() - self._handed_out)
            self.consumed += 1
            for name in ("hand", "norm") if count % 2 else ("norm", "hand"):
                self._step(name, self.batches[index])
            self._handed_out = CLOCK()
            yield self.batches[index]
        self._handed_out = None  # the epoch end is not a step


def bench_steps_interleaved(folder: Path, batches: list[Any], width: int, epochs: int) -> None:
    source = InterleavedSource(batches, seed=0)
    source.setup(width)
    trainer = MemoryTrainer(make_model(width), folder, "interleaved", source, None,
                            weight_decay=0.0, device="cpu", progress_bar=True,
                            handle_signals=True, max_epochs=epochs + 1)
    trainer.progress_reporter.stream = open(os.devnull, "w")  # noqa: SIM115 - bar drawn, hidden
    trainer.train_and_validate()
    warm = len(batches)  # the first epoch is a warm-up
    m = {name: statistics.median(times[warm:]) * 1e3 for name, times in source.steps.items()}
    print(f"step time interleaved batch by batch (median of {len(source.steps['trainer'][warm:])}"
          f" steps): hand-written loop {m['hand']:.3f} ms; hand-written loop + the gradient norm "
          f"{m['norm']:.3f} ms; AbstractTrainer {m['trainer']:.3f} ms")
    print(f"  ratio AbstractTrainer / hand-written: {m['trainer'] / m['hand']:.3f} per step "
          f"[target <= 1.03]; the per-batch gradient norm alone (logged and checked by default): "
          f"{m['norm'] / m['hand']:.3f}; AbstractTrainer / (hand-written + norm): "
          f"{m['trainer'] / m['norm']:.3f}")


def bench_checkpoint(folder: Path, batches: list[Any], width: int, repeats: int) -> None:
    """Save (in a run) and load (at a resume) happen apart: each is timed on its own.

    Fair by construction: the same state dict, the same disk (both under ``folder``), a fresh
    file per save on both sides (overwriting one file is slower on ext4, which flushes a
    truncated file on close), the save of both made durable off the clock before it is
    loaded (our background fsync; an ``fsync`` of the plain file: the first read of a file
    still being written back is 2-4x slower here, whichever side it falls on), the two
    orders alternated, and the ratio taken per repeat so that a burst of load from other
    processes weighs on both sides of one ratio; the median of the ratios is reported.
    """
    trainer = make_trainer(folder, "ckpt", batches, width)
    trainer.max_epochs = 1
    trainer.train_and_validate()
    state = trainer.checkpoint_state()
    manager, plain_folder = trainer.checkpoints, folder / "plain"
    plain_folder.mkdir()
    times: dict[str, list[float]] = {k: [] for k in (
        "save", "load", "ours_save", "sync_wait", "ours_load",
        "plain_save", "plain_load", "sync_save", "sync_load")}

    def plain(step: int, key: str = "") -> None:
        path = plain_folder / f"{step}.pt"
        times[key + "save"].append(_timed(lambda: torch.save(state, path)))
        for old in plain_folder.glob("*.pt"):  # off the clock: keep one, make it durable
            if old != path:
                old.unlink()
        _fsync(path)
        _fsync(plain_folder)
        times[key + "load"].append(_timed(lambda: torch.load(path, weights_only=False)))

    def ours(step: int) -> None:
        times["ours_save"].append(_timed(lambda: manager.save(state, 10_000 + step)))
        times["sync_wait"].append(_timed(manager.wait))
        times["ours_load"].append(_timed(manager.load_latest))

    def synced(step: int) -> None:
        times["sync_save"].append(_timed(lambda: manager.save(state, 20_000 + step)))
        times["sync_load"].append(_timed(manager.load_latest))

    for durability, runs in (("background", (plain, ours)), ("sync", (plain, synced))):
        manager.durability = durability
        for step in range(repeats):
            for run in (runs if step % 2 else runs[::-1]):
                run(step) if run is not plain or durability == "background" \
                    else plain(step, "plain_")
    plain_totals = [s + lo for s, lo in zip(times["save"], times["load"])]
    ratios = [(s + lo) / p for s, lo, p in zip(times["ours_save"], times["ours_load"],
                                               plain_totals)]
    synced_ratios = [(s + lo) / (ps + pl) for s, lo, ps, pl in zip(
        times["sync_save"], times["sync_load"], times["plain_save"], times["plain_load"])]
    m = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    size = next(plain_folder.glob("*.pt")).stat().st_size / 1e6
    print(f"checkpoint ({size:.1f} MB state, median ms of {repeats}): torch.save {m['save']:.1f}"
          f" + torch.load {m['load']:.1f}; CheckpointManager save {m['ours_save']:.1f} + load "
          f"{m['ours_load']:.1f} (+ {m['sync_wait']:.1f} background fsync off the loop)")
    print(f"  ratio save+load (median of per-repeat ratios): {statistics.median(ratios):.3f} "
          f"[{_quartiles(ratios)}]   [target <= 1.2]; with durability='sync' (fsync in the "
          f"loop) {statistics.median(synced_ratios):.3f}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _quartiles(values: list[float]) -> str:
    """'q1-q3, min-max' of ``values`` (the spread of the per-repeat ratios)."""
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"quartiles {q1:.3f}-{q3:.3f}, range {min(values):.3f}-{max(values):.3f}"


def _timed(function: Any) -> float:
    start = CLOCK()
    function()
    return CLOCK() - start


def bench_every_n(folder: Path, batches: list[Any], width: int, repeats: int) -> None:
    base = make_trainer(folder, "base", batches, width)
    every = make_trainer(folder, "every50", batches, width, checkpoint_every_n_batches=50)
    trainer_epoch(base)
    trainer_epoch(every)
    base_times, every_times = [], []
    for _ in range(repeats):
        base_times.append(trainer_epoch(base))
        every_times.append(trainer_epoch(every))
    b, e = statistics.median(base_times), statistics.median(every_times)
    print(f"epoch of {len(batches)} batches: {b * 1e3:.0f} ms; with checkpoint_every_n_batches=50 "
          f"{e * 1e3:.0f} ms ({len(batches) // 50} extra checkpoints): slowdown {e / b:.3f}x")


#: glibc thresholds of ``--malloc fixed``: blocks below 32 MiB come from the heap and at most
#: 64 MiB of free heap top is kept. glibc's default is dynamic: the mmap threshold rises to the
#: size of the largest mmapped block freed so far, and the heap top is returned to the system
#: above twice that. Which blocks a process happened to free before (a checkpoint's read
#: buffer, a batch) then decides whether a step's activations and gradients are page-faulted
#: in again at every step: a 5-20% swing of the trainer's step time here, either way, that
#: says nothing about the trainer's own work. Pinned, both loops run under the same allocator.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def _pin_malloc_thresholds() -> bool:
    """Re-execute this script with :data:`MALLOC_ENV` set (glibc reads it at start-up only)."""
    if all(os.environ.get(key) == value for key, value in MALLOC_ENV.items()):
        return False
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Few batches (a smoke run).")
    parser.add_argument("--batches", type=int, default=200, help="Batches per epoch.")
    parser.add_argument("--repeats", type=int, default=15, help="Alternated epochs measured.")
    parser.add_argument("--width", type=int, default=384, help="MLP hidden width.")
    parser.add_argument("--step-ms", type=float, default=2.5,
                        help="Pick the batch size whose hand-written step takes about this many "
                             "ms here (2.5: the step of the peers' figures in anchors.md).")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="A fixed batch size instead of --step-ms.")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: perf_counter; cpu: process CPU time (all threads).")
    parser.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                        help="fixed: glibc's mmap/trim thresholds pinned for the whole process "
                             "(both loops); default: glibc's dynamic thresholds.")
    args = parser.parse_args(argv)
    if argv is not None:  # called in-process: never replace the caller's process
        args.malloc = "default"
    if args.malloc == "fixed" and _pin_malloc_thresholds():
        return 0  # unreachable: the process was replaced
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    logging.basicConfig(level=logging.WARNING)
    # the benchmark's in-memory source and bare nn.Sequential cannot be rebuilt from
    # parameters.json; the experiment module warns about it at each trainer built here
    logging.getLogger("dwi_mtl.training.experiment").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    nb_batches, repeats = (50, 2) if args.quick else (args.batches, args.repeats)
    batch_size = args.batch_size or calibrate_batch_size(args.width, args.step_ms)
    batches = make_batches(nb_batches, batch_size)
    print(f"clock: {args.clock}; malloc: {args.malloc}; torch {torch.__version__}, 1 thread, "
          f"MLP 128-{args.width}-{args.width}-10, batches of {batch_size}, {nb_batches} batches "
          f"per epoch, {repeats} alternated repeats")
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as tmp:
        folder = Path(tmp)
        bench_steps_interleaved(folder, batches, args.width, max(2, repeats // 2))
        bench_steps(folder, batches, args.width, repeats)
        bench_checkpoint(folder, batches, args.width, repeats)
        bench_every_n(folder, batches, args.width, repeats)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
