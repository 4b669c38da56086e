"""``train_model``: the deep_pipe functional front door to the dwi_mtl training engine.

``train_model(model, batch_iter, n_epochs, lr, log_path, checkpoints_path, validate,
**kwargs)`` trains a :class:`~dwi_mtl.training.TorchModel` (or any object with
``do_train_step``) with the *same* engine as ``AbstractTrainer``
(:class:`~dwi_mtl.training.loop.TrainingEngine`): same atomic checkpoints, same exact resume
(mid-epoch included), same ``.npy`` histories, same TensorBoard sink, same SIGTERM/SIGUSR1
handling. This module only maps the deep_pipe vocabulary onto the engine's extension points:

- ``batch_iter`` -> the engine's training batch source (:func:`batch_iter.as_batch_source`);
- ``do_train_step(*batch, lr=..., **values)`` -> ``train_step``;
- policies -> ``start_epoch`` / ``finish_training_phase`` / ``end_epoch`` and the batch hooks;
- ``validate()`` -> metrics added to the epoch summary as ``validation_<name>``;
- ``checkpoints_path`` -> the experiment folder (``checkpoint/``, ``logs/*.npy``,
  ``best_model/``); ``log_path`` -> a TensorBoard sink.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dwi_mtl.errors import ConfigError
from dwi_mtl.logging.progress import ProgressReporter
from dwi_mtl.training.batch_iter import as_batch_source
from dwi_mtl.training.experiment import ExperimentFolder
from dwi_mtl.training.loop import TrainingEngine
from dwi_mtl.training.policies import EarlyStopping, Policy, PolicyGroup, ValuePolicy
from dwi_mtl.training.torch_model import TorchModel

logger = logging.getLogger(__name__)


def train_model(
    model: Any,
    batch_iter: Any,
    n_epochs: int,
    lr: float | ValuePolicy,
    log_path: str | Path | None = None,
    checkpoints_path: str | Path | None = None,
    validate: Callable[[], dict[str, Any]] | None = None,
    **kwargs: Any,
) -> None:
    """Train ``model`` for ``n_epochs`` epochs of ``batch_iter``, resuming from checkpoints.

    Args:
        model: a :class:`TorchModel` or any object with ``do_train_step(*inputs, lr, ...)``
            (and ``state_dict()`` / ``load_state_dict()`` when checkpointing).
        batch_iter: an :class:`~dwi_mtl.training.Infinite`, a callable returning one epoch of
            batches, or a ``(BatchSampler, BatchLoader)`` pair. A tuple batch is unpacked
            into ``do_train_step(*batch)``; anything else is passed as one argument.
        n_epochs: total number of epochs of the run (a resumed run counts the epochs done).
        lr: the learning rate, a number or a value policy.
        log_path: folder of TensorBoard logs (train loss per batch and per epoch, validation
            metrics, policy values); None disables them.
        checkpoints_path: experiment folder of the run. When it holds a checkpoint, training
            continues exactly where it stopped; a finished run returns at once.
        validate: called after each epoch; returns a dict of metrics, logged and handed to the
            policies' ``epoch_finished``.
        **kwargs: each is a constant value, a value policy (its ``.value`` goes to
            ``do_train_step`` under that keyword), or a plain :class:`Policy`.

    Raises:
        ConfigError: for a non-positive ``n_epochs``, a keyword that ``do_train_step`` does
            not accept (or a required one that is missing), a bad ``batch_iter`` or a
            ``validate`` that does not return a dict; raised before the first step.
        CheckpointError: when the checkpoint in ``checkpoints_path`` does not fit this call.
        CheckpointedOnSignal: after checkpointing on SIGTERM/SIGUSR1 (call again to resume).
    """
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, (int, np.integer)) or n_epochs < 1:
        raise ConfigError(f"train_model: n_epochs must be a positive integer, got {n_epochs!r}")
    constants, policies = split_values(lr, kwargs)
    check_train_step_keywords(model, set(constants) | set(policies.values().keys()))
    if checkpoints_path is not None and not hasattr(model, "state_dict"):
        raise ConfigError("train_model: checkpoints_path needs a model with state_dict()")
    source = as_batch_source(batch_iter)
    with contextlib.ExitStack() as stack:
        if checkpoints_path is None:  # the engine needs a folder; nothing is written there
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="dwi_mtl_"))
            experiment = ExperimentFolder(scratch, "run")
        else:
            root = Path(checkpoints_path).expanduser()
            root.mkdir(parents=True, exist_ok=True)
            experiment = ExperimentFolder(root.parent, root.name)
        sinks: dict[str, Any] = {}
        if log_path is not None:
            from dwi_mtl.logging.tensorboard import TensorBoardSink

            sinks["tensorboard"] = TensorBoardSink(Path(log_path).expanduser())
        engine = FunctionalEngine(
            experiment, source, model, int(n_epochs), constants, policies, validate,
            persist=checkpoints_path is not None, sinks=sinks,
        )
        engine.run()


def split_values(lr: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], PolicyGroup]:
    """Separate constants from policies; ``lr`` is one of them under the name ``"lr"``.

    Returns:
        ``(constants, policies)``: the constant keyword values, and every policy by name.
    """
    if lr is None:
        raise ConfigError("train_model: lr is required (a number or a value policy)")
    constants: dict[str, Any] = {}
    policies: dict[str, Policy] = {}
    for name, value in {"lr": lr, **kwargs}.items():
        if isinstance(value, Policy):
            policies[name] = value
        else:
            constants[name] = value
    return constants, PolicyGroup(policies)


def check_train_step_keywords(model: Any, names: set[str]) -> None:
    """Check that ``model.do_train_step`` accepts every value keyword and gets its required ones.

    Args:
        model: the model given to ``train_model``.
        names: keywords passed to each step (``lr``, constants and value policies; plain
            policies are not passed).

    Raises:
        ConfigError: naming the keyword and the method's signature.
    """
    step = getattr(model, "do_train_step", None)
    if not callable(step):
        raise ConfigError(
            f"train_model: model must have a do_train_step method, got {type(model).__name__}"
        )
    signature = inspect.signature(step)
    where = f"{type(model).__name__}.do_train_step{signature}"
    params = signature.parameters.values()
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = {p.name for p in params if p.kind in keyword_kinds}
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    for name in sorted(names):
        if name not in accepted and not var_keyword:
            raise ConfigError(
                f"train_model: keyword '{name}' is not a parameter of {where}; pass only the "
                "values do_train_step accepts"
            )
    if var_keyword and isinstance(model, TorchModel) and type(model).do_train_step is (
        TorchModel.do_train_step
    ):
        options = model.optimizer_options()
        for name in sorted(set(names) - accepted - options):
            raise ConfigError(
                f"train_model: keyword '{name}' is neither a parameter of {where} nor an "
                f"option of {type(model.optimizer).__name__} ({sorted(options)})"
            )
    for p in params:
        required = p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
        if required and p.name not in names:
            raise ConfigError(
                f"train_model: {where} requires the keyword '{p.name}' but train_model got no "
                f"value or value policy named '{p.name}'"
            )


class FunctionalEngine(TrainingEngine):
    """The training engine driven by a deep_pipe model, batch iterator, policies and validate.

    Args:
        experiment: the experiment folder (a scratch folder when not persisting).
        source: the training batch source.
        model: the object with ``do_train_step``.
        n_epochs: ``max_epochs`` of the engine.
        constants: constant keyword values of ``do_train_step``.
        policies: every policy by keyword name.
        validate: the validation callable or None.
        persist: write checkpoints, ``.npy`` logs and ``best_model/`` (``checkpoints_path``
            was given); otherwise nothing is written but the sinks' logs.
        sinks: log sinks by name (TensorBoard).
    """

    def __init__(
        self,
        experiment: ExperimentFolder,
        source: Any,
        model: Any,
        n_epochs: int,
        constants: dict[str, Any],
        policies: PolicyGroup,
        validate: Callable[[], dict[str, Any]] | None,
        persist: bool,
        sinks: dict[str, Any],
    ) -> None:
        self.torch_model = model
        self.policies = policies
        self.constants = constants
        self.validate = validate
        self.persist = persist
        self.epoch_losses = _EpochLosses()
        architecture = getattr(model, "architecture", None) if persist else None
        super().__init__(
            experiment,
            _PolicyHookedSource(source, self),
            None,
            model=architecture,
            max_epochs=n_epochs,
            sinks=sinks,
            progress=ProgressReporter(enabled=False),
            handle_signals=persist,
            device=getattr(model, "device", "cpu"),
        )

    def run(self) -> None:
        """Resume if a checkpoint exists, train, and close the policies whatever happens."""
        if self.persist:
            self.experiment.path.mkdir(parents=True, exist_ok=True)
            if not self.load_checkpoint():
                # The starting point, so that a call interrupted in its first epoch can be
                # resumed with the same (already modified) model and batch_iter objects.
                self.save_checkpoint()
            elif self.should_stop():
                logger.info("train_model: the run in %s is already finished", self.experiment.path)
                return
        try:
            self.train_and_validate()
        except EarlyStopping:  # raised by epoch_started: stop before the epoch's first batch
            self.request_stop("EarlyStopping raised by a policy")
            self.save_checkpoint()
            wait = getattr(self.checkpoints, "wait", None)  # background fsync, when enabled
            if wait is not None:
                wait()
        finally:
            self.policies.close()

    # ---------------------------------------------------------------- engine extension points
    def stateful_objects(self) -> dict[str, Any]:
        """The model (with its optimizer), the policies and the current epoch's losses."""
        objects: dict[str, Any] = {"policies": self.policies, "epoch_losses": self.epoch_losses}
        if hasattr(self.torch_model, "state_dict"):
            objects["model"] = self.torch_model
        return objects

    def start_epoch(self, epoch: int) -> None:
        """Reset the epoch's losses and tell the policies (value policies update here)."""
        self.epoch_losses.losses = []
        self.policies.epoch_started(epoch)
        super().start_epoch(epoch)

    def train_step(self, batch: Any, epoch: int, batch_index: int) -> dict[str, float]:
        """``do_train_step(*batch, lr=..., **values)``; the policies see the returned loss."""
        inputs = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        loss = self.torch_model.do_train_step(
            *inputs, **self.constants, **self.policies.values()
        )
        self.epoch_losses.losses.append(loss)
        mean_loss = loss if isinstance(loss, float) else float(np.mean(loss))
        if not math.isfinite(mean_loss):
            self.nonfinite.check(
                {"loss": mean_loss}, "loss", epoch, batch_index, self.batch_ids(batch)
            )
        try:
            self.policies.train_step_finished(epoch, batch_index, loss)
        except EarlyStopping:
            self.request_stop(f"EarlyStopping raised by a policy after batch {batch_index}")
        return {"loss": mean_loss}

    def finish_training_phase(self, epoch: int) -> None:
        """Tell the policies that validation starts."""
        try:
            self.policies.validation_started(epoch, list(self.epoch_losses.losses))
        except EarlyStopping:
            self.request_stop("EarlyStopping raised by a policy at validation_started")

    def end_epoch(self, epoch: int, summary: dict[str, float]) -> None:
        """Run ``validate()``, hand its metrics to the policies, add both to the summary."""
        metrics = self._run_validate()
        for name, value in (metrics or {}).items():
            if _is_number(value):
                summary[f"validation_{name}"] = float(value)
        try:
            self.policies.epoch_finished(
                epoch, train_losses=list(self.epoch_losses.losses), metrics=metrics
            )
        except EarlyStopping:
            self.request_stop(f"EarlyStopping raised by a policy at the end of epoch {epoch}")
        for name, value in self.policies.scalars().items():
            summary[name if name not in summary else f"policy_{name}"] = value
        super().end_epoch(epoch, summary)

    def monitored_value(self, summary: dict[str, float]) -> float:
        """Keep ``best_model/`` only for a persisted run."""
        return super().monitored_value(summary) if self.persist else math.nan

    def save_checkpoint(self, write_logs: bool = True) -> Path:
        """Checkpoint a persisted run; otherwise only flush the logs."""
        if self.persist:
            return super().save_checkpoint(write_logs=write_logs)
        self.sinks.flush()
        return self.experiment.checkpoint

    def parameters(self) -> dict[str, Any]:
        """Epochs, constants and the policies' classes, logged once at the start."""
        described = {name: type(p).__name__ for name, p in self.policies.policies.items()}
        constants = {k: v for k, v in self.constants.items() if _is_number(v) or isinstance(v, str)}
        return {"n_epochs": self.max_epochs, **constants, **described}

    def _run_validate(self) -> dict[str, Any] | None:
        if self.validate is None:
            return None
        metrics = self.validate()
        if not isinstance(metrics, dict):
            raise ConfigError(
                "train_model: validate() must return a dict of metrics, "
                f"got {type(metrics).__name__}"
            )
        return metrics


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a real scalar that can be logged (bools excluded)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, np.ndarray):
        return value.size == 1 and np.issubdtype(value.dtype, np.number)
    return isinstance(value, (int, float, np.number))


