"""The built-in tractography tasks of :class:`~dwi_mtl.models.mtl_tracker.MTLTracker`.

Each task turns the per-point features of the shared encoder ``(P, H)`` into its prediction and
scores it against the batch (a :class:`~dwi_mtl.training.batch.StreamlineBatch`):

``direction``       next-step direction at every point but the last; ``1 - cos`` loss, the
                    ``angular_error`` (degrees) as metric;
``eos``             end of streamline: the probability that a point is the last one; binary
                    cross-entropy (``pos_weight`` balances the rare last points);
``classification``  one label per streamline from ``data_per_streamline[key]`` (e.g. the bundle
                    of the demo bundles file): masked mean of the points, cross-entropy, the
                    ``accuracy`` as metric.

A task is named in a configuration by its type (``"direction"``) or by a mapping
``{type: classification, name: bundle, key: bundle, nb_classes: 3}``; :func:`build_task` parses
both. Task names are the keys of the loss dict, so they must be unique.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError


class SegmentContext:
    """The lengths of the batch being decoded (set by the model before each forward pass)."""

    def __init__(self) -> None:
        self.lengths: Tensor | None = None

    def require(self) -> Tensor:
        """Return the ``(N,)`` lengths, raising when no batch was announced."""
        if self.lengths is None:
            raise ConfigError("a per-streamline decoder ran before the model set the lengths")
        return self.lengths


def mlp_head(in_features: int, hidden_size: int, out_features: int) -> nn.Module:
    """A task head: one hidden ReLU layer (``hidden_size`` > 0) or a linear layer."""
    if hidden_size == 0:
        return nn.Linear(in_features, out_features)
    return nn.Sequential(nn.Linear(in_features, hidden_size), nn.ReLU(),
                         nn.Linear(hidden_size, out_features))


class StreamlinePoolingHead(nn.Module):
    """Masked mean of the per-point features of each streamline, then a head ``(N, C)``."""

    def __init__(self, context: SegmentContext, head: nn.Module) -> None:
        super().__init__()
        self.context = context
        self.head = head

    def forward(self, features: Tensor) -> Tensor:
        """Pool ``(P, H)`` per streamline and classify: ``(N, nb_classes)`` logits."""
        lengths = self.context.require().to(features.device)
        segment = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device),
                                          lengths)
        sums = features.new_zeros(lengths.shape[0], features.shape[1]).index_add(0, segment,
                                                                                  features)
        out: Tensor = self.head(sums / lengths.unsqueeze(1).to(features.dtype))
        return out


class TrackingTask:
    """A task: its name, how to build its decoder, its loss and metrics."""

    type_name = "abstract"

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def data_per_streamline_keys(self) -> tuple[str, ...]:
        """The ``data_per_streamline`` entries the batches must carry."""
        return ()

    def build_decoder(self, in_features: int, hidden_size: int, context: SegmentContext
                      ) -> nn.Module:
        """A new decoder from per-point features ``(P, in_features)`` to the prediction."""
        raise NotImplementedError

    def loss(self, prediction: Tensor, batch: Any, is_last: Tensor) -> Tensor:
        """The scalar loss of ``prediction`` on ``batch`` (``is_last``: ``(P,)`` bool)."""
        raise NotImplementedError

    def metrics(self, prediction: Tensor, batch: Any, is_last: Tensor) -> dict[str, Tensor]:
        """Extra validation metrics, keyed ``<name>_<metric>`` (none by default)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        """The task's specification (what :func:`build_task` reads back)."""
        return {"type": self.type_name, "name": self.name}


class DirectionTask(TrackingTask):
    """Next-step direction at every point but the last (``1 - cos``; angular error metric)."""

    type_name = "direction"

    def build_decoder(self, in_features: int, hidden_size: int, context: SegmentContext
                      ) -> nn.Module:
        """A head giving an (unnormalised) 3D vector per point."""
        return mlp_head(in_features, hidden_size, 3)

    def loss(self, prediction: Tensor, batch: Any, is_last: Tensor) -> Tensor:
        """Mean ``1 - cos`` between predictions at non-last points and the true next steps."""
        return (1.0 - self._cosine(prediction, batch, is_last)).mean()

    def metrics(self, prediction: Tensor, batch: Any, is_last: Tensor) -> dict[str, Tensor]:
        """``<name>_angular_error``: mean angle (degrees) to the true next steps."""
        cosine = self._cosine(prediction, batch, is_last).clamp(-1.0, 1.0)
        return {f"{self.name}_angular_error": torch.rad2deg(torch.acos(cosine)).mean()}

    @staticmethod
    def _cosine(prediction: Tensor, batch: Any, is_last: Tensor) -> Tensor:
        predicted = nn.functional.normalize(prediction[~is_last], dim=-1)
        target = nn.functional.normalize(batch.directions.to(prediction.dtype), dim=-1)
        return (predicted * target).sum(dim=-1)


