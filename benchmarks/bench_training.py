"""Training throughput of the reference tractography models, with the loader's share, in one run.

Streamlines per second through a full training step (BatchSampler batch -> BatchLoader
``load_batch``: read + trilinear interpolation of the 28 features at every point -> model
forward -> direction loss -> backward -> Adam step) for the recurrent
(:class:`~dwi_mtl.models.RecurrentDirectionModel`, GRU 64 units, 2 previous directions) and
Transformer (:class:`~dwi_mtl.models.TransformerDirectionModel`, d_model 64, 4 heads, 2
layers) models on the standard workload (``write_synthetic_hdf5`` defaults: 3 subjects, 64 x
64 x 48 x 28 volumes, 5,000 streamlines of ~100 points each; batches of 100 streamlines). The
two models alternate batch by batch on the same batches, so both see the same machine load;
each step is split into loader time and model time, and the loader's share of the step is
printed with the throughput and the Transformer/recurrent ratio.

When CUDA is available the same is measured with the models on the GPU and the interpolation
deferred to the device (``interpolate_on="device"``); otherwise that part prints that it was
not measured.

Usage: python benchmarks/bench_training.py [--quick] [--batches N] [--batch_size N]
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

from dwi_mtl.data import MultiSubjectDataset
from dwi_mtl.data.synthetic import write_synthetic_hdf5
from dwi_mtl.models import RecurrentDirectionModel, TransformerDirectionModel
from dwi_mtl.training import BatchLoader, BatchSampler


def build_models(nb_features: int, device: str) -> dict[str, Any]:
    """The two reference models and their optimizers."""
    torch.manual_seed(0)
    models = {
        "recurrent": RecurrentDirectionModel(nb_features, hidden_size=64, nb_previous_dirs=2),
        "transformer": TransformerDirectionModel(nb_features, d_model=64, nb_heads=4,
                                                 nb_layers=2, dim_feedforward=128,
                                                 nb_previous_dirs=2),
    }
    return {name: (model.to(device).train(), torch.optim.Adam(model.parameters(), lr=1e-3))
            for name, model in models.items()}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(dataset: Any, batches: list[Any], device: str, interpolate_on: str,
            warmup: int) -> dict[str, dict[str, float]]:
    """Per model: loader seconds, model seconds and streamlines over the measured batches."""
    loader = BatchLoader(dataset, "streamlines", input_group="input",
                         interpolate_on=interpolate_on, seed=1)
    models = build_models(loader.nb_input_features, device)
    totals = {name: {"loader": 0.0, "model": 0.0, "streamlines": 0.0} for name in models}
    for index, items in enumerate(batches):
        for name, (model, optimizer) in models.items():
            start = time.perf_counter()
            batch = loader.to_device(loader.load_batch(items), device)
            synchronize(device)
            loaded = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = model.compute_loss(batch)
            loss.backward()
            optimizer.step()
            synchronize(device)
            done = time.perf_counter()
            if index >= warmup:
                totals[name]["loader"] += loaded - start
                totals[name]["model"] += done - loaded
                totals[name]["streamlines"] += batch.nb_streamlines
    return totals


def report(label: str, totals: dict[str, dict[str, float]]) -> None:
    rates = {}
    for name, t in totals.items():
        step = t["loader"] + t["model"]
        rates[name] = t["streamlines"] / step
        sys.stdout.write(f"{label} {name:12s}: {rates[name]:8.0f} streamlines/s through a full "
                         f"training step; loader share {100 * t['loader'] / step:5.1f}% "
                         f"(loader {t['streamlines'] / t['loader']:8.0f} streamlines/s alone)\n")
    sys.stdout.write(f"{label} transformer / recurrent throughput ratio: "
                     f"{rates['transformer'] / rates['recurrent']:.2f}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small workload (seconds).")
    parser.add_argument("--batches", type=int, default=None, help="Measured batches per model.")
    parser.add_argument("--batch_size", type=int, default=100, help="Streamlines per batch.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    nb_batches = args.batches or (4 if args.quick else 20)
    warmup = 3
    with tempfile.TemporaryDirectory() as tmp:
        workload = {"nb_streamlines": 500, "volume_shape": (32, 32, 24)} if args.quick else {}
        path = write_synthetic_hdf5(Path(tmp) / "workload.hdf5", **workload)
        dataset = MultiSubjectDataset(path)
        sampler = BatchSampler(dataset, "streamlines", args.batch_size, seed=1)
        sampler.set_context("training")
        sampler.set_epoch(0)
        batches = [items for _, items in zip(range(nb_batches + warmup), sampler, strict=False)]
        points = statistics.mean(int(dataset.training.streamline_lengths(0, "streamlines").mean())
                                 for _ in range(1))
        sys.stdout.write(f"workload: {dataset.training.nb_subjects} training subjects, "
                         f"{len(batches) - warmup} measured batches of {args.batch_size} "
                         f"streamlines (~{points} points each), {dataset.nb_features['input']} "
                         f"features, {torch.get_num_threads()} torch threads\n")
        report("CPU", measure(dataset, batches, "cpu", "workers", warmup))
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            report(f"GPU ({name}, interpolation on the device)",
                   measure(dataset, batches, "cuda", "device", warmup))
        else:
            sys.stdout.write("GPU: not measured (no CUDA device on this machine)\n")
        dataset.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
