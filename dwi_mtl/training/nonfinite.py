"""What to do with a NaN/inf loss or gradient: stop with a precise error, or skip the batch.

Either way the offending batch is appended to ``<experiment>/nonfinite_batches.jsonl`` (one
JSON object per line: what was non-finite, epoch, batch index, subject indices and streamline
ids), so the bad streamlines can be found in the data. With ``policy="skip"`` the batch's
gradients are dropped (no optimizer step) and the skip is counted in the logs and checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dwi_mtl.errors import ConfigError, NonFiniteError

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("stop", "skip")
REPORT_FILE = "nonfinite_batches.jsonl"


def _plain_ids(values: Any) -> list[Any]:
    if values is None:
        return []
    if hasattr(values, "tolist"):
        result: list[Any] = values.tolist()
        return result
    return [int(v) if isinstance(v, (int, float)) else str(v) for v in values]


class NonFiniteGuard:
    """Check losses and gradient norms; record and stop on (or skip) non-finite values.

    Args:
        policy: ``"stop"`` (raise :class:`~dwi_mtl.errors.NonFiniteError`) or ``"skip"``.
        report_folder: folder of the ``nonfinite_batches.jsonl`` report.
    """

    def __init__(self, policy: str = "stop", report_folder: str | Path | None = None) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ConfigError(
                f"nonfinite policy must be one of {NONFINITE_POLICIES}, got {policy!r}"
            )
        self.policy = policy
        self.report_path = None if report_folder is None else Path(report_folder) / REPORT_FILE
        self.nb_skipped = 0

    def check(
        self,
        values: dict[str, float],
        what: str,
        epoch: int,
        batch_index: int,
        batch_ids: dict[str, Sequence[Any]] | None = None,
    ) -> bool:
        """Return True when every value is finite; otherwise record, then raise or skip.

        Args:
            values: named scalars to check (total and per-task loss, or gradient norm).
            what: ``"loss"`` or ``"gradient"``, for the message.
            epoch: current epoch.
            batch_index: index of the batch in its epoch.
            batch_ids: identifiers of the batch's streamlines (``subject_indices``,
                ``streamline_ids``) for the report.

        Raises:
            NonFiniteError: with policy ``"stop"``, naming epoch, batch, values and the report.
        """
        if all(map(math.isfinite, values.values())):  # every step: the cheap common case
            return True
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        record: dict[str, Any] = {
            "what": what,
            "epoch": epoch,
            "batch_index": batch_index,
            "values": {k: repr(v) for k, v in bad.items()},
            **{k: _plain_ids(v) for k, v in (batch_ids or {}).items()},
        }
        self._write(record)
        ids: list[Any] = record.get("streamline_ids", [])
        message = (
            f"non-finite {what} {record['values']} at epoch {epoch}, batch {batch_index} "
            f"(streamline ids {ids[:20]}{' ...' if len(ids) > 20 else ''}; full list in "
            f"{self.report_path})"
        )
        if self.policy == "stop":
            raise NonFiniteError(message)
        self.nb_skipped += 1
        logger.warning("skipping batch: %s", message)
        return False

    def _write(self, record: dict[str, Any]) -> None:
        if self.report_path is None:
            return
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.report_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def state_dict(self) -> dict[str, Any]:
        """The number of skipped batches."""
        return {"nb_skipped": self.nb_skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the number of skipped batches."""
        self.nb_skipped = int(state["nb_skipped"])
