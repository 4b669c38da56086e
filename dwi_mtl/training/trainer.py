"""AbstractTrainer: the dwi_ml-style trainer on BatchSampler + BatchLoader, with exact resume.

Subclass it and implement :meth:`AbstractTrainer.compute_batch_loss`; everything else
(epochs, optimizer, checkpoints, best model, logs, resume) is here or in the engine
(:mod:`dwi_mtl.training.loop`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.logging.progress import ProgressReporter
from dwi_mtl.logging.sinks import build_sinks, flatten_parameters
from dwi_mtl.state import class_path
from dwi_mtl.training.batch_sources import SamplerLoaderSource
from dwi_mtl.training.distributed import DistributedContext
from dwi_mtl.training.experiment import ExperimentFolder, describe
from dwi_mtl.training.loop import TrainingEngine, parse_device
from dwi_mtl.training.lr_schedule import LearningRateSchedule, parse_learning_rates
from dwi_mtl.training.optim import build_optimizer
from dwi_mtl.training.optimization import GradientStepper, split_losses

logger = logging.getLogger(__name__)


class AbstractTrainer(TrainingEngine):
    """Train a model on batches of streamlines, validate, checkpoint, resume exactly.

    Runs data-parallel under torch.distributed (``torchrun``; see ``docs/distributed.md``).

    ``train_and_validate()`` runs::

        for epoch in range(start_epoch, max_epochs):
            set the learning rate of the epoch
            train_one_epoch:    for batch in sampler's training batches (DataLoader, workers):
                                    loss = compute_batch_loss(batch)       # your model
                                    backward (MTL weighting, EW for a dict), clip, step
                                    log; checkpoint every N batches / M minutes / on SIGTERM
            validate_one_epoch: the same loss under no_grad, no backward
            if this is the best epoch (validation loss, else training loss): save best_model/
            write .npy logs, save checkpoint/, stop when patience is reached

    Subclasses implement :meth:`compute_batch_loss`; :meth:`compute_validation_loss` reuses it
    by default. Interrupted anywhere (exception, SIGKILL, during validation), a run rebuilt
    with :meth:`init_from_checkpoint` continues from its last checkpoint and ends with the
    same weights, optimizer state and ``.npy`` logs as an uninterrupted run (bit for bit on
    CPU; timing logs excepted).

    Args:
        model: the torch module (built; give it ``get_config()`` so it can be rebuilt).
        experiments_path: parent folder of experiments (must exist).
        experiment_name: the run's folder; refused when it exists (unless resuming).
        batch_sampler: a :class:`~dwi_mtl.training.BatchSampler` (its ``dataset`` is used).
        batch_loader: a :class:`~dwi_mtl.training.BatchLoader`.
        learning_rates: float, per-epoch list, or its CLI string ``"0.001*3 0.0001"``.
        lr_scheduler: a torch LR scheduler class, its name in ``torch.optim.lr_scheduler`` or
            its ``module.Class`` path (stepped once per epoch), or None.
        lr_scheduler_kwargs: its keyword arguments.
        weight_decay: optimizer weight decay.
        optimizer: torch.optim name (Adam, AdamW, SGD, RAdam, ...) or ``module.Class``.
        optimizer_kwargs: extra optimizer arguments (momentum, betas, ...).
        clip_grad: gradient norm clipping (None: off); the norm before/after is logged.
        gradient_accumulation_steps: batches per optimizer step.
        weighting: MTL weighting name for dict losses (None: equal weights).
        weighting_kwargs: its arguments.
        task_names: the task names of a dict loss (needed by a named weighting).
        use_amp: mixed precision (CUDA only; ignored with a warning on CPU).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; None picks CUDA when available.
        num_workers: DataLoader worker processes.
        from_checkpoint: internal; True when rebuilt by :meth:`init_from_checkpoint`.
        comet_mode: ``"online"``, ``"offline"`` or ``"disabled"``.
        comet_workspace: Comet workspace.
        comet_project: Comet project.
        tensorboard: write TensorBoard events to ``<experiment>/tensorboard``.
        progress_bar: True: tqdm bar; False: log lines; None: bar on a terminal.
        log_every_n_batches: period of batch points for Comet/TensorBoard and log lines.
        **engine_kwargs: the engine's options (``max_epochs``, ``patience``,
            ``patience_delta``, ``max_batches_per_epoch_training/validation``,
            ``checkpoint_every_n_batches``, ``checkpoint_every_minutes``,
            ``keep_last_checkpoints``, ``nonfinite``, ``handle_signals``); see
            :class:`~dwi_mtl.training.loop.TrainingEngine`.
    """

    #: gradients are averaged over ranks by the GradientStepper (docs/distributed.md)
    supports_distributed = True

    def __init__(
        self,
        model: torch.nn.Module,
        experiments_path: str | Path,
        experiment_name: str,
        batch_sampler: Any,
        batch_loader: Any,
        learning_rates: float | str | Sequence[float | str] = 1e-3,
        lr_scheduler: str | type | None = None,
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        weight_decay: float = 0.01,
        optimizer: str = "Adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        clip_grad: float | None = None,
        gradient_accumulation_steps: int = 1,
        weighting: str | None = None,
        weighting_kwargs: dict[str, Any] | None = None,
        task_names: Sequence[str] | None = None,
        use_amp: bool = False,
        device: str | None = None,
        num_workers: int = 0,
        from_checkpoint: bool = False,
        comet_mode: str = "disabled",
        comet_workspace: str | None = None,
        comet_project: str | None = None,
        tensorboard: bool = False,
        progress_bar: bool | None = None,
        log_every_n_batches: int = 50,
        **engine_kwargs: Any,
    ) -> None:
        experiment = ExperimentFolder(experiments_path, experiment_name)
        ctx = DistributedContext.current()
        device_ = _pick_device(device, ctx)
        _check_sharding(batch_sampler, ctx)
        self._config: dict[str, Any] = {
            "learning_rates": parse_learning_rates(learning_rates),
            "lr_scheduler": class_path(lr_scheduler) if isinstance(lr_scheduler, type)
            else lr_scheduler, "lr_scheduler_kwargs": dict(lr_scheduler_kwargs or {}),
            "weight_decay": weight_decay, "optimizer": optimizer,
            "optimizer_kwargs": dict(optimizer_kwargs or {}), "clip_grad": clip_grad,
            "gradient_accumulation_steps": gradient_accumulation_steps, "weighting": weighting,
            "weighting_kwargs": dict(weighting_kwargs or {}),
            "task_names": None if task_names is None else list(task_names),
            "use_amp": use_amp, "device": device, "num_workers": num_workers,
            "comet_mode": comet_mode, "comet_workspace": comet_workspace,
            "comet_project": comet_project, "tensorboard": tensorboard,
            "progress_bar": progress_bar, "log_every_n_batches": log_every_n_batches,
            **engine_kwargs,
        }
        self.batch_sampler, self.batch_loader = batch_sampler, batch_loader
        model.to(device_)
        if ctx is not None:
            ctx.broadcast_module_(model)  # every rank starts from rank 0's weights
        sources = self._build_sources(batch_sampler, batch_loader, num_workers, device_)
        main = ctx is None or ctx.is_main
        sinks = build_sinks(experiment, comet_mode if main else "disabled", comet_workspace,
                             comet_project, tensorboard and main, log_every_n_batches)
        progress = ProgressReporter(use_tqdm=progress_bar and main,
                                    log_every_n_batches=log_every_n_batches)
        super().__init__(experiment, sources[0], sources[1], model=model, sinks=sinks,
                         progress=progress, device=device_, **engine_kwargs)
        self.model: torch.nn.Module = model
        self.weighting = _build_weighting(weighting, weighting_kwargs, task_names)
        params = list(model.parameters())
        extra = list(self.weighting.parameters()) if hasattr(self.weighting, "parameters") else []
        self.optimizer = build_optimizer(optimizer, params + extra, lr=self._config[
            "learning_rates"][0], weight_decay=weight_decay, **(optimizer_kwargs or {}))
        self.lr_schedule = LearningRateSchedule(
            self.optimizer, self._config["learning_rates"],
            _scheduler_factory(lr_scheduler, lr_scheduler_kwargs),
        )
        self.scaler = _build_scaler(use_amp, device_)
        get_shared = getattr(model, "get_share_params", None)
        shared = list(get_shared()) if callable(get_shared) else params
        self.stepper = GradientStepper(self.optimizer, params, shared, clip_grad,
                                       gradient_accumulation_steps, self.weighting, self.scaler,
                                       model=model, distributed=ctx, notify_step_end=True)
        if not from_checkpoint and self.is_main:
            self._create_experiment_folder()

    # ------------------------------------------------------------------ to implement
    def compute_batch_loss(self, batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """Return the batch's scalar loss, or a dict of per-task scalar losses."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_batch_loss")

    def compute_validation_loss(self, batch: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The validation loss (run under no_grad in eval mode); defaults to the training one."""
        return self.compute_batch_loss(batch)

    def prepare_batch(self, batch: Any) -> Any:
        """Move a loaded batch to the device (the loader interpolates there when configured)."""
        if hasattr(self.batch_loader, "to_device"):
            return self.batch_loader.to_device(batch, self.device)
        return batch.to(self.device) if hasattr(batch, "to") else batch

    # ------------------------------------------------------------------ engine steps
    def train_step(self, batch: Any, epoch: int, batch_index: int) -> dict[str, float]:
        """compute_batch_loss -> weighting/backward -> (every N batches) clip -> step."""
        if not self.model.training:
            self.model.train()
        self.stepper.release_gradients()  # before the forward, as zero_grad in a plain loop
        batch = self.prepare_batch(batch)
        with self._autocast():
            total, tasks = split_losses(self.compute_batch_loss(batch))
        metrics = _loss_metrics(total, tasks)
        ids = self.batch_ids(batch)
        # Distributed: every rank must join the step's collectives; a non-finite loss makes
        # the averaged gradient non-finite on all ranks, which the gradient check then catches.
        if self.distributed is None and not self.nonfinite.check(
            metrics, "loss", epoch, batch_index, ids
        ):
            self.stepper.discard()
            return metrics
        weights = self.stepper.backward(total, tasks)
        if self.stepper.step_due:
            metrics.update(self._optimizer_step(epoch, batch_index, ids))
        # read after the step's gradient-norm sync: no extra host synchronisation
        metrics.update({f"weight_{name}": float(value) for name, value in weights.items()})
        metrics.update(_batch_size_metrics(batch))
        metrics["lr"] = self.lr_schedule.current
        return metrics

    def _optimizer_step(
        self, epoch: int, batch_index: int, ids: dict[str, Any]
    ) -> dict[str, float]:
        before, after = self.stepper.grad_norm()
        norms = {"grad_norm_before_clip": before, "grad_norm_after_clip": after}
        if self.scaler is None and not self.nonfinite.check(
            {"grad_norm": before}, "gradient", epoch, batch_index, ids
        ):
            self.stepper.discard()
            return norms
        self.stepper.step()
        return norms

    def validation_step(self, batch: Any, epoch: int, batch_index: int) -> dict[str, float]:
        """The validation loss of one batch, in eval mode, without gradients."""
        if self.model.training:
            self.model.eval()
        batch = self.prepare_batch(batch)
        with torch.no_grad(), self._autocast():
            total, tasks = split_losses(self.compute_validation_loss(batch))
        metrics = _loss_metrics(total, tasks)
        self.nonfinite.check(metrics, "validation loss", epoch, batch_index, self.batch_ids(batch))
        metrics.update(_batch_size_metrics(batch))
        return metrics

    def _autocast(self) -> Any:
        """Mixed precision on CUDA when ``use_amp``; a no-op context otherwise."""
        if self.scaler is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type)

    def finish_training_phase(self, epoch: int) -> None:
        """Apply a last optimizer step for gradients accumulated at the end of the epoch, then
        release the gradients (validation and the epoch end do not hold their memory)."""
        if self.stepper.nb_accumulated:
            self._optimizer_step(epoch, -1, {})
        self.stepper.release_gradients()

    def start_epoch(self, epoch: int) -> None:
        """Set the epoch's learning rate, then run the ``on_epoch_start`` hook."""
        self.lr_schedule.start_epoch(epoch)
        super().start_epoch(epoch)

    def end_epoch(self, epoch: int, summary: dict[str, float]) -> None:
        """Step the LR scheduler and the weighting's epoch hook, then ``on_epoch_end``."""
        summary["lr"] = self.lr_schedule.current
        self.lr_schedule.end_epoch()
        if hasattr(self.weighting, "on_epoch_end"):
            self.weighting.on_epoch_end(epoch)
        super().end_epoch(epoch, summary)

    def stateful_objects(self) -> dict[str, Any]:
        """Model, optimizer, lr schedule, gradient stepper, AMP scaler and weighting."""
        objects: dict[str, Any] = {
            "model": self.model, "optimizer": self.optimizer,
            "lr_schedule": self.lr_schedule, "stepper": self.stepper,
        }
        if self.scaler is not None:
            objects["scaler"] = self.scaler
        if hasattr(self.weighting, "state_dict"):
            objects["weighting"] = self.weighting
        return objects

    # ------------------------------------------------------------------ parameters
    def get_config(self) -> dict[str, Any]:
        """The trainer's JSON-able constructor arguments (without the built objects)."""
        return dict(self._config)

    def parameters(self) -> dict[str, Any]:
        """Flattened experiment parameters for Comet/TensorBoard."""
        return flatten_parameters(self.experiment_parameters())

    def experiment_parameters(self) -> dict[str, Any]:
        """What ``parameters.json`` records: class import paths and constructor arguments."""
        dataset = getattr(self.batch_sampler, "dataset", None)
        return {
            "dwi_mtl_version": _version(),
            "dataset": describe(dataset),
            "batch_sampler": describe(self.batch_sampler),
            "batch_loader": describe(self.batch_loader),
            "model": describe(self.model),
            "trainer": {"class": class_path(self), "config": self.get_config()},
        }

    def _create_experiment_folder(self) -> None:
        self.experiment.create_with_parameters(self.experiment_parameters())
        logger.info("experiment folder: %s", self.experiment.path)

    @classmethod
    def init_from_checkpoint(
        cls, experiments_path: str | Path, experiment_name: str, **overrides: Any
    ) -> AbstractTrainer:
        """Rebuild dataset, sampler, loader, model and trainer and restore the checkpoint.

        Args:
            experiments_path: parent folder of the experiment.
            experiment_name: the experiment's folder name.
            **overrides: ``hdf5_file`` (dataset moved), ``model`` (a built model when it has
                no ``get_config``), and trainer options (``max_epochs``, ``patience``, ...).
        """
        from dwi_mtl.training.rebuild import rebuild_trainer

        return rebuild_trainer(experiments_path, experiment_name, **overrides)

    def _build_sources(
        self, sampler: Any, loader: Any, num_workers: int, device: torch.device
    ) -> tuple[SamplerLoaderSource, SamplerLoaderSource | None]:
        train = SamplerLoaderSource(sampler, loader, "training", num_workers, device)
        dataset = getattr(sampler, "dataset", None)
        validation = getattr(dataset, "validation", None)
        has_validation = validation is not None and len(validation) > 0
        valid = SamplerLoaderSource(sampler, loader, "validation", num_workers, device) \
            if has_validation else None
        return train, valid


def _pick_device(device: str | None, ctx: DistributedContext | None) -> torch.device:
    """The run's device; under NCCL, ``None`` / ``"cuda"`` mean this rank's GPU."""
    if ctx is not None and ctx.device.type == "cuda" and device in (None, "cuda"):
        return ctx.device
    return parse_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _check_sharding(sampler: Any, ctx: DistributedContext | None) -> None:
    """Refuse a sampler whose shard does not match this process's rank and world size."""
    expected = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    found = (getattr(sampler, "rank", 0), getattr(sampler, "world_size", 1))
    if found != expected:
        raise ConfigError(
            f"batch_sampler has rank/world_size {found} but this process is rank "
            f"{expected[0]} of {expected[1]}; build it with rank=..., world_size=... "
            "(dwi_mtl.training.distributed.shard_config())"
        )


def _loss_metrics(total: torch.Tensor, tasks: dict[str, torch.Tensor]) -> dict[str, float]:
    metrics = {"loss": total.item()}
    metrics.update({f"loss_{name}": value.item() for name, value in tasks.items()})
    return metrics


def _batch_size_metrics(batch: Any) -> dict[str, float]:
    metrics = {}
    for name in ("nb_points", "nb_streamlines"):
        value = getattr(batch, name, None)
        if isinstance(value, int):
            metrics[name] = float(value)
    return metrics


def _build_weighting(name: str | None, kwargs: dict[str, Any] | None, tasks: Any) -> Any:
    if name is None:
        return None
    if not tasks:
        raise ConfigError(f"weighting {name!r} needs task_names (the keys of the loss dict)")
    import importlib

    registry = importlib.import_module("dwi_mtl.mtl.weighting")
    return registry.get_weighting(name, list(tasks), **(kwargs or {}))


def _scheduler_factory(path: str | type | None, kwargs: dict[str, Any] | None) -> Any:
    if path is None:
        return None
    if isinstance(path, type):
        return lambda optimizer: path(optimizer, **(kwargs or {}))
    from dwi_mtl.state import import_class

    name = path if "." in path else f"torch.optim.lr_scheduler.{path}"
    try:
        scheduler_class = import_class(name)
    except ImportError as exc:
        raise ConfigError(f"lr_scheduler {path!r}: {exc}") from exc
    return lambda optimizer: scheduler_class(optimizer, **(kwargs or {}))


def _build_scaler(use_amp: bool, device: torch.device) -> Any:
    if not use_amp:
        return None
    if device.type != "cuda":
        logger.warning("use_amp needs CUDA; training in full precision on %s", device)
        return None
    return torch.amp.GradScaler("cuda")


def _version() -> str:
    import dwi_mtl

    return str(dwi_mtl.__version__)
