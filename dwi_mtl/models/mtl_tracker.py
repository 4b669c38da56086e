"""MTLTracker: a multi-task tractography model built by architecture name, for the train script.

The model of ``dwi_mtl_train_model``'s ``mtl`` configuration section. It combines

- a shared :class:`~dwi_mtl.models.sequence_encoder.CausalSequenceEncoder` over the batch's
  interpolated per-point inputs (every copy the architecture asks for: experts, columns);
- one decoder per built-in task (:mod:`dwi_mtl.models.tracking_tasks`: ``direction``, ``eos``,
  ``classification``);
- an MTL architecture looked up by name in :data:`dwi_mtl.mtl.architectures.ARCHITECTURES`
  (``hps``, ``cross_stitch``, ``mmoe``, ``mtan``, ``cgc``, ``ple``, ``dselect_k``).

``compute_loss(batch)`` returns ``{task: loss}``, which
:class:`~dwi_mtl.models.model_trainer.ModelTrainer` combines with the configured weighting;
``get_share_params()`` and the rep_grad protocol (``get_representation`` /
``clear_representation``) let gradient weightings work at the shared parameters or at the
representation. The model is rebuilt from ``get_config()`` on resume.

A model with a ``direction`` task tracks (:class:`~dwi_mtl.tracking.Tracker`,
``dwi_mtl_track_from_model``) by re-reading each streamline at every step
(:class:`~dwi_mtl.models.reread_tracking.RereadTracking`); its ``eos`` task, when it has one,
stops the streamlines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError, DwiMtlError
from dwi_mtl.models.reread_tracking import RereadTracking
from dwi_mtl.models.sequence_encoder import CausalSequenceEncoder
from dwi_mtl.models.streamline_encoders import PackedStreamlines
from dwi_mtl.models.tracking_tasks import (
    DirectionTask,
    EndOfStreamlineTask,
    SegmentContext,
    TrackingTask,
    build_task,
)

#: Gate choices of the mixture-of-experts architectures (see :class:`MTLTracker`).
GATES = ("default", "point", "static")
GATED_ARCHITECTURES = ("mmoe", "cgc", "ple", "dselect_k")
_GATE_ARGS = ("static_gate", "gate_view", "gate_input_dim", "img_size")
#: The architecture arguments a configuration may set (the gate network comes from ``gate``).
ARCHITECTURE_ARGS: dict[str, tuple[str, ...]] = {
    "hps": (), "cross_stitch": ("stages", "self_weight"), "mtan": ("stages",),
    "mmoe": ("num_experts", *_GATE_ARGS), "cgc": ("num_experts", *_GATE_ARGS),
    "ple": ("num_experts", "stages", *_GATE_ARGS),
    "dselect_k": ("num_experts", "num_nonzeros", "kgamma", *_GATE_ARGS),
}


class PointGate(nn.Module):
    """A per-point gate: a linear layer over each point's own inputs, ``(P, num_outputs)``.

    Unlike the default gate (mean, first and last point of the whole streamline), the weight of
    the experts at a point depends on that point only, so the model stays causal.
    """

    def __init__(self, in_features: int, num_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_outputs)

    def forward(self, batch: Any) -> Tensor:
        """Logits for every point of a packed batch (its ``inputs``)."""
        inputs = getattr(batch, "inputs", None)
        if not isinstance(inputs, Tensor):
            raise ConfigError("gate 'point' needs packed batches with per-point inputs")
        out: Tensor = self.linear(inputs)
        return out


class MTLTracker(RereadTracking, nn.Module):
    """Multi-task model over packed streamlines: shared causal encoder, named architecture.

    Args:
        nb_features: width of the batches' per-point ``inputs`` (the loader's
            ``nb_input_features``).
        tasks: task specifications (:func:`~dwi_mtl.models.tracking_tasks.build_task`): type
            names (``"direction"``, ``"eos"``) or mappings such as ``{"type":
            "classification", "name": "bundle", "key": "bundle", "nb_classes": 3}``.
        architecture: a name of :data:`~dwi_mtl.mtl.architectures.ARCHITECTURES`.
        architecture_args: its keyword arguments (``num_experts``, ``stages``, ...).
        encoder: arguments of :class:`CausalSequenceEncoder` (``in_features`` is derived).
        head_hidden_size: hidden units of each task head (0: a linear head).
        gate: for mmoe/cgc/ple/dselect_k: ``"default"`` (the architecture's gate over a
            per-streamline view), ``"point"`` (a per-point gate over each point's inputs:
            causal; not for ple, whose later gates see padded stage outputs) or ``"static"``
            (learned input-independent logits).
        rep_grad: record the representation for rep_grad weightings.
        multi_input: run one architecture pass per task (refused by cross_stitch and ple).
        entropy_regularization: dselect_k only: ``coef * entropy`` of each task's selectors
            added to that task's training loss (the authors use 0.05) so that every selector
            converges to one expert; 0 (default): off. Validation losses are left pure.

    Raises:
        ConfigError: naming the argument (``tasks``, ``architecture``, ``architecture_args``,
            ``encoder``, ``gate``, ...) whose value is bad.
    """

    def __init__(
        self,
        nb_features: int,
        tasks: Sequence[str | Mapping[str, Any]],
        architecture: str = "hps",
        architecture_args: Mapping[str, Any] | None = None,
        encoder: Mapping[str, Any] | None = None,
        head_hidden_size: int = 32,
        gate: str = "default",
        rep_grad: bool = False,
        multi_input: bool = False,
        entropy_regularization: float = 0.0,
    ) -> None:
        super().__init__()
        _check_int("nb_features", nb_features, 1)
        _check_int("head_hidden_size", head_hidden_size, 0)
        for name, flag in (("rep_grad", rep_grad), ("multi_input", multi_input)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be true or false, got {flag!r}")
        self.tasks = build_tasks(tasks)
        arch_class = _architecture_class(architecture)
        arch_args = _architecture_args(arch_class.arch_name, architecture_args)
        self.entropy_regularization = _entropy_coefficient(entropy_regularization,
                                                           arch_class.arch_name)
        encoder_args = _mapping("encoder", encoder)
        width = _probe_encoder(nb_features, encoder_args)
        self._context = SegmentContext()
        decoders = {t.name: t.build_decoder(width, head_hidden_size, self._context)
                    for t in self.tasks}
        built_args = {**arch_args, **_gate_args(gate, arch_class.arch_name, nb_features)}
        self._config: dict[str, Any] = {
            "nb_features": nb_features, "tasks": [t.get_config() for t in self.tasks],
            "architecture": arch_class.arch_name, "architecture_args": arch_args,
            "encoder": encoder_args, "head_hidden_size": head_hidden_size, "gate": gate,
            "rep_grad": rep_grad, "multi_input": multi_input,
            "entropy_regularization": self.entropy_regularization,
        }
        try:
            self.architecture = arch_class(
                self.task_names, lambda: _build_encoder(nb_features, encoder_args), decoders,
                rep_grad, multi_input, "cpu", **built_args)
            self._materialize(nb_features)
        except (DwiMtlError, TypeError, ValueError) as exc:
            raise ConfigError(f"architecture {arch_class.arch_name!r} with architecture_args "
                              f"{arch_args}: {exc}") from exc

    # ------------------------------------------------------------------ config
    @property
    def task_names(self) -> list[str]:
        """The task names, in order (the keys of :meth:`compute_loss`)."""
        return [task.name for task in self.tasks]

    @property
    def data_per_streamline_keys(self) -> list[str]:
        """The ``data_per_streamline`` entries the tasks read from the batches."""
        return sorted({key for task in self.tasks for key in task.data_per_streamline_keys})

    @property
    def nb_features(self) -> int:
        """Width of the per-point inputs (volume features and neighbourhood)."""
        return int(self._config["nb_features"])

    # ------------------------------------------------------------------ tracking
    def tracking_outputs(self, predictions: dict[str, Tensor], rows: Tensor
                         ) -> dict[str, Tensor]:
        """The direction (and end-of-streamline) predictions at the packed ``rows``.

        Raises:
            ConfigError: when the model has no ``direction`` task to track with.
        """
        outputs: dict[str, Tensor] = {}
        for task in self.tasks:
            if isinstance(task, (DirectionTask, EndOfStreamlineTask)):
                outputs.setdefault(type(task).type_name, predictions[task.name][rows])
        if "direction" not in outputs:
            raise ConfigError(f"this MTLTracker has no direction task to track with (tasks "
                              f"{self.task_names})")
        return outputs

    def directions(self, outputs: dict[str, Tensor], sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
        """Unit next-step directions: the normalised ``direction`` prediction (a regression:
        nothing to sample, as the reference models' cosine head)."""
        return nn.functional.normalize(outputs["direction"], dim=-1)

    def stop_probability(self, outputs: dict[str, Tensor]) -> Tensor | None:
        """``(N,)`` probability that each streamline ends here (None without an eos task)."""
        logits = outputs.get("eos")
        return None if logits is None else torch.sigmoid(logits[:, 0])

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able): the model is rebuilt from them on resume."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MTLTracker:
        """Build the model from :meth:`get_config`'s dict."""
        return cls(**config)

    # ------------------------------------------------------------------ forward and losses
    def forward(self, batch: Any) -> dict[str, Tensor]:
        """Predict every task from a packed batch (``points``, ``lengths``, ``inputs``).

        Returns:
            ``{task: prediction}``: ``(P, 3)`` directions, ``(P, 1)`` end-of-streamline logits,
            ``(N, nb_classes)`` class logits.
        """
        self._context.lengths = batch.lengths
        if not self.architecture.multi_input:
            predictions: dict[str, Tensor] = self.architecture(batch)
            return predictions
        outputs: dict[str, Tensor] = {}
        for task in self.task_names:
            outputs.update(self.architecture(batch, task_name=task))
        return outputs

    def compute_loss(self, batch: Any) -> dict[str, Tensor]:
        """The per-task training losses of one batch, ``{task: scalar}`` (with DSelect-k's
        entropy regularization of each task's selectors when configured)."""
        predictions = self(batch)
        is_last = _is_last(batch.lengths, predictions)
        losses = {t.name: t.loss(predictions[t.name], batch, is_last) for t in self.tasks}
        if self.entropy_regularization and torch.is_grad_enabled():
            for name in losses:
                entropy = self.architecture.entropy_regularization([name])
                losses[name] = losses[name] + self.entropy_regularization * entropy
        return losses

    def compute_metrics(self, batch: Any) -> dict[str, Tensor]:
        """The per-task losses plus each task's metrics (``direction_angular_error``, ...)."""
        predictions = self(batch)
        is_last = _is_last(batch.lengths, predictions)
        metrics: dict[str, Tensor] = {}
        for task in self.tasks:
            metrics[task.name] = task.loss(predictions[task.name], batch, is_last)
            metrics.update(task.metrics(predictions[task.name], batch, is_last))
        return metrics

    # ------------------------------------------------------------------ MTL protocol
    def get_share_params(self) -> list[nn.Parameter]:
        """The architecture's shared parameters (encoders, shared gates, mixing)."""
        params: list[nn.Parameter] = self.architecture.get_share_params()
        return params

    def get_representation(self, task_names: Iterable[str] | None = None) -> list[Tensor]:
        """The representation recorded by the last forward pass (``rep_grad=True``)."""
        reps: list[Tensor] = self.architecture.get_representation(task_names)
        return reps

    def clear_representation(self) -> None:
        """Drop the recorded representation (and the graph it keeps alive)."""
        self.architecture.clear_representation()

    def _materialize(self, nb_features: int) -> None:
        """Run one tiny batch so lazy gates/attention get their sizes now (seeded, before the
        optimizer is built), not at the first training batch."""
        dummy = PackedStreamlines(torch.zeros(3, 3), torch.tensor([3]), torch.zeros(3, nb_features))
        with torch.no_grad():
            self(dummy)
        self.clear_representation()
        self._context.lengths = None


