"""Epoch hooks of the MTLTrainer and the record of end-of-epoch evaluations.

- :func:`isolated_rng`: run code (hooks, downstream fine-tuning) without touching the global
  python/numpy/torch random streams of the pre-training, optionally seeded from keys such as
  ``(seed, epoch, task)`` so that it is reproducible after a resume.
- :func:`evaluation_mode`: eval mode and no gradients for a module, restored afterwards.
- :class:`EvaluationRecord`: the results of the hooks and downstream evaluations of each
  epoch, checkpointed, so that a run resumed in the middle of an epoch's evaluations does not
  run the finished ones again.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.state import capture_rng_state, derive_seed, restore_rng_state


@contextlib.contextmanager
def isolated_rng(*keys: int | str) -> Iterator[None]:
    """Save the global RNG states, seed them from ``keys`` (if any), restore them on exit."""
    saved = capture_rng_state()
    try:
        if keys:
            seed = derive_seed(*keys)
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
        yield
    finally:
        restore_rng_state(saved)


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode under ``torch.no_grad``; restore each submodule's mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def as_metrics(result: Any, source: str) -> dict[str, float]:
    """Turn a callback's return value (None or a mapping of numbers) into float metrics.

    Raises:
        ConfigError: naming ``source`` when the value is not None or a mapping of numbers.
    """
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise ConfigError(f"{source} must return None or a dict of numbers, got "
                          f"{type(result).__name__}")
    metrics: dict[str, float] = {}
    for name, value in result.items():
        try:
            metrics[str(name)] = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source} returned a non-numeric {name!r}: {value!r}") from exc
    return metrics


class EvaluationRecord:
    """Per-epoch results of the epoch hooks and the downstream evaluations (stateful).

    ``hooks[epoch]`` holds the merged metrics of the epoch hooks; ``downstream[epoch][task]``
    the metrics of one finished downstream evaluation.
    """

    def __init__(self) -> None:
        self.hooks: dict[int, dict[str, float]] = {}
        self.downstream: dict[int, dict[str, dict[str, float]]] = {}

    def downstream_done(self, epoch: int, task: str) -> bool:
        """Whether the downstream evaluation of ``task`` at ``epoch`` is recorded."""
        return task in self.downstream.get(int(epoch), {})

    def record_downstream(self, epoch: int, task: str, metrics: dict[str, float]) -> None:
        """Record a finished downstream evaluation."""
        self.downstream.setdefault(int(epoch), {})[task] = dict(metrics)

    def summary(self, epoch: int) -> dict[str, float]:
        """The epoch's results as summary entries ``hook_<m>`` and ``downstream_<task>_<m>``."""
        summary = {f"hook_{k}": v for k, v in self.hooks.get(int(epoch), {}).items()}
        for task, metrics in self.downstream.get(int(epoch), {}).items():
            summary.update({f"downstream_{task}_{k}": v for k, v in metrics.items()})
        return {k: (v if math.isfinite(v) else math.nan) for k, v in summary.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "hooks": {str(e): dict(m) for e, m in self.hooks.items()},
            "downstream": {str(e): {t: dict(m) for t, m in d.items()}
                           for e, d in self.downstream.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hooks = {int(e): dict(m) for e, m in state["hooks"].items()}
        self.downstream = {int(e): {t: dict(m) for t, m in d.items()}
                           for e, d in state["downstream"].items()}
