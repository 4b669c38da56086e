"""Training histories kept in memory and written as ``logs/*.npy`` (one value per batch or epoch).

Every series is a list of floats named ``<phase>_<metric>_per_batch`` or
``<phase>_<metric>_per_epoch`` (``phase`` is ``training`` or ``validation``), e.g.
``training_loss_per_batch.npy``, ``validation_loss_per_epoch.npy``,
``training_grad_norm_before_clip_per_batch.npy``. A metric that appears later (a task added,
a NaN-skip counter) is padded with NaN for the earlier entries, so every series of a kind has
one value per batch/epoch and the files line up.

The history is part of the checkpoint (:meth:`NpyHistory.state_dict`): on resume the series
are restored to exactly what they were at the checkpointed step and the ``.npy`` files are
rewritten from them, so batches logged after the checkpoint and before a crash disappear.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwi_mtl.training.faults import fault_point


class NpyHistory:
    """Per-batch and per-epoch series of scalar metrics, saved as ``.npy`` files.

    Args:
        logs_dir: folder of the ``.npy`` files (created on the first save).
    """

    def __init__(self, logs_dir: str | Path) -> None:
        self.logs_dir = Path(logs_dir)
        self.batch_series: dict[str, list[float]] = {}
        self.epoch_series: dict[str, list[float]] = {}
        self._nb_batches: dict[str, int] = {}
        self._nb_epochs: dict[str, int] = {}
        self._names: dict[tuple[str, str], dict[str, str]] = {}
        # float64 copies of the series, extended with each series' new tail only: the lists
        # only ever grow, so a checkpoint converts the batches logged since the previous one
        self._frozen: dict[str, np.ndarray] = {}

    # -- recording ---------------------------------------------------------------------
    def append_batch(self, phase: str, metrics: dict[str, float]) -> None:
        """Record one batch of ``phase``; missing metrics of that phase get NaN."""
        self._append(self.batch_series, self._nb_batches, phase, metrics, "per_batch")

    def append_epoch(self, phase: str, metrics: dict[str, float]) -> None:
        """Record the summary of one epoch of ``phase``; missing metrics get NaN."""
        self._append(self.epoch_series, self._nb_epochs, phase, metrics, "per_epoch")

    def _append(
        self,
        series: dict[str, list[float]],
        counts: dict[str, int],
        phase: str,
        metrics: dict[str, float],
        suffix: str,
    ) -> None:
        count = counts.get(phase, 0)
        names = self._names.setdefault((phase, suffix), {})  # metric -> series key (cached)
        for name, value in metrics.items():
            key = names.get(name)
            if key is None:
                key = names[name] = f"{phase}_{name}_{suffix}"
            values = series.get(key)
            if values is None:
                values = series[key] = [math.nan] * count
            values.append(float(value))
        if len(metrics) < len(names):  # metrics missing from this record: NaN
            for key in names.values():
                values = series.get(key)
                if values is not None and len(values) == count:
                    values.append(math.nan)
        counts[phase] = count + 1

    # -- queries ------------------------------------------------------------------------
    def epoch_values(self, phase: str, metric: str) -> list[float]:
        """Return the per-epoch series of ``metric`` in ``phase`` (empty when never logged)."""
        return list(self.epoch_series.get(f"{phase}_{metric}_per_epoch", []))

    def batch_values(self, phase: str, metric: str) -> list[float]:
        """Return the per-batch series of ``metric`` in ``phase`` (empty when never logged)."""
        return list(self.batch_series.get(f"{phase}_{metric}_per_batch", []))

    # -- files ----------------------------------------------------------------------------
    def save(self) -> None:
        """Write every series as ``<logs_dir>/<name>.npy`` (each file replaced atomically)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for name, values in {**self.batch_series, **self.epoch_series}.items():
            path = self.logs_dir / f"{name}.npy"
            tmp = self.logs_dir / f".{name}.tmp.npy"
            np.save(tmp, self._frozen_series(name, values))
            os.replace(tmp, path)
            fault_point("npy.file_replaced")
        self._remove_stale_files()

    def _remove_stale_files(self) -> None:
        """Delete ``.npy`` series that the restored history no longer has (logged after it)."""
        known = set(self.batch_series) | set(self.epoch_series)
        for path in self.logs_dir.glob("*.npy"):
            if not path.name.startswith(".") and path.stem not in known:
                path.unlink()

    # -- state protocol ------------------------------------------------------------------
    def _frozen_series(self, key: str, values: list[float]) -> np.ndarray:
        """``values`` as a float64 array, converting only what was appended since last time.

        numpy, not torch: ``torch.cat`` runs on the intra-op thread pool, which costs ~20 ms
        per call on a loaded machine; the state dict wraps the arrays with ``from_numpy``.
        """
        frozen = self._frozen.get(key)
        if frozen is None or len(frozen) > len(values):
            frozen = np.asarray(values, dtype=np.float64)
        elif len(frozen) < len(values):
            tail = np.asarray(values[len(frozen):], dtype=np.float64)
            frozen = np.concatenate((frozen, tail))
        self._frozen[key] = frozen
        return frozen

    def state_dict(self) -> dict[str, Any]:
        """Return the series and counters.

        Series are float64 tensors (exact): ``torch.save`` writes a tensor's bytes as one
        record, while a numpy array goes through pickle (protocol 2 encodes its bytes as a
        latin-1 string: ~20x slower for long per-batch series). The tensors are shared with
        the history's cache: read them, do not modify them.
        """
        return {
            "batch_series": {k: torch.from_numpy(self._frozen_series(k, v))
                             for k, v in self.batch_series.items()},
            "epoch_series": {k: torch.from_numpy(self._frozen_series(k, v))
                             for k, v in self.epoch_series.items()},
            "nb_batches": dict(self._nb_batches),
            "nb_epochs": dict(self._nb_epochs),
            "names": [[phase, suffix, dict(names)]
                      for (phase, suffix), names in self._names.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the series saved by :meth:`state_dict` (float64 tensors, possibly on
        the device a checkpoint was mapped to, or numpy arrays in older checkpoints)."""
        self.batch_series = {k: _as_list(v) for k, v in state["batch_series"].items()}
        self.epoch_series = {k: _as_list(v) for k, v in state["epoch_series"].items()}
        self._frozen = {}
        self._nb_batches = dict(state["nb_batches"])
        self._nb_epochs = dict(state["nb_epochs"])
        self._names = {
            (phase, suffix): dict(names)
            for phase, suffix, names in state.get("names", [])
        }


def _as_list(values: Any) -> list[float]:
    """A saved series (tensor on any device, numpy array, list) as a list of floats."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    result: list[float] = np.asarray(values, dtype=np.float64).tolist()
    return result


def load_npy_logs(logs_dir: str | Path) -> dict[str, np.ndarray]:
    """Read every ``<logs_dir>/*.npy`` series into a ``name -> array`` dict."""
    return {
        path.stem: np.load(path)
        for path in sorted(Path(logs_dir).glob("*.npy"))
        if not path.name.startswith(".")
    }
