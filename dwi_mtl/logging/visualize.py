"""Compare the ``logs/*.npy`` histories of one or several experiments: PNG plots and CSV tables.

The logic behind ``dwi_mtl_visualize_logs`` (:mod:`dwi_mtl.cli.visualize_logs`). Series names
follow :mod:`dwi_mtl.logging.npy_history`: ``<phase>_<metric>_per_<epoch|batch>``, e.g.
``training_loss_per_batch``, ``validation_loss_tracking_per_epoch``. Every phase is read:
``training`` and ``validation``, and ``run`` for the epoch summary entries of the trainer
(``run_lr_per_epoch``, and for :class:`~dwi_mtl.mtl.MTLTrainer` the epoch hooks
``run_hook_<metric>_per_epoch`` and downstream evaluations
``run_downstream_<task>_<metric>_per_epoch``); the metric is the name without its phase
(``hook_rf_accuracy``), as ``--metrics`` takes it.

Per-task losses are named ``loss_<task>`` by :class:`~dwi_mtl.training.AbstractTrainer` and
``<task>_loss`` by :class:`~dwi_mtl.mtl.MTLTrainer`; the task names are read from the
experiment's ``parameters.json`` and from the ``weight_<task>`` series, never guessed from a
suffix. Task weights are ``weight_<task>``.

One figure per metric and granularity, every experiment on the same axes (side by side):
per-epoch figures draw every phase together; per-batch figures draw one panel per phase
(their batch counts differ), the raw curve faint and its smoothed version on top. Extra
figures ``task_losses_*`` and ``task_weights_*`` gather every task of a run. Everything is
checked before the first file is written, and each file is written to a temporary name then
renamed, so a bad argument leaves nothing half-written.

Figures are drawn on explicit :class:`matplotlib.figure.Figure` objects with an Agg canvas, so
the library never changes the session's matplotlib backend (a later ``plt.show()`` in Jupyter
still works); pyplot is used only when the figures are to be shown.
"""

from __future__ import annotations

import csv
import fnmatch
import json
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

logger = logging.getLogger(__name__)

GRANULARITIES = ("epoch", "batch")
#: The phases the trainers log, in drawing order; any other ``<phase>_`` prefix follows them.
PHASES = ("training", "validation", "run")
#: ``<phase>_<metric>_per_<granularity>``: the phase is the first word (no underscore in it).
_SERIES_RE = re.compile(r"^([A-Za-z0-9]+)_(.+)_per_(epoch|batch)$")
PARAMETERS_FILE = "parameters.json"


@dataclass
class ExperimentLogs:
    """The histories of one experiment, grouped as ``series[granularity][metric][phase]``.

    Attributes:
        name: the label of the experiment in legends and CSV file names.
        logs_dir: the folder the ``.npy`` files were read from.
        series: ``granularity -> metric -> phase -> values``.
        tasks: the run's task names (from ``parameters.json`` and the ``weight_<task>`` /
            ``loss_<task>`` series), for the ``task_losses`` figures.
    """

    name: str
    logs_dir: Path
    series: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)

    def metrics(self, granularity: str) -> list[str]:
        """Return the sorted metric names logged at ``granularity``."""
        return sorted(self.series.get(granularity, {}))


