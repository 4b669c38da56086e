"""Overhead of the MTLTrainer against a hand-written multi-task loop, in one run.

Figures, each measured side by side in this process (alternating, medians and minima):

1. Training step time. Two tasks (classification heads on a shared MLP encoder, batches of
   a few ms on CPU) interleaved round robin, shared gradients accumulated over a round of
   both tasks, one Adam step per round. Hand-written loop: seeded permutations, forward,
   loss, backward, step every second batch, ``loss.item()``. MTLTrainer: the same, plus its
   task sampler, per-task logs (.npy), non-finite checks, gradient norm, checkpoint state.
   Timed from the epoch's first to its last training batch. Target <= 1.05.
2. The end of an epoch: per-task validation, logs and the atomic checkpoint, against the
   training phase.
3. One downstream evaluation (copy of the encoder + fresh head, one epoch of fine-tuning,
   validation, checkpoint) against one pre-training epoch.

Usage: python benchmarks/bench_mtl_trainer.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dwi_mtl.mtl import MTLTask, MTLTrainer
from dwi_mtl.state import derive_generator

WIDTH, FEATURES, BATCH = 1024, 128, 64


def make_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH),
                         nn.ReLU())


def make_data(seed: int, nb_batches: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    count = nb_batches * BATCH
    return TensorDataset(torch.randn(count, FEATURES, generator=generator),
                         torch.randint(0, 10, (count,), generator=generator))


def cross_entropy(out: torch.Tensor, batch: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(out, batch[1])


def make_task(name: str, seed: int, nb_batches: int) -> MTLTask:
    torch.manual_seed(seed)
    data = make_data(seed, nb_batches)
    valid = make_data(seed + 100, max(1, nb_batches // 4))
    return MTLTask(name, nn.Linear(WIDTH, 10), cross_entropy, data, valid, batch_size=BATCH)


class TimedTrainer(MTLTrainer):
    """Records the training-phase and epoch-end times of every epoch."""

    def setup(self) -> None:
        self.train_times: list[float] = []
        self.end_times: list[float] = []
        self._t0 = self._t1 = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self._t0 = time.perf_counter()

    def on_validation_start(self, epoch: int) -> None:
        self._t1 = time.perf_counter()
        self.train_times.append(self._t1 - self._t0)

    def finish_epoch_timing(self) -> None:
        self.end_times.append(time.perf_counter() - self._t1)


def hand_epoch(encoder: nn.Module, heads: dict[str, nn.Module], data: dict[str, TensorDataset],
               optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """One round-robin epoch written by hand; returns its wall time."""
    orders = {name: derive_generator(0, name, epoch).permutation(len(d)) for name, d in
              data.items()}
    nb_batches = min(len(d) for d in data.values()) // BATCH
    start = time.perf_counter()
    losses = []
    for index in range(nb_batches):
        for name, dataset in data.items():
            ids = orders[name][index * BATCH:(index + 1) * BATCH]
            x, y = dataset[ids]
            loss = nn.functional.cross_entropy(heads[name](encoder(x)), y)
            loss.backward()
            losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench(folder: Path, nb_batches: int, repeats: int) -> None:
    tasks = [make_task("a", 1, nb_batches), make_task("b", 2, nb_batches)]
    trainer = TimedTrainer({"encoder": make_encoder()}, tasks, folder, "bench", max_epochs=0,
                           learning_rates=1e-3, progress_bar=False, handle_signals=False,
                           downstream_tasks=[make_task("c", 3, nb_batches)],
                           downstream_every_n_epochs=10**6)
    trainer.setup()
    encoder = make_encoder()
    heads = {"a": nn.Linear(WIDTH, 10), "b": nn.Linear(WIDTH, 10)}
    params = list(encoder.parameters()) + [p for h in heads.values() for p in h.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    data = {"a": make_data(1, nb_batches), "b": make_data(2, nb_batches)}
    hand_times = []
    for epoch in range(repeats + 1):
        hand_times.append(hand_epoch(encoder, heads, data, optimizer, epoch))
        trainer.max_epochs = epoch + 1
        trainer.train_and_validate()
        trainer.finish_epoch_timing()
    steps = 2 * nb_batches
    hand, ours, ends = hand_times[1:], trainer.train_times[1:], trainer.end_times[1:]
    for label, pick in (("median", statistics.median), ("min", min)):
        h, o = pick(hand) / steps * 1e3, pick(ours) / steps * 1e3
        print(f"training step ({label} of {len(ours)} alternated epochs, {steps} task batches "
              f"of 2 tasks): hand-written {h:.3f} ms, MTLTrainer {o:.3f} ms; ratio "
              f"{o / h:.3f} [target <= 1.05]")
    end, train = statistics.median(ends), statistics.median(ours)
    print(f"epoch end (per-task validation of {nb_batches // 2} batches, logs, checkpoint): "
          f"{end * 1e3:.1f} ms = {end / train:.3f} x the training phase")
    downstream = []
    for epoch in range(repeats):
        start = time.perf_counter()
        trainer.downstream.evaluate(trainer.downstream.tasks[0], trainer.shared_blocks, epoch)
        trainer.save_checkpoint()
        downstream.append(time.perf_counter() - start)
    d = statistics.median(downstream)
    print(f"downstream evaluation (copy, fresh head, {nb_batches}-batch fine-tuning epoch, "
          f"validation, checkpoint): {d * 1e3:.1f} ms = {d / train:.3f} x a pre-training "
          f"epoch of {steps} steps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        bench(Path(folder), 8 if args.quick else 40, 2 if args.quick else 7)
    return 0


if __name__ == "__main__":
    sys.exit(main())