def _is_last(lengths: Tensor, predictions: Mapping[str, Tensor]) -> Tensor:
    """``(P,)`` True at the last point of each streamline."""
    device = next(iter(predictions.values())).device
    lengths = lengths.to(device)
    is_last = torch.zeros(int(lengths.sum()), dtype=torch.bool, device=device)
    is_last[torch.cumsum(lengths, 0) - 1] = True
    return is_last


def build_tasks(specs: Sequence[str | Mapping[str, Any]]) -> list[TrackingTask]:
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence) or not specs:
        raise ConfigError(f"tasks must be a non-empty list of tasks, got {specs!r}")
    tasks = [build_task(spec, f"tasks[{index}]") for index, spec in enumerate(specs)]
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks: duplicated task names {names}; give each a 'name'")
    return tasks


def _architecture_class(name: Any) -> Any:
    from dwi_mtl.mtl.architectures import get_architecture

    if not isinstance(name, str):
        raise ConfigError(f"architecture must be a name, got {name!r}")
    try:
        return get_architecture(name)
    except ConfigError as exc:
        raise ConfigError(f"architecture: {exc}") from exc


def _architecture_args(arch_name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The architecture's arguments, refusing the ones it does not read (typos)."""
    checked = _mapping("architecture_args", args)
    known = ARCHITECTURE_ARGS.get(arch_name)
    unknown = sorted(set(checked) - set(known)) if known is not None else []
    if unknown:
        raise ConfigError(f"architecture_args: unknown keys {unknown} for {arch_name!r}; "
                          f"expected some of {list(known or ())}")
    return checked


def _entropy_coefficient(value: Any, arch_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"entropy_regularization must be a number >= 0, got {value!r}")
    if value and arch_name != "dselect_k":
        raise ConfigError(f"entropy_regularization applies to dselect_k only, not {arch_name!r}")
    return float(value)


def _gate_args(gate: Any, arch_name: str, nb_features: int) -> dict[str, Any]:
    if gate not in GATES:
        raise ConfigError(f"gate must be one of {GATES}, got {gate!r}")
    if gate == "default":
        return {}
    if arch_name not in GATED_ARCHITECTURES:
        raise ConfigError(f"gate {gate!r} applies to {GATED_ARCHITECTURES} only, not "
                          f"{arch_name!r}")
    if gate == "static":
        return {"static_gate": True}
    if arch_name == "ple":
        raise ConfigError("gate 'point' is not available for ple: its gates after the first "
                          "level read padded stage outputs; use 'default' or 'static'")
    return {"gate_network": lambda num_outputs: PointGate(nb_features, num_outputs)}


def _mapping(name: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping of arguments, got {value!r}")
    return dict(value)


def _build_encoder(nb_features: int, args: dict[str, Any]) -> CausalSequenceEncoder:
    previous = args.get("nb_previous_dirs", 0)
    extra = 3 * previous if isinstance(previous, int) and previous > 0 else 0
    in_features = nb_features + (3 if args.get("use_points") else 0) + extra
    return CausalSequenceEncoder(in_features, **args)


def _probe_encoder(nb_features: int, args: dict[str, Any]) -> int:
    """Check the encoder arguments now (naming the section) and return its output width."""
    if "in_features" in args:
        raise ConfigError("encoder: in_features is derived from the dataset; remove it")
    try:
        return _build_encoder(nb_features, args).out_features
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"encoder: {exc}") from exc


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