def group_series(logs: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Group ``<phase>_<metric>_per_<g>`` arrays as ``g -> metric -> phase -> values``.

    Every phase is kept (``training``, ``validation``, ``run``, or any other first word of the
    name); names without a ``_per_epoch`` / ``_per_batch`` suffix are ignored.
    """
    grouped: dict[str, dict[str, dict[str, np.ndarray]]] = {g: {} for g in GRANULARITIES}
    for name, values in logs.items():
        match = _SERIES_RE.match(name)
        if match:
            phase, metric, granularity = match.groups()
            grouped[granularity].setdefault(metric, {})[phase] = np.asarray(values, float)
    return grouped


def phase_order(phases: set[str] | Sequence[str]) -> list[str]:
    """Sort phases for drawing: :data:`PHASES` first, in that order, then the others."""
    known = [p for p in PHASES if p in phases]
    return known + sorted(set(phases) - set(PHASES))


def read_task_names(experiment_dir: Path) -> list[str]:
    """The task names recorded in ``<experiment_dir>/parameters.json`` (empty when none).

    Reads ``tasks[*].name`` (:class:`~dwi_mtl.mtl.MTLTrainer`) and
    ``trainer.config.task_names`` (:class:`~dwi_mtl.training.AbstractTrainer`). A missing or
    unreadable file only loses the names (the plots do not need it), with a warning when
    unreadable.
    """
    path = experiment_dir / PARAMETERS_FILE
    if not path.is_file():
        return []
    try:
        parameters = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("'%s' is unreadable (%s): task names taken from the logs only", path, exc)
        return []
    if not isinstance(parameters, dict):
        return []
    names = [task.get("name") for task in parameters.get("tasks") or []
             if isinstance(task, dict)]
    trainer = parameters.get("trainer")
    config = trainer.get("config") if isinstance(trainer, dict) else None
    if isinstance(config, dict):
        names += list(config.get("task_names") or [])
    return list(dict.fromkeys(str(n) for n in names if n))


def _tasks_in_series(series: dict[str, dict[str, dict[str, np.ndarray]]]) -> list[str]:
    """Task names that the series spell out: ``weight_<task>`` and ``loss_<task>``."""
    metrics = {m for by_metric in series.values() for m in by_metric}
    return [m.split("_", 1)[1] for m in sorted(metrics)
            if m.startswith(("weight_", "loss_")) and len(m.split("_", 1)[1]) > 0]


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
    tasks = read_task_names(logs_dir.parent) + _tasks_in_series(series)
    return ExperimentLogs(label, logs_dir, series, list(dict.fromkeys(tasks)))


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


def task_loss_metrics(exp: ExperimentLogs, granularity: str) -> list[str]:
    """The per-task loss metrics of ``exp`` logged at ``granularity``.

    Both namings: ``loss_<task>`` (:class:`~dwi_mtl.training.AbstractTrainer`) and
    ``<task>_loss`` (:class:`~dwi_mtl.mtl.MTLTrainer`), for the tasks of ``exp.tasks``.
    """
    logged = set(exp.metrics(granularity))
    wanted = [name for task in exp.tasks for name in (f"loss_{task}", f"{task}_loss")]
    return [name for name in dict.fromkeys(wanted) if name in logged]


def task_groups(experiments: Sequence[ExperimentLogs], granularity: str) -> dict[str, list[str]]:
    """``task_losses`` / ``task_weights`` -> the per-task metrics of that kind (when any)."""
    losses = {m for exp in experiments for m in task_loss_metrics(exp, granularity)}
    weights = {m for exp in experiments for m in exp.metrics(granularity)
               if m.startswith("weight_")}
    groups = {"task_losses": sorted(losses), "task_weights": sorted(weights)}
    return {group: metrics for group, metrics in groups.items() if metrics}


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
        batch_phases = {p for phases in exp.series["batch"].values() for p in phases}
        for phase in phase_order(batch_phases):
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
        show: also show the figures, with pyplot and the session's own backend, when
            :func:`display_available` (a window, or inline in Jupyter). Otherwise pyplot is
            not used at all.

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
    pyplot = _pyplot() if show and display_available() else None
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
                figure = _metric_figure(pyplot, experiments, title, granularity, smoothing)
            else:
                figure = _group_figure(pyplot, experiments, title, members, granularity,
                                       smoothing)
            path = output / f"{title}_per_{granularity}.png"
            _save(figure, path)
            written.append(path)
            if pyplot is not None:
                kept_open.append(figure)
    logger.info("wrote %d figures to %s", len(written), output)
    if pyplot is not None and kept_open:
        pyplot.show()
        for figure in kept_open:
            pyplot.close(figure)
    return written


def display_available() -> bool:
    """Whether figures can be shown: a notebook backend (Jupyter's inline or ipympl) is active,
    or a window can be opened (an X11/Wayland display on Linux, always elsewhere)."""
    import matplotlib

    backend = (matplotlib.get_backend(auto_select=False) or os.environ.get("MPLBACKEND", ""))
    if any(word in backend.lower() for word in ("inline", "ipympl", "widget", "nbagg")):
        return True
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _pyplot() -> Any:
    """pyplot with the session's own backend (only to show figures; never switched here)."""
    import matplotlib.pyplot as plt

    return plt


def _new_figure(pyplot: Any, nb_panels: int) -> tuple[Any, Any]:
    """A figure of ``nb_panels`` side by side: ``(figure, axes[0])``.

    Without ``pyplot``, a bare :class:`~matplotlib.figure.Figure` on an Agg canvas: nothing is
    registered with pyplot and the session's backend is untouched (freed with the object).
    """
    size = (6 * nb_panels, 4)
    if pyplot is not None:
        figure, axes = pyplot.subplots(1, nb_panels, figsize=size, squeeze=False)
        return figure, axes[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, nb_panels, squeeze=False)[0]


def _metric_figure(
    pyplot: Any, experiments: Sequence[ExperimentLogs], metric: str, granularity: str,
    smoothing: float,
) -> Any:
    """Per-epoch: one panel, every phase. Per-batch: one panel per phase that logged it."""
    panels: list[str | None] = [None]
    if granularity == "batch":
        panels = list(phase_order({p for e in experiments
                                   for p in e.series["batch"].get(metric, {})}))
    figure, axes = _new_figure(pyplot, len(panels))
    for axis, panel in zip(axes, panels):
        for exp in experiments:
            phases = exp.series[granularity].get(metric, {})
            for phase in phase_order(set(phases)):
                if panel is None:
                    _draw(axis, phases[phase], f"{exp.name} ({phase})", granularity, smoothing)
                elif phase == panel:
                    _draw(axis, phases[phase], exp.name, granularity, smoothing)
        _decorate(axis, metric if panel is None else f"{metric} ({panel})", granularity, metric)
    return figure


def _group_figure(
    pyplot: Any, experiments: Sequence[ExperimentLogs], group: str, members: Sequence[str],
    granularity: str, smoothing: float,
) -> Any:
    """One panel per experiment with every task's curve (training only per batch)."""
    figure, axes = _new_figure(pyplot, len(experiments))
    for axis, exp in zip(axes, experiments):
        for metric in members:
            phases = exp.series[granularity].get(metric, {})
            for phase in phase_order(set(phases)):
                if granularity == "epoch" or phase == "training":
                    _draw(axis, phases[phase], f"{metric} ({phase})", granularity, smoothing)
        _decorate(axis, f"{exp.name}: {group.replace('_', ' ')}", granularity, group)
    return figure


def _draw(axis: Any, values: np.ndarray, label: str, granularity: str, smoothing: float) -> None:
    """Per epoch: the logged points joined across NaN gaps (a downstream evaluation every few
    epochs is a line, not isolated dots). Per batch: raw and smoothed curves."""
    steps = np.arange(len(values))
    if granularity == "epoch":
        logged = np.isfinite(values)
        axis.plot(steps[logged], values[logged], marker="o", markersize=3, label=label)
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
