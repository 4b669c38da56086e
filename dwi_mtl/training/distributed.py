"""torch.distributed plumbing of the engine: process group, gradient and metric reductions.

Design (see ``docs/distributed.md``):

- The launcher (``torchrun``, or SLURM's ``srun``) starts one process per device; the scripts
  call :func:`init_from_environment`, which reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
  (torchrun) or ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (srun, with
  ``MASTER_ADDR`` / ``MASTER_PORT``) and initialises the default process group (NCCL on CUDA,
  gloo on CPU). The engine runs distributed whenever that group exists with more than one
  rank (:meth:`DistributedContext.current`).
- The model is *not* wrapped in ``DistributedDataParallel``: its gradient hooks would
  all-reduce the shared parameters during every per-task backward of a gradient-combination
  weighting (or, under ``no_sync``, not at all). Instead the gradients are averaged explicitly,
  with the same bucketed ``all_reduce`` DDP issues, once per optimizer step
  (:meth:`DistributedContext.average_gradients_`), and a gradient weighting averages its
  ``T x n`` per-task gradient matrix (and the loss values) in one collective *before*
  combining; the shared parameters are then left out of the step's reduction.
- Batch metrics are reduced across ranks at every batch boundary in one small collective that
  also carries the "stop on a signal" and "checkpoint by time" flags, so every rank takes the
  same decisions (:meth:`DistributedContext.reduce_batch`).
- :func:`shutdown` releases the process group *there*, not at interpreter exit, so its gloo
  threads are joined while Python is fully alive (see :func:`release_group` and
  "Troubleshooting" in the user guide).
"""

from __future__ import annotations

import datetime
import gc
import importlib
import logging
import math
import os
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dwi_mtl.errors import ConfigError

logger = logging.getLogger(__name__)