class EndOfStreamlineTask(TrackingTask):
    """Whether each point is the last of its streamline (binary cross-entropy on a logit).

    Args:
        name: the task name.
        pos_weight: weight of the (rare) last points in the loss; None: 1.
    """

    type_name = "eos"

    def __init__(self, name: str, pos_weight: float | None = None) -> None:
        super().__init__(name)
        if pos_weight is not None and (isinstance(pos_weight, bool) or not isinstance(
                pos_weight, (int, float)) or not math.isfinite(pos_weight) or pos_weight <= 0):
            raise ConfigError(f"task '{name}': pos_weight must be a positive number, "
                              f"got {pos_weight!r}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def build_decoder(self, in_features: int, hidden_size: int, context: SegmentContext
                      ) -> nn.Module:
        """A head giving one logit per point."""
        return mlp_head(in_features, hidden_size, 1)

    def loss(self, prediction: Tensor, batch: Any, is_last: Tensor) -> Tensor:
        """Mean binary cross-entropy of the per-point logits against ``is_last``."""
        weight = None if self.pos_weight is None else prediction.new_tensor(self.pos_weight)
        return nn.functional.binary_cross_entropy_with_logits(
            prediction.squeeze(-1), is_last.to(prediction.dtype), pos_weight=weight)

    def get_config(self) -> dict[str, Any]:
        """Type, name and ``pos_weight``."""
        return {**super().get_config(), "pos_weight": self.pos_weight}


class ClassificationTask(TrackingTask):
    """One class per streamline, read from ``data_per_streamline[key]`` (cross-entropy).

    Args:
        name: the task name.
        key: the ``data_per_streamline`` entry holding integer labels in ``[0, nb_classes)``.
        nb_classes: number of classes.
    """

    type_name = "classification"

    def __init__(self, name: str, key: str = "label", nb_classes: int = 2) -> None:
        super().__init__(name)
        if not isinstance(key, str) or not key:
            raise ConfigError(f"task '{name}': key must be a data_per_streamline name, "
                              f"got {key!r}")
        if isinstance(nb_classes, bool) or not isinstance(nb_classes, int) or nb_classes < 2:
            raise ConfigError(f"task '{name}': nb_classes must be an integer >= 2, "
                              f"got {nb_classes!r}")
        self.key, self.nb_classes = key, nb_classes

    @property
    def data_per_streamline_keys(self) -> tuple[str, ...]:
        """The label entry."""
        return (self.key,)

    def build_decoder(self, in_features: int, hidden_size: int, context: SegmentContext
                      ) -> nn.Module:
        """Per-streamline pooling then a head giving ``nb_classes`` logits."""
        return StreamlinePoolingHead(context, mlp_head(in_features, hidden_size, self.nb_classes))

    def loss(self, prediction: Tensor, batch: Any, is_last: Tensor) -> Tensor:
        """Cross-entropy of the per-streamline logits against the labels."""
        return nn.functional.cross_entropy(prediction, self._labels(batch, prediction))

    def metrics(self, prediction: Tensor, batch: Any, is_last: Tensor) -> dict[str, Tensor]:
        """``<name>_accuracy``: the fraction of streamlines classified right."""
        labels = self._labels(batch, prediction)
        return {f"{self.name}_accuracy": (prediction.argmax(-1) == labels).float().mean()}

    def get_config(self) -> dict[str, Any]:
        """Type, name, key and number of classes."""
        return {**super().get_config(), "key": self.key, "nb_classes": self.nb_classes}

    def _labels(self, batch: Any, prediction: Tensor) -> Tensor:
        values = getattr(batch, "data_per_streamline", {}).get(self.key)
        if values is None:
            raise ConfigError(
                f"task '{self.name}' needs data_per_streamline '{self.key}' in the batches: add "
                f"it to batch_loader.data_per_streamline_keys")
        labels = values.reshape(-1).to(prediction.device, torch.long)
        if bool(((labels < 0) | (labels >= self.nb_classes)).any()):
            raise ConfigError(f"task '{self.name}': labels of '{self.key}' must lie in "
                              f"[0, {self.nb_classes}); set nb_classes")
        return labels


#: Task types by name.
TASK_TYPES: dict[str, type[TrackingTask]] = {
    task.type_name: task for task in (DirectionTask, EndOfStreamlineTask, ClassificationTask)
}


def build_task(spec: str | Mapping[str, Any], where: str = "tasks") -> TrackingTask:
    """Build a task from its type name or its ``{type, name, ...}`` mapping.

    Raises:
        ConfigError: naming ``where`` for an unknown type or bad arguments.
    """
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a task is a type name or a mapping with 'type', got {spec!r}")
    options = dict(spec)
    kind = options.pop("type", None)
    if kind not in TASK_TYPES:
        raise ConfigError(
            f"{where}: unknown task type {kind!r}; choose one of {sorted(TASK_TYPES)}")
    name = options.pop("name", kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: task name must be a non-empty string, got {name!r}")
    try:
        return TASK_TYPES[kind](name, **options)
    except TypeError as exc:
        raise ConfigError(f"{where} ({kind}): {exc}") from exc
