"""Console progress: a tqdm bar with loss and ETA on a terminal, plain log lines otherwise.

On a cluster the output goes to a file, where a redrawn bar is unreadable; there the reporter
writes one ``logging`` line every ``log_every_n_batches`` batches and one at the end of each
phase instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

logger = logging.getLogger("dwi_mtl.progress")


class ProgressReporter:
    """Report the progress of training and validation phases.

    Args:
        enabled: False silences everything.
        use_tqdm: force a bar (True) or log lines (False); None picks a bar when ``stream`` is
            a terminal.
        stream: where the bar is drawn (stderr).
        log_every_n_batches: period of the plain log lines.
    """

    def __init__(
        self,
        enabled: bool = True,
        use_tqdm: bool | None = None,
        stream: TextIO | None = None,
        log_every_n_batches: int = 50,
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.use_tqdm = bool(self.stream.isatty()) if use_tqdm is None else use_tqdm
        self.log_every_n_batches = max(1, int(log_every_n_batches))
        self._bar: Any = None
        self._phase = ""
        self._epoch = 0
        self._total = 0
        self._done = 0
        self._start = 0.0
        self._last_loss = float("nan")

    def start_phase(self, phase: str, epoch: int, total: int, done: int = 0) -> None:
        """Begin a phase of ``total`` batches, ``done`` of which were run before a resume."""
        if not self.enabled:
            return
        self._phase, self._epoch, self._total, self._done = phase, epoch, total, done
        self._start = time.perf_counter()
        if self.use_tqdm:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=done, desc=f"epoch {epoch} {phase}", file=self.stream,
                leave=False, dynamic_ncols=True, mininterval=0.5,
            )

    def update(self, loss: float) -> None:
        """Count one finished batch with its loss."""
        if not self.enabled:
            return
        self._done += 1
        self._last_loss = loss
        if self._bar is not None:
            self._bar.update(1)
            if self._done % 10 == 0 or self._done == self._total:
                self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        elif self._done % self.log_every_n_batches == 0:
            elapsed = time.perf_counter() - self._start
            logger.info(
                "epoch %d %s: batch %d/%d, loss %.4g, %.2f s", self._epoch, self._phase,
                self._done, self._total, loss, elapsed,
            )

    def end_phase(self, summary: dict[str, float]) -> None:
        """Close the phase and log its summary (mean losses, ...)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        text = ", ".join(f"{k} {v:.4g}" for k, v in summary.items())
        logger.info("epoch %d %s done: %s", self._epoch, self._phase, text)

    def close(self) -> None:
        """Close a bar left open by an interruption."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