#: Metrics that count samples: summed across ranks (the global batch's size).
SUMMED_METRICS = ("nb_points", "nb_streamlines", "nb_empty_batches")
#: Metrics equal on every rank after the gradient reduction: kept as they are.
REPLICATED_PREFIXES = ("lr", "weight_", "grad_norm_")
#: Timings: the slowest rank is what a step costs.
MAX_METRICS = ("batch_time", "data_wait_time")
#: torch modules with ``group=group.WORLD`` default arguments, evaluated when they are imported:
#: imported after ``init_process_group`` (``torch.optim`` imports ``torch._dynamo``, which
#: imports ``torch.distributed.nn``) they hold the default group for the life of the process.
GROUP_DEFAULT_MODULES = ("torch.distributed.nn",)


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in a distributed launch.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
        launcher: ``"torchrun"`` or ``"slurm"``.
    """

    rank: int
    world_size: int
    local_rank: int
    launcher: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistributedEnv | None:
        """Read torchrun's or SLURM's variables; None for a single-process launch.

        Raises:
            ConfigError: naming the variable that is malformed or missing (a SLURM launch of
                several tasks without ``MASTER_ADDR`` / ``MASTER_PORT``).
        """
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" in env and "RANK" in env:
            values = _ints(env, ("RANK", "WORLD_SIZE"), {"LOCAL_RANK": "0"})
            found = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], "torchrun")
        elif "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
            values = _ints(env, ("SLURM_PROCID", "SLURM_NTASKS"), {"SLURM_LOCALID": "0"})
            found = cls(values["SLURM_PROCID"], values["SLURM_NTASKS"], values["SLURM_LOCALID"],
                        "slurm")
            if found.world_size > 1:
                missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not env.get(n)]
                if missing:
                    raise ConfigError(f"a SLURM launch of {found.world_size} tasks needs the "
                                      f"environment variables {missing} (see docs/distributed.md)")
        else:
            return None
        if found.world_size < 1 or not 0 <= found.rank < found.world_size:
            raise ConfigError(f"{found.launcher} environment: rank {found.rank} is not in "
                              f"[0, world size {found.world_size})")
        return found if found.world_size > 1 else None


def _ints(env: Mapping[str, str], names: Sequence[str], defaults: dict[str, str]) -> dict[str, int]:
    out = {}
    for name in (*names, *defaults):
        raw = env.get(name, defaults.get(name, ""))
        try:
            out[name] = int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None
    return out


def init_from_environment(
    environ: Mapping[str, str] | None = None, backend: str | None = None,
    timeout_minutes: float = 30.0,
) -> DistributedContext | None:
    """Initialise the default process group from the launcher's variables (no-op without one).

    Args:
        environ: the environment (default ``os.environ``).
        backend: ``"nccl"`` / ``"gloo"``; None: NCCL when CUDA is available, else gloo.
        timeout_minutes: collective timeout (a rank that died is detected after it).

    Returns:
        The context, or None for a single-process run.
    """
    env = DistributedEnv.from_environ(environ)
    if env is None:
        return None
    if not dist.is_initialized():
        if env.launcher == "slurm":  # env:// reads these names
            os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size),
                              LOCAL_RANK=str(env.local_rank))
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if chosen == "nccl":
            torch.cuda.set_device(env.local_rank)
        for name in GROUP_DEFAULT_MODULES:  # before the group exists: their defaults stay None
            importlib.import_module(name)
        dist.init_process_group(chosen, init_method="env://", rank=env.rank,
                                world_size=env.world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        logger.info("process group: rank %d of %d (%s, %s)", env.rank, env.world_size,
                    env.launcher, chosen)
    return DistributedContext.current()


def shutdown(synchronize: bool = True) -> None:
    """Destroy the default process group, if any, and release it before returning.

    ``destroy_process_group`` only forgets the group: its backend (gloo's worker and TCP-loop
    threads) lives until the last Python reference to it goes. When that happens during
    interpreter finalization, a gloo worker still dropping a finished collective's tensor
    needs the GIL, is killed by the finalizing interpreter inside C++ code, and the process
    aborts ("terminate called without an active exception", SIGABRT, a failed torchrun job).
    :func:`release_group` makes the release happen here, on this thread.

    Args:
        synchronize: wait for every rank first (a rank tearing gloo down while another still
            talks to it may abort); pass False after an error, when other ranks may be gone.
    """
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        group = dist.group.WORLD
        dist.destroy_process_group()
        release_group(group)
        del group  # the last reference: gloo's threads are joined here, Python fully alive


def release_group(group: object) -> int:
    """Drop torch's stale references to a destroyed process group; report any other.

    Default arguments ``group=group.WORLD`` of torch functions evaluated while ``group`` was
    the default group (see :data:`GROUP_DEFAULT_MODULES`) are reset to None, which those
    functions read as "the default group": the value they have when imported before
    ``init_process_group``, and a destroyed group is no valid argument anyway. References
    held elsewhere (user code keeping ``dist.group.WORLD``) cannot be dropped here: a warning
    counts them.

    Args:
        group: the process group just destroyed; the caller holds one reference (a local
            name), not counted.

    Returns:
        The number of references left besides the caller's (0: released when the caller
        drops its own).
    """
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("torch.distributed") and module is not None:
            for function in _module_functions(module):
                _reset_defaults(function, group)
    # The caller's name and this frame's argument; getrefcount adds its own.
    left = sys.getrefcount(group) - 3
    if left > 0:
        gc.collect()  # a reference cycle (a Work, a traceback) may hold it
        left = sys.getrefcount(group) - 3
    if left > 0:
        logger.warning(
            "the destroyed process group is still referenced %d time(s) (e.g. by a "
            "`group=dist.group.WORLD` default argument evaluated after init_process_group): "
            "its backend threads outlive shutdown() and the process may abort at exit "
            "(docs/distributed.md, Troubleshooting)", left)
    return left


def _module_functions(module: types.ModuleType) -> list[types.FunctionType]:
    """The functions in a module's namespace: at module level and as methods of its classes.

    Only ``type()`` is asked of each value: touching attributes of arbitrary objects can warn
    (``torch.distributed.reduce_op`` is deprecated on access) or run code.
    """
    found = []
    for value in list(vars(module).values()):
        if type(value) is types.FunctionType:
            found.append(value)
        elif issubclass(type(value), type):  # a class (isinstance would ask __class__)
            for member in list(vars(value).values()):
                if type(member) in (staticmethod, classmethod):
                    member = member.__func__
                if type(member) is types.FunctionType:
                    found.append(member)
    return found


def _reset_defaults(function: types.FunctionType, group: object) -> None:
    """Replace ``group`` by None in the default arguments of ``function``."""
    if function.__defaults__ and any(d is group for d in function.__defaults__):
        function.__defaults__ = tuple(None if d is group else d for d in function.__defaults__)
    keywords = function.__kwdefaults__
    if keywords and any(d is group for d in keywords.values()):
        function.__kwdefaults__ = {k: None if d is group else d for k, d in keywords.items()}


def shard_config() -> dict[str, int]:
    """``{"rank", "world_size"}`` of this process (0 / 1 outside torch.distributed)."""
    context = DistributedContext.current()
    if context is None:
        return {"rank": 0, "world_size": 1}
    return {"rank": context.rank, "world_size": context.world_size}


class DistributedContext:
    """The collectives the engine needs, on the default process group.

    Args:
        rank: this process's rank.
        world_size: number of ranks (> 1).
        local_rank: rank on the node.
    """

    def __init__(self, rank: int, world_size: int, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        self.backend = str(dist.get_backend()) if dist.is_initialized() else "gloo"

    @classmethod
    def current(cls) -> DistributedContext | None:
        """The context of the initialised default group, or None (not distributed)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        return cls(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))))

    @classmethod
    def for_engine(cls, engine: object) -> DistributedContext | None:
        """:meth:`current` for a training engine, refused for engines that do not average
        their gradients over ranks (their class sets ``supports_distributed = True``).

        Raises:
            ConfigError: naming the engine class, under torch.distributed.
        """
        context = cls.current()
        if context is not None and not getattr(type(engine), "supports_distributed", False):
            raise ConfigError(f"{type(engine).__name__} does not support torch.distributed "
                              "training yet (AbstractTrainer does; see docs/distributed.md)")
        return context

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files (rank 0)."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device of this rank: ``cuda:<local_rank>`` with NCCL, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" \
            else torch.device("cpu")

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier()

    def broadcast_module_(self, module: torch.nn.Module, *extra: torch.Tensor) -> None:
        """Copy rank 0's parameters and buffers (and ``extra`` tensors) to every rank.

        Without a DistributedDataParallel wrapper nothing else makes the ranks start from the
        same weights: each process draws its own initialisation (torch seeds every process
        differently), and averaged gradients applied to different weights never converge to
        one model. Called once when a trainer is built; a resume then loads the same
        checkpoint on every rank.

        Raises:
            ConfigError: when the module still has lazy (uninitialised) parameters, which
                would be initialised differently on each rank at the first forward pass.
        """
        from torch.nn.parameter import is_lazy

        from dwi_mtl.errors import ConfigError

        tensors = [*module.parameters(), *module.buffers(), *extra]
        lazy = [name for name, p in module.named_parameters() if is_lazy(p)]
        if lazy:
            raise ConfigError(
                f"distributed training needs materialised parameters, but {lazy[:3]} are lazy: "
                "run one forward pass before building the trainer, or give the input size "
                "(e.g. gate_input_dim for the MTL architectures)"
            )
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce ``tensor`` in place to its mean over ranks; return it."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.div_(self.world_size)

    def average_gradients_(self, params: Sequence[torch.Tensor]) -> None:
        """Average the ``.grad`` of ``params`` over ranks in one collective.

        A parameter without a gradient on every rank keeps ``None`` (the optimizer skips it);
        one with a gradient on some ranks only gets the mean with zeros elsewhere.
        """
        if not params:
            return
        ref = params[0]
        grads = [p.grad.reshape(-1) if p.grad is not None
                 else torch.zeros(p.numel(), dtype=p.dtype, device=p.device) for p in params]
        flags = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype,
                             device=ref.device)
        flat = torch.cat([*(g.to(ref.dtype) for g in grads), flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        values, has_grad = flat[: -len(params)].div_(self.world_size), flat[-len(params):]
        offset = 0
        present = has_grad.cpu().tolist()  # one small copy; the norm that follows syncs anyway
        for param, flag in zip(params, present, strict=True):
            size = param.numel()
            if flag > 0:
                param.grad = values[offset: offset + size].view_as(param).to(param.dtype)
            offset += size

    def reduce_batch(
        self, metrics: dict[str, float], weight_key: str | None, flags: Sequence[float],
    ) -> tuple[dict[str, float], list[float]]:
        """Reduce one batch's metrics and decision flags across ranks in one collective.

        Args:
            metrics: this rank's metrics (the same names on every rank).
            weight_key: the metric weighting the means (``"nb_points"``, ``"nb_streamlines"``;
                equal weights when None or absent), as the loss averages.
            flags: values reduced with ``max`` (signal received, checkpoint due, ...).

        Returns:
            The global metrics (sample counts summed, timings maxed, replicated values kept,
            the rest weighted means) and the flags' maxima.
        """
        names = sorted(metrics)
        means = [n for n in names if not n.startswith(REPLICATED_PREFIXES)
                 and n not in SUMMED_METRICS and n not in MAX_METRICS]
        weight = float(metrics.get(weight_key, 1.0)) if weight_key else 1.0
        weighted = [metrics[n] * weight for n in means]
        sums = torch.tensor([*weighted, weight, *(metrics[n] for n in names
                                                  if n in SUMMED_METRICS)], dtype=torch.float64)
        maxima = torch.tensor([*(metrics[n] for n in names if n in MAX_METRICS), *flags],
                              dtype=torch.float64)
        # One SUM collective: the sums, then one slot per rank for the values to max.
        slots = torch.zeros(self.world_size, len(maxima), dtype=torch.float64)
        slots[self.rank] = maxima
        both = torch.cat([sums, slots.reshape(-1)]).to(self.device)
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        reduced = both.cpu().tolist()
        sums_out, maxima_out = reduced[: len(sums)], reduced[len(sums):]
        total_weight = sums_out[len(means)]
        out = dict(metrics)
        for i, name in enumerate(means):
            out[name] = sums_out[i] / total_weight if total_weight else math.nan
        for name, value in zip([n for n in names if n in SUMMED_METRICS],
                               sums_out[len(means) + 1:], strict=True):
            out[name] = value
        per_rank = [maxima_out[r * len(maxima): (r + 1) * len(maxima)]
                    for r in range(self.world_size)]
        maxed = [max(row[i] for row in per_rank) for i in range(len(maxima))]
        for name, value in zip([n for n in names if n in MAX_METRICS], maxed, strict=False):
            out[name] = value
        return out, maxed[len(maxima) - len(flags):]