class _EpochLosses:
    """The losses of the current epoch, checkpointed so a mid-epoch resume hands policies all."""

    def __init__(self) -> None:
        self.losses: list[Any] = []

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = list(state["losses"])


class _PolicyHookedSource:
    """The training source, with ``train_step_started`` called before each batch is handed out.

    A policy raising :class:`EarlyStopping` there (or any stop request) ends the epoch before
    that batch; the engine then closes the epoch and checkpoints as usual.
    """

    def __init__(self, source: Any, engine: FunctionalEngine) -> None:
        self.source = source
        self.engine = engine

    @property
    def nb_batches(self) -> int | None:
        return self.source.nb_batches  # type: ignore[no-any-return]

    def begin(self, epoch: int, start: int = 0) -> Iterator[Any]:
        return self._hooked(self.source.begin(epoch, start), epoch, start)

    def _hooked(self, iterator: Iterator[Any], epoch: int, start: int) -> Iterator[Any]:
        for index, batch in enumerate(iterator, start):
            if self.engine.progress.stopped:
                return
            try:
                self.engine.policies.train_step_started(epoch, index)
            except EarlyStopping:
                self.engine.request_stop(f"EarlyStopping raised by a policy before batch {index}")
                return
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()  # type: ignore[no-any-return]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)

    def close(self) -> None:
        self.source.close()
