"""Compare the ``logs/*.npy`` histories of one or several experiments: PNG plots and CSV tables.

The logic behind ``dwi_mtl_visualize_logs`` (:mod:`dwi_mtl.cli.visualize_logs`). Series names
follow :mod:`dwi_mtl.logging.npy_history`: ``<phase>_<metric>_per_<epoch|batch>``, e.g.
``training_loss_per_batch``, ``validation_loss_tracking_per_epoch`` (per-task losses are
``loss_<task>``, task weights ``weight_<task>``, learning rate ``lr``, gradient norms
``grad_norm_before_clip`` / ``grad_norm_after_clip``).

One figure per metric and granularity, every experiment on the same axes (side by side):
per-epoch figures draw training and validation together; per-batch figures draw one panel per
phase (their batch counts differ), the raw curve faint and its smoothed version on top. Extra
figures ``task_losses_*`` and ``task_weights_*`` gather every task of a run. Everything is
checked before the first file is written, and each file is written to a temporary name then
renamed, so a bad argument leaves nothing half-written.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.logging.npy_history import load_npy_logs
from dwi_mtl.logging.plots import group_epoch_series

logger = logging.getLogger(__name__)

GRANULARITIES = ("epoch", "batch")
PHASES = ("training", "validation")
_BATCH_RE = re.compile(r"^(training|validation)_(.+)_per_batch$")
#: Prefixes of the per-task metrics gathered into one figure per run.
TASK_GROUPS = {"task_losses": "loss_", "task_weights": "weight_"}


@dataclass
class ExperimentLogs:
    """The histories of one experiment, grouped as ``series[granularity][metric][phase]``.

    Attributes:
        name: the label of the experiment in legends and CSV file names.
        logs_dir: the folder the ``.npy`` files were read from.
        series: ``granularity -> metric -> phase -> values``.
    """

    name: str
    logs_dir: Path
    series: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)

    def metrics(self, granularity: str) -> list[str]:
        """Return the sorted metric names logged at ``granularity``."""
        return sorted(self.series.get(granularity, {}))


def group_series(logs: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Group ``<phase>_<metric>_per_<g>`` arrays as ``g -> metric -> phase -> values``.

    Per-epoch series are grouped by :func:`dwi_mtl.logging.plots.group_epoch_series` (the
    experiment's own PNG curves use it too); names that follow neither convention are ignored.
    """
    grouped: dict[str, dict[str, dict[str, np.ndarray]]] = {
        "epoch": {metric: {phase: np.asarray(values, float) for phase, values in phases.items()}
                  for metric, phases in group_epoch_series(logs).items()},
        "batch": {},
    }
    for name, values in logs.items():
        match = _BATCH_RE.match(name)
        if match:
            phase, metric = match.groups()
            grouped["batch"].setdefault(metric, {})[phase] = np.asarray(values, float)
    return grouped


