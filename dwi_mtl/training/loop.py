"""The training engine: epochs, batches, checkpoints, best model, patience, logs, exact resume.

:class:`TrainingEngine` owns *when* things happen; it does not know what a batch is or how a
step is computed. Subclasses (``AbstractTrainer``, the functional ``train_model``) provide:

- the batch sources (:mod:`dwi_mtl.training.batch_sources`) of the training and validation
  phases;
- :meth:`TrainingEngine.train_step` / :meth:`TrainingEngine.validation_step`, each returning
  a dict of float metrics that contains ``"loss"``;
- :meth:`TrainingEngine.stateful_objects`: the model, optimizer, schedule, weighting, ... whose
  ``state_dict()`` go into every checkpoint.

Exact resume. A checkpoint holds the progress (epoch, phase, batches consumed in the phase,
the phase's running sums), every state dict, the log histories and the RNG states. On
resume, the batch source of the interrupted phase is positioned at the consumed count
(skipped batches are never drawn) and only *then* the global RNGs are restored, so the
remaining batches see the same model-side random stream as the uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dwi_mtl.errors import CheckpointError, ConfigError
from dwi_mtl.logging.npy_history import NpyHistory
from dwi_mtl.logging.progress import ProgressReporter
from dwi_mtl.logging.sinks import LogDispatcher, LogSink
from dwi_mtl.state import capture_rng_state, restore_rng_state
from dwi_mtl.training.batch_sources import BatchSource
from dwi_mtl.training.checkpoint import CheckpointManager
from dwi_mtl.training.distributed import DistributedContext
from dwi_mtl.training.experiment import ExperimentFolder
from dwi_mtl.training.monitors import BestEpochMonitor
from dwi_mtl.training.nonfinite import NonFiniteGuard
from dwi_mtl.training.run_progress import TRAINING, VALIDATION, RunProgress
from dwi_mtl.training.signals import CheckpointedOnSignal, SignalCatcher

logger = logging.getLogger(__name__)

class TrainingEngine:
    """Run epochs of training and validation with checkpoints and exact resume.

    The loop, once (see :meth:`train_and_validate`)::

        for epoch in range(start_epoch, max_epochs):
            start_epoch(epoch)                      # lr of this epoch, on_epoch_start hook
            for batch in training batches:          # resumed mid-epoch at the consumed count
                metrics = train_step(batch)         # forward, loss, backward, clip, step
                log the batch; checkpoint if every_n_batches / every_minutes / on a signal
            for batch in validation batches:
                metrics = validation_step(batch)    # same loss under no_grad
            monitor the validation loss (training loss without validation set)
            if best: replace best_model/ atomically
            end_epoch(epoch); write .npy logs; checkpoint; stop on patience

    Args:
        experiment: the experiment folder.
        train_source: batch source of the training phase.
        valid_source: batch source of the validation phase, or None.
        model: the module saved in ``best_model/`` (may be None).
        max_epochs: number of epochs to run.
        max_batches_per_epoch_training: cap on training batches per epoch (None: all).
        max_batches_per_epoch_validation: cap on validation batches per epoch (None: all).
        patience: stop after this many epochs without improvement (None: never).
        patience_delta: minimum improvement.
        checkpoint_every_n_batches: also checkpoint every N training batches (None: only at
            epoch ends).
        checkpoint_every_minutes: also checkpoint when this much time passed since the last one.
        keep_last_checkpoints: complete checkpoints kept on disk.
        checkpoint_durability: ``"background"`` fsync, ``"sync"`` or ``"none"`` (see
            :class:`~dwi_mtl.training.checkpoint.CheckpointManager`).
        nonfinite: ``"stop"`` or ``"skip"`` for NaN/inf losses and gradients.
        sinks: extra log sinks (Comet, TensorBoard, ...) by name.
        progress: console progress reporter (None: a default one).
        handle_signals: checkpoint and stop on SIGTERM/SIGUSR1.
        device: device tensors of a checkpoint are mapped to on resume.

    Under torch.distributed (:mod:`dwi_mtl.training.distributed`) batch metrics and the
    signal/time flags are reduced across ranks at each batch; rank 0 alone writes files.
    """

    #: batch metric weighting the cross-rank means (the loss averages over points)
    metric_weight_key: str | None = "nb_points"

    def __init__(
        self,
        experiment: ExperimentFolder,
        train_source: BatchSource,
        valid_source: BatchSource | None = None,
        model: torch.nn.Module | None = None,
        max_epochs: int = 10,
        max_batches_per_epoch_training: int | None = None,
        max_batches_per_epoch_validation: int | None = None,
        patience: int | None = None,
        patience_delta: float = 1e-6,
        checkpoint_every_n_batches: int | None = None,
        checkpoint_every_minutes: float | None = None,
        keep_last_checkpoints: int = 2,
        checkpoint_durability: str = "background",
        nonfinite: str = "stop",
        sinks: dict[str, LogSink] | None = None,
        progress: ProgressReporter | None = None,
        handle_signals: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        self.experiment = experiment
        self.sources: dict[str, BatchSource | None] = {
            TRAINING: train_source,
            VALIDATION: valid_source,
        }
        self.model = model
        self.max_epochs = int(max_epochs)
        if self.max_epochs < 0:
            raise ConfigError(f"max_epochs must be >= 0, got {max_epochs}")
        self.max_batches = {
            TRAINING: max_batches_per_epoch_training,
            VALIDATION: max_batches_per_epoch_validation,
        }
        self.checkpoint_every_n_batches = checkpoint_every_n_batches
        self.checkpoint_every_minutes = checkpoint_every_minutes
        self.monitor = BestEpochMonitor(patience, patience_delta)
        self.distributed = DistributedContext.for_engine(self)
        self.nonfinite = NonFiniteGuard(nonfinite, experiment.path if self.is_main else None)
        self.history = NpyHistory(experiment.logs)
        self.sinks = LogDispatcher(sinks)
        self.progress_reporter = progress if progress is not None else ProgressReporter()
        self.checkpoints = CheckpointManager(
            experiment.checkpoint, keep_last_checkpoints, checkpoint_durability
        )
        self.handle_signals = handle_signals
        self.device = parse_device(device)
        self.progress = RunProgress()
        self._pending_rng: dict[str, Any] | None = None
        self._signals: SignalCatcher | None = None
        self._last_checkpoint_time = time.monotonic()
        self._agreed = (0, False)  # (signal, time checkpoint due) agreed by all ranks

    @property
    def is_main(self) -> bool:
        """Whether this process writes the files (rank 0 or the only process)."""
        return self.distributed is None or self.distributed.is_main

    # ------------------------------------------------------------------ extension points
    def train_step(self, batch: Any, epoch: int, batch_index: int) -> dict[str, float]:
        """Run one training step on ``batch``; return float metrics including ``"loss"``."""
        raise NotImplementedError

    def validation_step(self, batch: Any, epoch: int, batch_index: int) -> dict[str, float]:
        """Evaluate one validation batch; return float metrics including ``"loss"``."""
        raise NotImplementedError

    def stateful_objects(self) -> dict[str, Any]:
        """Objects with ``state_dict()`` saved in every checkpoint, by name (override to add)."""
        return {} if self.model is None else {"model": self.model}

    def finish_training_phase(self, epoch: int) -> None:
        """Called after the last training batch of an epoch (flush accumulated gradients)."""

    def start_epoch(self, epoch: int) -> None:
        """Prepare ``epoch`` (learning rate, ...); called before its first training batch."""
        self.on_epoch_start(epoch)

    def end_epoch(self, epoch: int, summary: dict[str, float]) -> None:
        """Finish ``epoch`` (scheduler step, ...); ``summary`` holds ``<phase>_<metric>``
        means and may be extended here. Call :meth:`request_stop` to stop after it."""
        self.on_epoch_end(epoch, summary)

    def monitored_value(self, summary: dict[str, float]) -> float:
        """The value the best-epoch monitor minimizes: the validation loss, or the training
        loss when there is no validation set (NaN when every batch was non-finite)."""
        phase = TRAINING if self.sources[VALIDATION] is None else VALIDATION
        return summary.get(f"{phase}_loss", math.nan)

    def batch_ids(self, batch: Any) -> dict[str, Any]:
        """Identifiers of a batch's samples for non-finite reports (streamline ids, ...)."""
        ids = {}
        for name in ("subject_indices", "streamline_ids"):
            if hasattr(batch, name):
                ids[name] = getattr(batch, name)
        return ids

    def parameters(self) -> dict[str, Any]:
        """Hyper-parameters logged to Comet/TensorBoard at the start of a fresh run."""
        return {"max_epochs": self.max_epochs}

    # Hooks: no-ops for users to override.
    def on_epoch_start(self, epoch: int) -> None:
        """Hook: an epoch starts."""

    def on_epoch_end(self, epoch: int, summary: dict[str, float]) -> None:
        """Hook: an epoch ended, with its summary."""

    def on_batch_start(self, phase: str, epoch: int, batch_index: int) -> None:
        """Hook: a batch of ``phase`` starts."""

    def on_batch_end(
        self, phase: str, epoch: int, batch_index: int, metrics: dict[str, float]
    ) -> None:
        """Hook: a batch of ``phase`` ended with its metrics."""

    def on_validation_start(self, epoch: int) -> None:
        """Hook: the validation phase of ``epoch`` starts (also when resumed within it)."""

    def on_validation_end(self, epoch: int, summary: dict[str, float]) -> None:
        """Hook: the validation phase of ``epoch`` ended."""

    # ------------------------------------------------------------------ public API
    @property
    def epoch(self) -> int:
        """The current (or next, between epochs) epoch."""
        return int(self.progress.epoch)

    def request_stop(self, reason: str) -> None:
        """Stop after the current epoch (early stopping policies call this)."""
        self.progress.stopped = reason

    def train_and_validate(self) -> NpyHistory:
        """Train until ``max_epochs``, patience or a stop request; resume state if loaded.

        Raises:
            CheckpointedOnSignal: after writing a checkpoint on SIGTERM/SIGUSR1.
            NonFiniteError: on a NaN/inf loss or gradient with policy ``"stop"``.
        """
        if self.progress.nb_checkpoints == 0:  # fresh run: log parameters, save the start
            self.sinks.log_parameters(self.parameters())
            self.save_checkpoint()
        catcher = SignalCatcher() if self.handle_signals else SignalCatcher(signals=())
        try:
            with catcher as self._signals:
                while not self.should_stop():
                    self._run_epoch(self.epoch)
        finally:
            self.checkpoints.wait()
            self.progress_reporter.close()
            self.sinks.close()
            for source in self.sources.values():
                if source is not None:
                    source.close()
            self._signals = None
        logger.info("training stopped: %s", self.stop_reason())
        return self.history

    def stop_reason(self) -> str:
        """Why training would stop now ("" when it would continue)."""
        if self.progress.stopped:
            return self.progress.stopped
        if self.monitor.is_patience_reached:
            return f"patience reached ({self.monitor.nb_bad_epochs} epochs without improvement)"
        if self.epoch >= self.max_epochs:
            return f"max_epochs ({self.max_epochs}) reached"
        return ""

    def should_stop(self) -> bool:
        """Whether training is over (max_epochs, patience or a stop request)."""
        return bool(self.stop_reason())

    # ------------------------------------------------------------------ epochs and phases
    def _run_epoch(self, epoch: int) -> None:
        progress = self.progress
        if progress.phase == TRAINING:
            self._run_phase(TRAINING, epoch, self.start_epoch)
            self.finish_training_phase(epoch)
            progress.training_summary = progress.summary()
            progress.start_phase(VALIDATION)
        if self.sources[VALIDATION] is not None:
            self._run_phase(VALIDATION, epoch, self.on_validation_start)
            self.on_validation_end(epoch, progress.summary())
        self._end_epoch(epoch)

    def _run_phase(self, phase: str, epoch: int, on_start: Callable[[int], None]) -> None:
        """Run (the rest of) one phase; ``on_start`` runs when it starts from its first batch,
        after the data is positioned and any resumed RNG state restored."""
        source = self.sources[phase]
        assert source is not None
        progress = self.progress
        step = self.train_step if phase == TRAINING else self.validation_step
        limit = self.max_batches[phase]
        iterator = source.begin(epoch, progress.batch)
        total = source.nb_batches
        if limit is not None:
            total = limit if total is None else min(total, limit)
        if self._pending_rng is not None:  # resume: RNG restored after positioning the data
            restore_rng_state(self._pending_rng)
            self._pending_rng = None
        if progress.batch == 0:
            on_start(epoch)
        self.progress_reporter.start_phase(phase, epoch, total or 0, progress.batch)
        for batch, wait_time in _timed(iterator, limit, progress.batch):
            self.on_batch_start(phase, epoch, progress.batch)
            start = time.perf_counter()
            metrics = step(batch, epoch, progress.batch)
            metrics["batch_time"] = time.perf_counter() - start
            metrics["data_wait_time"] = wait_time
            if self.distributed is not None:  # one collective: global metrics, agreed flags
                metrics, agreed = self.distributed.reduce_batch(metrics, self.metric_weight_key, [
                    float(self._signal_received(local=True)), float(self._time_checkpoint_due())])
                self._agreed = (int(agreed[0]), bool(agreed[1]))
            self._record_batch(phase, epoch, metrics)
            if self._should_checkpoint(phase):
                self._checkpoint_mid_phase()
        self.progress_reporter.end_phase(progress.summary())

    def _record_batch(self, phase: str, epoch: int, metrics: dict[str, float]) -> None:
        progress = self.progress
        self.on_batch_end(phase, epoch, progress.batch, metrics)
        progress.accumulate(metrics)
        self.history.append_batch(phase, metrics)
        self.sinks.log_batch(phase, progress.steps[phase], metrics)
        self.progress_reporter.update(metrics.get("loss", math.nan))
        progress.batch += 1
        progress.steps[phase] += 1

    def _end_epoch(self, epoch: int) -> None:
        progress = self.progress
        summary = {f"{TRAINING}_{k}": v for k, v in progress.training_summary.items()}
        if self.sources[VALIDATION] is not None:
            summary.update({f"{VALIDATION}_{k}": v for k, v in progress.summary().items()})
        summary["nb_skipped_batches"] = float(self.nonfinite.nb_skipped)
        self.end_epoch(epoch, summary)
        if self.monitor.update(epoch, self.monitored_value(summary)):
            self._save_best_model(epoch, summary)
        best = self.monitor.best_epoch
        summary["best_epoch"] = float(-1 if best is None else best)
        self._append_epoch_history(summary)
        self.sinks.log_epoch(epoch, summary)
        progress.epoch = epoch + 1
        progress.start_phase(TRAINING)
        progress.training_summary = {}
        path = self.save_checkpoint()
        if self._signal_received() and not self.should_stop():
            raise CheckpointedOnSignal(self._signal_received(), str(path))

    def _append_epoch_history(self, summary: dict[str, float]) -> None:
        for phase in (TRAINING, VALIDATION):
            prefix = f"{phase}_"
            values = {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}
            if values:
                self.history.append_epoch(phase, values)
        self.history.append_epoch(
            "run", {k: v for k, v in summary.items() if not k.startswith((TRAINING, VALIDATION))}
        )

    # ------------------------------------------------------------------ checkpoints
    def _signal_received(self, local: bool = False) -> int:
        """The termination signal received during training (0 when none); distributed: the
        one agreed by all ranks at the last batch boundary."""
        if self.distributed is not None and not local:
            return self._agreed[0]
        return 0 if self._signals is None else int(self._signals.received or 0)

    def _time_checkpoint_due(self) -> bool:
        minutes = self.checkpoint_every_minutes or 0.0
        return minutes > 0 and time.monotonic() - self._last_checkpoint_time >= 60 * minutes

    def _should_checkpoint(self, phase: str) -> bool:
        if self._signal_received():
            return True
        every = self.checkpoint_every_n_batches
        if phase == TRAINING and every and self.progress.steps[TRAINING] % every == 0:
            return True
        return self._agreed[1] if self.distributed is not None else self._time_checkpoint_due()

    def _checkpoint_mid_phase(self) -> None:
        signum = self._signal_received()
        path = self.save_checkpoint(write_logs=bool(signum))
        if signum:
            raise CheckpointedOnSignal(signum, str(path))

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see the module docstring)."""
        return {
            "progress": self.progress.state_dict(),
            "objects": {name: obj.state_dict() for name, obj in self.stateful_objects().items()},
            "sources": {
                phase: source.state_dict()
                for phase, source in self.sources.items()
                if source is not None
            },
            "monitor": self.monitor.state_dict(),
            "nonfinite": self.nonfinite.state_dict(),
            "history": self.history.state_dict(),
            "sinks": self.sinks.state_dict(),
            "rng": capture_rng_state(),
        }

    def save_checkpoint(self, write_logs: bool = True) -> Path:
        """Write a complete checkpoint now (and the ``.npy`` logs unless ``write_logs`` is
        False: mid-epoch checkpoints leave them to the epoch end, since the checkpoint holds
        the histories and a resume rewrites the files from it); return its folder."""
        self.progress.nb_checkpoints += 1
        if self.is_main:
            if write_logs:
                self.history.save()
            self.sinks.flush()
            path = self.checkpoints.save(self.checkpoint_state(), self.progress.nb_checkpoints)
        else:  # other ranks hold the same state; rank 0 writes it
            path = self.experiment.checkpoint
        if self.distributed is not None:  # written before any rank goes on (or exits)
            self.distributed.barrier()
        self._last_checkpoint_time = time.monotonic()
        logger.debug("checkpoint written to %s", path)
        return path

    def load_checkpoint(self) -> bool:
        """Restore the latest complete checkpoint of the experiment, if there is one.

        Returns:
            True when a checkpoint was loaded (the next :meth:`train_and_validate` resumes it).

        Raises:
            CheckpointError: when checkpoints exist but none can be loaded, or a saved object
                is missing from :meth:`stateful_objects`.
        """
        from dwi_mtl.training.checkpoint import recover_replaced_folder

        if self.is_main:  # a kill mid-swap: put it back
            recover_replaced_folder(self.experiment.best_model)
        if not self.checkpoints.exists():
            return False
        state, info = self.checkpoints.load_latest(map_location=self.device)
        objects = self.stateful_objects()
        missing = set(state["objects"]) - set(objects)
        if missing:
            raise CheckpointError(
                f"checkpoint '{info.path}' has states for unknown objects {sorted(missing)}"
            )
        for name, obj in objects.items():
            if name in state["objects"]:
                try:
                    obj.load_state_dict(state["objects"][name])
                except (RuntimeError, KeyError, ValueError, TypeError) as exc:
                    raise CheckpointError(
                        f"checkpoint '{info.path}' does not fit this run's '{name}' (a "
                        f"checkpoint of another run?): {str(exc).splitlines()[0]}"
                    ) from exc
        for phase, source in self.sources.items():
            if source is not None and phase in state["sources"]:
                source.load_state_dict(state["sources"][phase])
        self.progress.load_state_dict(state["progress"])
        self.monitor.load_state_dict(state["monitor"])
        self.nonfinite.load_state_dict(state["nonfinite"])
        self.history.load_state_dict(state["history"])
        if self.is_main:
            self.history.save()
        self.sinks.load_state_dict(state["sinks"])
        self._pending_rng = state["rng"]
        logger.info(
            "resuming from %s: epoch %d, %s batch %d", info.path, self.epoch,
            self.progress.phase, self.progress.batch,
        )
        return True

    # ------------------------------------------------------------------ best model
    def best_model_state(self) -> dict[str, Any]:
        """What ``best_model/`` stores (the model's state dict by default)."""
        return {"model": None if self.model is None else self.model.state_dict()}

    def _save_best_model(self, epoch: int, summary: dict[str, float]) -> None:
        import json

        from dwi_mtl.training.checkpoint import replace_folder_atomically

        if not self.is_main:
            return
        losses = {"epoch": epoch, **{k: v for k, v in summary.items() if "loss" in k}}
        replace_folder_atomically(
            self.experiment.best_model,
            {"epoch": epoch, **self.best_model_state()},
            {"best_epoch_losses.json": json.dumps(losses, indent=2)},
        )


def parse_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with a :class:`ConfigError` naming a bad device string."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") \
            from exc


def _timed(iterator: Iterator[Any], limit: int | None, done: int) -> Iterator[tuple[Any, float]]:
    """Yield ``(batch, seconds waited for it)`` until ``limit`` batches of the epoch are done."""
    count = done
    while limit is None or count < limit:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        count += 1
        yield batch, time.perf_counter() - start
