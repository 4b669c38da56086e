"""Builds the torch DataLoader that connects a BatchSampler to a BatchLoader.

The sampler runs in the main process (it plans batches and tracks ``position``); the loader's
``load_batch`` is the collate_fn, run in ``num_workers`` worker processes. Each worker opens its
own h5py handle (the lazy dataset re-opens the file when it sees a new process id), gets its
global RNGs seeded from ``(seed, "worker", worker_id)`` (our own randomness never uses them),
and uses one torch thread so workers do not oversubscribe the cores. Workers persist across
epochs, prefetch ``prefetch_factor`` batches each, and batches are pinned on CUDA.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dwi_mtl.state import derive_seed
from dwi_mtl.training.batch_validation import check_optional_int, check_seed, is_int

logger = logging.getLogger(__name__)


class _PassThrough(Dataset):
    """A map-style dataset whose items are the sampler's BatchItems themselves.

    ``MultiSubjectSubset.__getitem__`` behaves the same; this one also works across contexts.
    """

    def __len__(self) -> int:
        return 0

    def __getitem__(self, item: Any) -> Any:
        return item


class WorkerInit:
    """Picklable ``worker_init_fn``: seeds the worker's global RNGs and limits its threads."""

    def __init__(self, seed: int) -> None:
        """Remember the base seed."""
        self.seed = int(seed)

    def __call__(self, worker_id: int) -> None:
        """Seed python/numpy/torch from ``(seed, "worker", worker_id)``; one torch thread."""
        worker_seed = derive_seed(self.seed, "worker", worker_id)
        random.seed(worker_seed)
        np.random.seed(worker_seed % 2**32)
        torch.manual_seed(worker_seed)
        torch.set_num_threads(1)


def build_dataloader(
    sampler: Any,
    loader: Any,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    prefetch_factor: int = 2,
    persistent_workers: bool = True,
    pin_memory: bool | None = None,
    timeout: float = 0,
) -> DataLoader:
    """Return a DataLoader yielding ``loader.load_batch(batch_items)`` for the sampler's batches.

    Batches come out identical for any ``num_workers`` (the loader's randomness is derived from
    each batch's identity). With a device interpolation (``loader.interpolate_on="device"``),
    call ``loader.to_device(batch, device)`` on each batch in the main process.

    Args:
        sampler: a ``BatchSampler`` (set its context and epoch before iterating).
        loader: a ``BatchLoader``.
        num_workers: worker processes (0: load in the main process).
        device: the training device; pinned memory is used when it is CUDA.
        prefetch_factor: batches prefetched per worker (ignored without workers).
        persistent_workers: keep workers alive across epochs (ignored without workers).
        pin_memory: force pinning on or off (default: on for CUDA devices).
        timeout: seconds to wait for a worker's batch (0: forever).

    Raises:
        ConfigError: a negative ``num_workers`` or a ``prefetch_factor`` below 1.
    """
    check_optional_int("num_workers", num_workers, 0)
    check_optional_int("prefetch_factor", prefetch_factor, 1)
    device = torch.device(device)
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory)
    seed = int(getattr(loader, "seed", 0))
    check_seed(seed)
    kwargs: dict[str, Any] = {}
    if is_int(num_workers) and num_workers > 0:
        kwargs = {
            "prefetch_factor": prefetch_factor,
            "persistent_workers": persistent_workers,
            "worker_init_fn": WorkerInit(seed),
            "multiprocessing_context": _context(),
        }
    logger.debug("DataLoader: %d workers, pin_memory=%s", num_workers, pin)
    return DataLoader(
        _PassThrough(),
        batch_sampler=sampler,
        collate_fn=loader.load_batch,
        num_workers=int(num_workers),
        pin_memory=pin,
        timeout=timeout,
        **kwargs,
    )


def _context() -> Any:
    """Prefer fork (no pickling of in-memory datasets; h5py handles re-opened per pid)."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
