"""PNG plots of training curves from an experiment's ``logs/*.npy`` files.

One figure per metric that has per-epoch values: training and validation curves on the same
axes (loss, per-task losses, grad norms, lr, ...). matplotlib is imported here only, with the
non-interactive Agg backend, so plotting works on headless cluster nodes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from dwi_mtl.errors import DataError
from dwi_mtl.logging.npy_history import load_npy_logs

logger = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"^(training|validation)_(.+)_per_epoch$")


def group_epoch_series(logs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Group ``<phase>_<metric>_per_epoch`` series by metric: ``metric -> {phase: values}``."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for name, values in logs.items():
        match = _EPOCH_RE.match(name)
        if match:
            grouped.setdefault(match.group(2), {})[match.group(1)] = values
    return grouped


def plot_training_curves(logs_dir: str | Path, output_dir: str | Path) -> list[Path]:
    """Write one PNG per per-epoch metric found in ``logs_dir`` into ``output_dir``.

    Args:
        logs_dir: an experiment's ``logs/`` folder.
        output_dir: where the PNG files go (created when missing).

    Returns:
        The paths of the written PNG files, sorted.

    Raises:
        DataError: when ``logs_dir`` holds no per-epoch ``.npy`` series.
    """
    # An explicit Figure + Agg canvas: no pyplot state and no change of the user's backend
    # (a notebook calling this keeps its inline plots).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grouped = group_epoch_series(load_npy_logs(logs_dir))
    if not grouped:
        raise DataError(f"no per-epoch .npy logs in '{logs_dir}'")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, phases in sorted(grouped.items()):
        figure = Figure(figsize=(6, 4))
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        for phase, values in sorted(phases.items()):
            epochs = np.arange(len(values))
            axes.plot(epochs, values, marker="o", markersize=3, label=phase)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric)
        axes.legend()
        axes.grid(True, alpha=0.3)
        path = output / f"{metric}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        written.append(path)
    logger.info("wrote %d plots to %s", len(written), output)
    return written
