"""Time per training step of every weighting, as a ratio to EW and to the gradient floor.

For T=2 and T=8 tasks on a shared MLP encoder of ~0.6 M parameters (plus one small head per
task), one run measures side by side, interleaved round by round (the order shuffled each
round). The machine is shared, so each ratio is taken within a round (a configuration against
EW or the floor measured moments apart) and the table prints the median of these per-round
ratios; the best round's time is printed too. ``--clock cpu`` (default) times the step's own
CPU time (``time.thread_time``: with one intra-op thread this is the step's work, not the time
it spent descheduled by other processes), ``--clock wall`` the wall-clock time.

- ``EW``: forward, one backward of the summed losses, SGD step;
- the floor of a gradient method: the work no gradient-combination method can avoid, i.e.
  forward, ``T`` backward passes of the shared part (``torch.autograd.grad`` with
  ``retain_graph``: each task's full gradient at the shared parameters, nothing kept but the
  result), SGD step (on the last task's gradient, so it updates as many parameters as a
  method's step); no gathering, Gramian or combination. And the one-pass vmap variant;
- two references above the floor that isolate the memory passes: ``floor_store`` stores each
  task's gradient into a ``(T, n)`` matrix (what every method needing all ``T`` gradients at
  once must do), ``floor_gram`` also takes the Gramian and the combination ``w @ J`` (what a
  Gramian method must do, without its solver);
- ``rep_floor``, the same bound for ``rep_grad`` (as a ratio to EW): forward, one backward
  through the heads storing each task's gradient at the representation into a ``(T, r)``
  matrix (:func:`~dwi_mtl.mtl.weighting.rep_passes.head_pass`), the Gramian and its copy to
  the host, ``w @ J`` (equal weights, no solver), one backward through the encoder, SGD step;
- every method in parameter mode, every gradient method with ``rep_grad=True``, and a few
  gradient methods with ``grad_mode="vmap"``.

Targets (issue 7): loss-based methods <= 1.05x EW; gradient methods <= 1.1x the floor;
rep_grad variants <= 1.15x EW.

Usage: ``python benchmarks/bench_weighting.py [--quick] [--tasks 2 8] [--threads 1]
[--clock cpu|wall] [--methods mgda pcgrad ...] [--modes param rep vmap] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dwi_mtl.mtl.weighting import WEIGHTINGS, get_weighting, rep_passes
from dwi_mtl.mtl.weighting import gradients as grad_ops

LOSS_BASED = ("ew", "uw", "dwa", "gls", "rlw", "famo", "stch")
VMAP_SAMPLE = ("mgda", "upgrad", "pcgrad")
WINDOWED = {"dwa": {"window": 5}, "gradnorm": {"window": 5}, "stch": {"window": 5}}


class Model(nn.Module):
    """Shared encoder 256-512-512-512 (~0.66 M parameters) and T linear heads."""

    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(),
        )
        self.heads = nn.ModuleList([nn.Linear(512, 4) for _ in range(tasks)])

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        rep = self.encoder(x)
        return [((h(rep) - y[:, i]) ** 2).mean() for i, h in enumerate(self.heads)], rep


def make_step(name: str, mode: str, tasks: int, batch: int) -> Callable[[], None]:
    """Build one configuration's training step (model, optimizer, data all fixed)."""
    torch.manual_seed(0)
    model = Model(tasks)
    names = [f"task{i}" for i in range(tasks)]
    x, y = torch.randn(batch, 256), torch.randn(batch, tasks, 4)
    shared = list(model.encoder.parameters())
    if name in ("floor_store", "floor_gram"):
        return _stored_floor_step(model, x, y, shared, with_gramian=name == "floor_gram")
    if name == "rep_floor":
        return _rep_floor_step(model, x, y, shared)
    if name.startswith("floor"):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        batched = name == "floor_vmap"
        eye = torch.eye(tasks)

        def floor_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            losses, _ = model.losses(x, y)
            if batched:
                grads = torch.autograd.grad(torch.stack(losses), shared, grad_outputs=eye,
                                            is_grads_batched=True)
                grads = tuple(g[0] for g in grads)
            else:
                for t, loss in enumerate(losses):
                    grads = torch.autograd.grad(loss, shared, retain_graph=t < tasks - 1)
            for p, g in zip(shared, grads):  # so the SGD step updates as much as the others'
                p.grad = g
            optimizer.step()

        return floor_step
    kwargs: dict[str, object] = dict(WINDOWED.get(name, {}))
    if mode == "rep":
        kwargs["rep_grad"] = True
    elif mode == "vmap":
        kwargs["grad_mode"] = "vmap"
    method = get_weighting(name, names, **kwargs)
    optimizer = torch.optim.SGD(list(model.parameters()) + method.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses, rep = model.losses(x, y)
        loss_dict = dict(zip(names, losses))
        method.backward(loss_dict, shared, representation=rep if mode == "rep" else None)
        optimizer.step()
        method.on_step_end({k: v.detach() for k, v in loss_dict.items()})

    return step


def _stored_floor_step(
    model: Model, x: torch.Tensor, y: torch.Tensor, shared: Sequence[torch.Tensor],
    with_gramian: bool,
) -> Callable[[], None]:
    """The floor plus the memory passes no method that keeps all ``T`` gradients can avoid.

    ``floor_store``: the ``T`` passes with each task's gradient stored into a ``(T, n)`` matrix
    (as the weightings do it), SGD step on the last row. ``floor_gram``: also the Gramian, its
    copy to the host and the combination ``w @ J`` into ``.grad`` (equal weights, no solver):
    the least a Gramian method can cost. Their ratios to the floor are the pure cost of
    storing and reading the gradient matrix on this machine.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    matrix = grad_ops.new_matrix(len(model.heads), shared)
    weights = torch.full((len(model.heads),), 1.0 / len(model.heads))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses, _ = model.losses(x, y)
        grad_ops.loop_gradients(losses, shared, out=matrix)
        if with_gramian:
            grad_ops.gramian(matrix).double().cpu().numpy()
            grad_ops.write_shared_gradient(shared, weights @ matrix)
        else:
            grad_ops.write_shared_gradient(shared, matrix[-1])
        optimizer.step()

    return step


def _rep_floor_step(
    model: Model, x: torch.Tensor, y: torch.Tensor, shared: Sequence[torch.Tensor]
) -> Callable[[], None]:
    """The least a Gramian method with ``rep_grad`` can cost: its passes and memory traffic.

    Forward; one backward through the heads that stores each task's gradient at the
    representation into a ``(T, r)`` matrix, as the weightings do it; the Gramian and its copy
    to the host; ``w @ J`` with equal weights (no solver); the encoder's backward; SGD step.
    Against EW it adds exactly the storing, the Gramian and the combination (EW instead sums
    the ``T`` gradients at the representation, which this path skips).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    tasks = len(model.heads)
    weights = torch.full((tasks,), 1.0 / tasks)
    storage: list[torch.Tensor] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses, rep = model.losses(x, y)
        if not storage:
            storage.append(grad_ops.new_matrix(tasks, [rep]))
        matrix = storage[0]
        reached = rep_passes.head_pass(losses, [rep], shared, matrix)
        if reached is None:
            raise RuntimeError("the benchmark model must allow the single head pass")
        grad_ops.gramian(matrix).double().cpu().numpy()
        rep_passes.encoder_pass(reached, [rep], weights @ matrix)
        optimizer.step()

    return step


MODES = ("param", "rep", "vmap")


def configurations(
    methods: list[str] | None = None, modes: Sequence[str] = MODES
) -> list[tuple[str, str]]:
    """(name, mode) pairs measured for each number of tasks (``methods``, ``modes``: subsets;
    EW and the references are always measured)."""
    names = [n for n in WEIGHTINGS if n != "ew" and (methods is None or n in methods)]
    configs = [("ew", "param"), ("floor", "param"), ("floor_vmap", "param"),
               ("floor_store", "param"), ("floor_gram", "param"), ("rep_floor", "rep")]
    if "param" in modes:
        configs += [(n, "param") for n in names]
    if "rep" in modes:
        configs += [(n, "rep") for n in names if n not in LOSS_BASED]
    if "vmap" in modes:
        configs += [(n, "vmap") for n in VMAP_SAMPLE if n in names]
    return configs


Samples = dict[tuple[str, str], list[float]]


def measure(
    tasks: int, rounds: int, steps: int, batch: int, clock: Callable[[], float],
    methods: list[str] | None = None, modes: Sequence[str] = MODES,
) -> Samples:
    """Seconds per step of every configuration, one sample per round, interleaved."""
    steps_by_config = {
        c: make_step(c[0], c[1], tasks, batch) for c in configurations(methods, modes)
    }
    for step in steps_by_config.values():  # warm-up (also past the windowed warm-ups)
        for _ in range(12):
            step()
    samples: Samples = {c: [] for c in steps_by_config}
    order = list(steps_by_config.items())
    shuffler = random.Random(tasks)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for config, step in order:
            start = clock()
            for _ in range(steps):
                step()
            samples[config].append((clock() - start) / steps)
    return samples


def median_ratio(samples: Samples, config: tuple[str, str], reference: tuple[str, str]) -> float:
    """Median over rounds of ``config``'s time over ``reference``'s time in the same round."""
    return statistics.median(a / b for a, b in zip(samples[config], samples[reference]))


def report(tasks: int, samples: Samples) -> None:
    """Print the table of median per-round ratios and the targets' verdicts."""
    ew_key, floor_key = ("ew", "param"), ("floor", "param")
    best = {c: min(v) for c, v in samples.items()}
    out = sys.stdout
    out.write(f"\n## T={tasks}: EW {best[ew_key] * 1e3:.2f} ms/step, floor "
              f"{best[floor_key] * 1e3:.2f} ms/step ({median_ratio(samples, floor_key, ew_key):.2f}"
              f"x EW), floor_vmap {median_ratio(samples, ('floor_vmap', 'param'), ew_key):.2f}x EW"
              " (ratios: medians of per-round ratios; ms: best round)\n")
    store = median_ratio(samples, ("floor_store", "param"), floor_key)
    gram = median_ratio(samples, ("floor_gram", "param"), floor_key)
    out.write(f"floor + storing J: {store:.3f}x floor; + Gramian and w @ J: {gram:.3f}x floor "
              "(the least a method keeping all T gradients / a Gramian method can cost)\n")
    rep_floor = median_ratio(samples, ("rep_floor", "rep"), ew_key)
    out.write(f"rep_floor (head pass storing J at the representation, Gramian, w @ J, encoder "
              f"pass): {rep_floor:.3f}x EW (the least a Gramian rep_grad method can cost)\n")
    out.write(f"{'method':<14}{'mode':<7}{'ms/step':>9}{'x EW':>7}{'x floor':>9}  target\n")
    for (name, mode) in samples:
        if name.startswith("floor") or name == "rep_floor" or (name, mode) == ew_key:
            continue
        ratio_ew = median_ratio(samples, (name, mode), ew_key)
        ratio_floor = median_ratio(samples, (name, mode), floor_key)
        if mode == "rep":
            verdict = "ok" if ratio_ew <= 1.15 else "MISS"
            target = "<=1.15x EW"
        elif name in LOSS_BASED:
            verdict = "ok" if ratio_ew <= 1.05 else "MISS"
            target = "<=1.05x EW"
        else:
            verdict = "ok" if ratio_floor <= 1.1 else "MISS"
            target = "<=1.1x floor"
        out.write(f"{name:<14}{mode:<7}{best[(name, mode)] * 1e3:>9.2f}{ratio_ew:>7.2f}"
                  f"{ratio_floor:>9.2f}  {target} {verdict}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: the step's own CPU time (one thread); wall: wall-clock")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="measure only these methods (EW and the floors always)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="measure only the methods in these modes (EW and the references "
                             "always)")
    parser.add_argument("--rounds", type=int, default=None, help="override the rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's time: use --threads 1 or --clock wall")
    if args.methods is not None:
        unknown = sorted(set(args.methods) - set(WEIGHTINGS))
        if unknown:
            parser.error(f"unknown methods {unknown}; known: {sorted(WEIGHTINGS)}")
    rounds, steps = (5, 2) if args.quick else (15, 3)
    rounds = args.rounds or rounds
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    sys.stdout.write(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
                     f"{rounds} rounds x {steps} steps, {args.clock} clock\n")
    for tasks in args.tasks:
        report(tasks, measure(tasks, rounds, steps, args.batch, clock, args.methods, args.modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
