"""MultiMNIST-style benchmark from scikit-learn's bundled digits: every weighting, same budget.

Two 8x8 digits are overlaid on a 12x12 canvas (one shifted to the top-left, the other to the
bottom-right, pixel-wise maximum); task ``left`` classifies the first, task ``right`` the
second. Digits of the test pairs are never seen in training. Each method trains the same
shared MLP encoder + two linear heads with Adam, the same number of steps, on the same data,
for each seed (model initialisation, batch order and the method's own randomness). The table
gives the test accuracy per task (mean +- std over seeds) and Δp, the mean relative
improvement over EW (percent); results are saved as CSV (one row per method and seed) and PNG.

Usage: ``python benchmarks/multidigits.py --out DIR [--quick] [--seeds 0 1 2] [--rep_grad]``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dwi_mtl.cli.common import run_cli
from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import WEIGHTINGS, get_weighting

TASKS = ["left", "right"]
LOSS_BASED = ("ew", "uw", "dwa", "gls", "rlw", "famo", "stch")
LOGGER = logging.getLogger("multidigits")


def make_pairs(images: np.ndarray, labels: np.ndarray, count: int, seed: int):
    """Overlay ``count`` random pairs of digits on 12x12 canvases."""
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(images), count), rng.integers(0, len(images), count)
    canvas = np.zeros((count, 12, 12), dtype=np.float32)
    canvas[:, :8, :8] = images[first]
    canvas[:, 4:, 4:] = np.maximum(canvas[:, 4:, 4:], images[second])
    x = torch.from_numpy(canvas.reshape(count, 144) / 16.0)
    y = torch.from_numpy(np.stack([labels[first], labels[second]], axis=1)).long()
    return x, y


def load_data(train_pairs: int, test_pairs: int):
    """Train/test pairs built from disjoint digit images (fixed data seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.3, random_state=0, stratify=digits.target
    )
    train = make_pairs(images[train_idx], digits.target[train_idx], train_pairs, seed=1)
    test = make_pairs(images[test_idx], digits.target[test_idx], test_pairs, seed=2)
    return train, test


class Net(nn.Module):
    """Shared MLP encoder (144-256-128) and one 10-way linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(144, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Linear(128, 10) for t in TASKS})

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rep = self.encoder(x)
        return {t: self.heads[t](rep) for t in TASKS}, rep


def method_kwargs(name: str, rep_grad: bool, seed: int, window: int) -> dict:
    kwargs: dict = {"seed": seed}
    if name in ("dwa", "gradnorm", "stch"):
        kwargs["window"] = window
    if rep_grad and name not in LOSS_BASED:
        kwargs["rep_grad"] = True
    return kwargs


def train_one(name: str, seed: int, data, epochs: int, rep_grad: bool) -> dict[str, float]:
    """Train one method with one seed; return test accuracies and seconds."""
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(seed)
    model = Net()
    steps_per_epoch = len(x_train) // 64
    method = get_weighting(name, TASKS, **method_kwargs(name, rep_grad, seed, steps_per_epoch // 4))
    optimizer = torch.optim.Adam(list(model.parameters()) + method.parameters(), lr=1e-3)
    shared = list(model.encoder.parameters())
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for index in range(steps_per_epoch):
            batch = order[index * 64 : (index + 1) * 64]
            logits, rep = model(x_train[batch])
            losses = {t: loss_fn(logits[t], y_train[batch, i]) for i, t in enumerate(TASKS)}
            optimizer.zero_grad(set_to_none=True)
            method.backward(losses, shared, representation=rep)
            optimizer.step()
            method.on_step_end({k: v.detach() for k, v in losses.items()})
        method.on_epoch_end(epoch)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits, _ = model(x_test)
    result = {t: float((logits[t].argmax(1) == y_test[:, i]).float().mean()) for i, t in
              enumerate(TASKS)}
    return {**result, "seconds": seconds}


def delta_p(accuracies: dict[str, float], baseline: dict[str, float]) -> float:
    """Mean relative improvement over the baseline, in percent (accuracies: higher is better)."""
    return 100.0 * statistics.mean((accuracies[t] - baseline[t]) / baseline[t] for t in TASKS)


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per method: mean/std of each task's accuracy over seeds, and Δp vs EW."""
    summary: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        entry = {}
        for t in TASKS:
            values = [r[t] for r in mine]
            entry[t] = statistics.mean(values)
            entry[f"{t}_std"] = statistics.pstdev(values)
        entry["seconds"] = statistics.mean(r["seconds"] for r in mine)
        summary[name] = entry
    baseline = summary["ew"]
    for entry in summary.values():
        entry["delta_p"] = delta_p(entry, baseline)
    return summary


def write_outputs(out: Path, rows: list[dict], summary: dict[str, dict[str, float]]) -> None:
    """Write the per-seed CSV and the Δp bar chart (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "multidigits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "seed", *TASKS, "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    names = list(summary)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(names, [summary[n]["delta_p"] for n in names], color="tab:blue")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("Δp vs EW (%)")
    ax.set_title("Multi-digits (sklearn digits, 2 tasks): mean relative accuracy gain over EW")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(out / "multidigits.png", dpi=120)
    plt.close(fig)


def print_table(summary: dict[str, dict[str, float]], seeds: Sequence[int]) -> None:
    out = sys.stdout
    out.write(f"\nMulti-digits, {len(seeds)} seed(s) {list(seeds)}: test accuracy (mean +- std)\n")
    out.write(f"{'method':<13}{'left':>16}{'right':>16}{'Δp %':>8}{'s/run':>8}\n")
    for name, entry in summary.items():
        cells = "".join(f"{entry[t]:>10.4f}+-{entry[t + '_std']:.3f}" for t in TASKS)
        out.write(f"{name:<13}{cells}{entry['delta_p']:>8.2f}{entry['seconds']:>8.2f}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for CSV and PNG")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, fewer pairs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(WEIGHTINGS))
    parser.add_argument("--rep_grad", action="store_true", help="gradient methods at the rep")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = [m for m in args.methods if m not in WEIGHTINGS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {sorted(WEIGHTINGS)}")
    methods = ["ew"] + [m for m in args.methods if m != "ew"]
    seeds, epochs = ([args.seeds[0]], 1) if args.quick else (args.seeds, args.epochs)
    torch.set_num_threads(args.threads)
    data = load_data(*((2000, 1000) if args.quick else (6000, 2000)))
    rows = []
    for name in methods:
        for seed in seeds:
            result = train_one(name, seed, data, epochs, args.rep_grad)
            rows.append({"method": name, "seed": seed, **result})
            LOGGER.info("%s seed %d: %s", name, seed, result)
    summary = summarize(rows)
    print_table(summary, seeds)
    write_outputs(args.out, rows, summary)
    sys.stdout.write(f"saved {args.out / 'multidigits.csv'} and {args.out / 'multidigits.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