def load_experiment_logs(path: str | Path, name: str | None = None) -> ExperimentLogs:
    """Read an experiment's ``.npy`` histories.

    Args:
        path: the experiment folder (holding ``logs/``) or a ``logs`` folder itself.
        name: legend label (default: the experiment folder's name).

    Raises:
        DataError: the folder is missing or holds no ``<phase>_<metric>_per_*.npy`` file.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"experiment folder '{folder}' does not exist")
    logs_dir = folder / "logs" if (folder / "logs").is_dir() else folder
    series = group_series(load_npy_logs(logs_dir))
    if not any(series.values()):
        raise DataError(f"no .npy logs (<phase>_<metric>_per_epoch|batch.npy) in '{logs_dir}'")
    label = name or (folder.parent.name if logs_dir == folder else folder.name)
    return ExperimentLogs(label, logs_dir, series)


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """Legend labels: experiment folder names, or the paths as given where two names clash.

    A ``logs`` folder is named after its experiment (its parent folder).
    """
    resolved = [Path(p).resolve() for p in paths]
    names = [r.parent.name if r.name == "logs" else r.name for r in resolved]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def select_metrics(
    experiments: Sequence[ExperimentLogs], patterns: Sequence[str] | None, granularity: str
) -> list[str]:
    """Return the metrics to plot at ``granularity``: all, or those matching ``patterns``.

    Args:
        experiments: the loaded runs.
        patterns: metric names or shell patterns (``loss_*``); None for every metric.
        granularity: ``"epoch"`` or ``"batch"``.

    Raises:
        ConfigError: a pattern matches no metric of any run at any granularity.
    """
    available = sorted({m for exp in experiments for m in exp.metrics(granularity)})
    if not patterns:
        return available
    every = sorted({m for exp in experiments for g in GRANULARITIES for m in exp.metrics(g)})
    for pattern in patterns:
        if not fnmatch.filter(every, pattern):
            raise ConfigError(
                f"--metrics: unknown metric {pattern!r}; logged metrics are: {', '.join(every)}"
            )
    return [m for m in available if any(fnmatch.fnmatchcase(m, p) for p in patterns)]


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average (TensorBoard's smoothing), debiased, NaN-aware.

    ``weight`` in ``[0, 1)``: 0 returns the values unchanged. NaN entries (skipped batches,
    metrics logged later) do not contribute and stay NaN in the output.

    Raises:
        ConfigError: ``weight`` outside ``[0, 1)``.
    """
    if not 0.0 <= weight < 1.0:
        raise ConfigError(f"--smoothing must be in [0, 1), got {weight}")
    values = np.asarray(values, dtype=float)
    if weight == 0.0 or values.size == 0:
        return values.copy()
    finite = np.isfinite(values)
    coefficients = ([1.0 - weight], [1.0, -weight])
    numerator = lfilter(*coefficients, np.where(finite, values, 0.0))
    denominator = lfilter(*coefficients, finite.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        smoothed = numerator / denominator
    smoothed[~finite] = np.nan
    return np.asarray(smoothed)


def task_groups(experiments: Sequence[ExperimentLogs], granularity: str) -> dict[str, list[str]]:
    """``task_losses`` / ``task_weights`` -> the per-task metrics of that kind (when any)."""
    groups = {}
    for group, prefix in TASK_GROUPS.items():
        metrics = sorted({m for exp in experiments for m in exp.metrics(granularity)
                          if m.startswith(prefix)})
        if metrics:
            groups[group] = metrics
    return groups


def write_csv_tables(experiments: Sequence[ExperimentLogs], out_dir: Path) -> list[Path]:
    """Write the raw series as CSV: ``<run>_per_epoch.csv`` and ``<run>_<phase>_per_batch.csv``.

    Columns are ``epoch`` (or ``batch``) then ``<phase>_<metric>`` (per-epoch) or ``<metric>``
    (per-batch); shorter series are padded with empty cells.
    """
    written = []
    for exp in experiments:
        stem = _safe_name(exp.name)
        epoch_columns = {f"{phase}_{metric}": values
                         for metric, phases in sorted(exp.series["epoch"].items())
                         for phase, values in sorted(phases.items())}
        if epoch_columns:
            written.append(_write_csv(out_dir / f"{stem}_per_epoch.csv", "epoch", epoch_columns))
        for phase in PHASES:
            columns = {metric: phases[phase]
                       for metric, phases in sorted(exp.series["batch"].items()) if phase in phases}
            if columns:
                path = out_dir / f"{stem}_{phase}_per_batch.csv"
                written.append(_write_csv(path, "batch", columns))
    return written


def _write_csv(path: Path, index_name: str, columns: dict[str, np.ndarray]) -> Path:
    length = max(len(values) for values in columns.values())
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([index_name, *columns])
        for row in range(length):
            cells = [repr(float(v[row])) if row < len(v) else "" for v in columns.values()]
            writer.writerow([row, *cells])
    os.replace(tmp, path)
    return path


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"


# -- figures ----------------------------------------------------------------------------------
def plot_experiments(
    experiments: Sequence[ExperimentLogs],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    granularities: Sequence[str] = GRANULARITIES,
    smoothing: float = 0.6,
    show: bool = False,
) -> list[Path]:
    """Write one PNG per metric and granularity, all experiments side by side on each.

    Args:
        experiments: loaded runs (:func:`load_experiment_logs`).
        out_dir: output folder (created).
        metrics: metric names or shell patterns; None for all (then the ``task_losses`` and
            ``task_weights`` figures are drawn too).
        granularities: ``"epoch"`` and/or ``"batch"``.
        smoothing: EMA weight in ``[0, 1)`` for per-batch curves (:func:`smooth`).
        show: also open the figures in a window (only when a display is available).

    Returns:
        The written PNG files.

    Raises:
        ConfigError: unknown granularity or metric, bad smoothing (before anything is written).
    """
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise ConfigError(f"--granularity must be among {GRANULARITIES}, got {granularity!r}")
    smooth(np.zeros(1), smoothing)  # validates the weight before any file is written
    plan = {g: select_metrics(experiments, metrics, g) for g in granularities}
    show = show and display_available()
    plt = _pyplot(interactive=show)
    output = Path(out_dir)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    kept_open: list[Any] = []
    for granularity, names in plan.items():
        jobs: list[tuple[str, list[str] | None]] = [(metric, None) for metric in names]
        if metrics is None:
            jobs += list(task_groups(experiments, granularity).items())
        for title, members in jobs:
            if members is None:
                figure = _metric_figure(plt, experiments, title, granularity, smoothing)
            else:
                figure = _group_figure(plt, experiments, title, members, granularity, smoothing)
            path = output / f"{title}_per_{granularity}.png"
            _save(figure, path)
            written.append(path)
            if show:
                kept_open.append(figure)
            else:
                plt.close(figure)  # one figure in memory at a time
    logger.info("wrote %d figures to %s", len(written), output)
    if show and kept_open:
        plt.show()
        for figure in kept_open:
            plt.close(figure)
    return written


def display_available() -> bool:
    """Whether a window can be opened: an X11/Wayland display on Linux, always elsewhere."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _pyplot(interactive: bool) -> Any:
    import matplotlib

    if not interactive:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _metric_figure(
    plt: Any, experiments: Sequence[ExperimentLogs], metric: str, granularity: str,
    smoothing: float,
) -> Any:
    """Per-epoch: one panel, both phases. Per-batch: one panel per phase that logged it."""
    panels: list[str | None] = [None]
    if granularity == "batch":
        panels = [p for p in PHASES
                  if any(p in e.series["batch"].get(metric, {}) for e in experiments)]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for exp in experiments:
            for phase, values in sorted(exp.series[granularity].get(metric, {}).items()):
                if panel is None:
                    _draw(axis, values, f"{exp.name} ({phase})", granularity, smoothing)
                elif phase == panel:
                    _draw(axis, values, exp.name, granularity, smoothing)
        _decorate(axis, metric if panel is None else f"{metric} ({panel})", granularity, metric)
    return figure


def _group_figure(
    plt: Any, experiments: Sequence[ExperimentLogs], group: str, members: Sequence[str],
    granularity: str, smoothing: float,
) -> Any:
    """One panel per experiment with every task's curve (training only per batch)."""
    figure, axes = plt.subplots(1, len(experiments), figsize=(6 * len(experiments), 4),
                                squeeze=False)
    for axis, exp in zip(axes[0], experiments):
        for metric in members:
            for phase, values in sorted(exp.series[granularity].get(metric, {}).items()):
                if granularity == "epoch" or phase == "training":
                    _draw(axis, values, f"{metric} ({phase})", granularity, smoothing)
        _decorate(axis, f"{exp.name}: {group.replace('_', ' ')}", granularity, group)
    return figure


def _draw(axis: Any, values: np.ndarray, label: str, granularity: str, smoothing: float) -> None:
    steps = np.arange(len(values))
    if granularity == "epoch":
        axis.plot(steps, values, marker="o", markersize=3, label=label)
    elif smoothing > 0:
        (raw,) = axis.plot(steps, values, alpha=0.25, linewidth=0.8)
        axis.plot(steps, smooth(values, smoothing), color=raw.get_color(), label=label)
    else:
        axis.plot(steps, values, label=label)


def _decorate(axis: Any, title: str, granularity: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and batches are counts
    axis.set_title(title)
    axis.set_xlabel(granularity)
    axis.set_ylabel(ylabel)
    axis.grid(True, alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=100)
    os.replace(tmp, path)
