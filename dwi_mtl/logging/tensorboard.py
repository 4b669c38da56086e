"""TensorBoard event files under ``<experiment>/tensorboard/`` (optional sink).

``torch.utils.tensorboard`` is imported only when the sink is created. On resume the writer
is opened with ``purge_step`` set to the checkpointed global step, so TensorBoard discards the
events that a crashed run wrote after its last checkpoint and the curves stay continuous.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dwi_mtl.logging.sinks import LogSink


class TensorBoardSink(LogSink):
    """Write batch and epoch scalars as TensorBoard events.

    Args:
        log_dir: the event folder (``<experiment>/tensorboard``).
        log_every_n_batches: write one batch point every N training batches (epoch summaries
            are always written).
    """

    def __init__(self, log_dir: str | Path, log_every_n_batches: int = 1) -> None:
        self.log_dir = Path(log_dir)
        self.log_every_n_batches = max(1, int(log_every_n_batches))
        self._writer: Any = None
        self._purge_step: int | None = None
        self._last_step = -1

    def _get_writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def log_parameters(self, parameters: dict[str, Any]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(parameters.items()))
        self._get_writer().add_text("parameters", text, 0)

    def log_batch(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        if phase != "training" or step % self.log_every_n_batches:
            return
        writer = self._get_writer()
        for name, value in metrics.items():
            writer.add_scalar(f"batch/{name}", value, step)
        self._last_step = step

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        writer = self._get_writer()
        for name, value in metrics.items():
            writer.add_scalar(f"epoch/{name}", value, epoch)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_step = int(state.get("last_step", -1))
        self._purge_step = self._last_step + 1
