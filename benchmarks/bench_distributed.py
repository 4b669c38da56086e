"""Cost of the distributed collectives of a training step, against the step itself, in one run.

Two CPU ranks (gloo, ``torch.multiprocessing.spawn``, one torch thread each) alternate, in
one run, a plain training step of an MLP with two task heads (forward, two losses, backward,
SGD step; batch of 256 per rank, ~0.2 M parameters) and the same step plus what
``GradientStepper`` / ``TrainingEngine`` add under torch.distributed:

1. EW (loss-based): the loss-value average (``T`` floats), the one gradient ``all_reduce`` of
   all parameters, the batch-metric reduction (``reduce_batch``, 12 metrics + 2 flags).
2. PCGrad-like (gradient method): the ``T x n`` per-task matrix of the shared parameters with
   the losses in one ``all_reduce``, the task heads' gradients, the metric reduction.

Reported: medians and minima of the step time with and without the collectives, and their
ratio (target on one node: small, the collectives move ~1 MB per step). On a shared 2-core
machine the ranks also compete for the cores, so the figures are an upper bound.

Usage: python benchmarks/bench_distributed.py [--steps N] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dwi_mtl.training.distributed import DistributedContext

METRICS = {name: 1.0 for name in (
    "loss", "loss_a", "loss_b", "weight_a", "weight_b", "grad_norm_before_clip",
    "grad_norm_after_clip", "lr", "nb_points", "nb_streamlines", "batch_time", "data_wait_time")}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                    nn.Linear(256, 256), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(256, 3), nn.Linear(256, 1)])


def _step(net: Net, opt: torch.optim.Optimizer, x: torch.Tensor, ctx: DistributedContext | None,
          mode: str) -> None:
    hidden = net.shared(x)
    losses = [net.heads[0](hidden).pow(2).mean(), (net.heads[1](hidden) - 1).pow(2).mean()]
    shared = list(net.shared.parameters())
    if mode == "gradient":
        rows = []
        for i, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, shared, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
            loss.backward(inputs=list(net.heads[i].parameters()), retain_graph=i == 0)
        matrix = torch.stack(rows)
        if ctx is not None:
            flat = torch.cat([matrix.reshape(-1), torch.stack(losses).detach()])
            ctx.average_(flat)
            matrix = flat[: matrix.numel()].view_as(matrix)
        combined, offset = matrix.sum(0), 0
        for p in shared:
            p.grad = combined[offset: offset + p.numel()].view_as(p)
            offset += p.numel()
        params = list(net.heads.parameters())
    else:
        if ctx is not None:
            ctx.average_(torch.stack([v.detach() for v in losses]))
        (losses[0] + losses[1]).backward()
        params = list(net.parameters())
    if ctx is not None:
        ctx.average_gradients_(params)
        ctx.reduce_batch(dict(METRICS), "nb_points", [0.0, 0.0])
    opt.step()
    opt.zero_grad(set_to_none=True)


def _worker(rank: int, port: int, steps: int, repeats: int, out: mp.SimpleQueue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ctx = DistributedContext.current()
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(256, 64)
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for mode in ("loss", "gradient"):
            for label, context in (("plain", None), ("distributed", ctx)):
                dist.barrier()
                start = time.perf_counter()
                for _ in range(steps):
                    _step(net, opt, x, context, mode)
                times.setdefault(f"{mode}/{label}", []).append(
                    (time.perf_counter() - start) / steps)
    if rank == 0:
        out.put(times)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(port, args.steps, args.repeats, queue), nprocs=2, join=True)
    times = queue.get()
    n_params = sum(p.numel() for p in Net().parameters())
    sys.stdout.write(f"2 gloo ranks, {n_params} parameters, batch 256 per rank, "
                     f"{args.steps} steps x {args.repeats} repeats (ms per step)\n")
    for mode, name in (("loss", "EW (loss-based)"), ("gradient", "gradient method (T=2)")):
        plain, distributed = times[f"{mode}/plain"], times[f"{mode}/distributed"]
        med_p, med_d = statistics.median(plain) * 1e3, statistics.median(distributed) * 1e3
        min_p, min_d = min(plain) * 1e3, min(distributed) * 1e3
        sys.stdout.write(
            f"{name:24s} plain median {med_p:7.2f} min {min_p:7.2f} | with collectives "
            f"median {med_d:7.2f} min {min_d:7.2f} | ratio median {med_d / med_p:.3f} "
            f"min {min_d / min_p:.3f}\n")


if __name__ == "__main__":
    main()
