"""DirectionModel: the common frame of the streamline models that predict next-step directions.

A subclass supplies the sequence encoder (:meth:`DirectionModel.encode`: packed per-point
inputs -> packed hidden states, causal along each streamline) and its tracking state; this
class adds what every such model shares:

- the inputs (batch ``inputs`` = interpolated volume features, neighbourhood included, plus
  ``nb_previous_dirs`` previous directions computed from the points);
- a direction getter head (:mod:`dwi_mtl.models.direction_getters`), optionally learning the
  end of the streamline as a second task: :meth:`compute_loss` then returns
  ``{"direction": ..., "eos": ...}`` for the trainer's MTL weighting, and
  :meth:`get_share_params` gives the shared encoder's parameters;
- the metric (:meth:`angular_error`) and the tracking interface used by
  :class:`dwi_mtl.tracking.Tracker` (:meth:`start_tracking`, :meth:`track_step`,
  :meth:`select_state`);
- ``get_config()`` / ``from_config()`` so ``parameters.json`` rebuilds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models.direction_getters import DirectionGetter, get_direction_getter
from dwi_mtl.models.sequence_features import last_point_mask, with_previous_directions


class DirectionModel(nn.Module):
    """Base class: inputs -> causal sequence encoder -> direction getter head.

    Args:
        nb_features: volume features per point (the loader's ``nb_input_features``).
        nb_previous_dirs: previous step directions appended to the inputs.
        direction_getter: head name (``"cosine"``, ``"l2"``, ``"sphere"``, ``"gaussian"``,
            ``"fisher_von_mises"``).
        direction_getter_kwargs: the head's other arguments (``dropout``, ``sphere``).
        eos: also learn the end of the streamline (a second task).
    """

    def __init__(self, nb_features: int, nb_previous_dirs: int = 0,
                 direction_getter: str = "cosine",
                 direction_getter_kwargs: dict[str, Any] | None = None,
                 eos: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(nb_features, bool) or int(nb_features) < 1:
            raise ConfigError(f"{name}: nb_features must be >= 1, got {nb_features}")
        if isinstance(nb_previous_dirs, bool) or int(nb_previous_dirs) < 0:
            raise ConfigError(f"{name}: nb_previous_dirs must be >= 0, got {nb_previous_dirs}")
        self.nb_features, self.nb_previous_dirs = int(nb_features), int(nb_previous_dirs)
        self.input_size = self.nb_features + 3 * self.nb_previous_dirs
        self.eos = bool(eos)
        self._head_args = (str(direction_getter), dict(direction_getter_kwargs or {}))
        self._config: dict[str, Any] = {
            "nb_features": self.nb_features, "nb_previous_dirs": self.nb_previous_dirs,
            "direction_getter": str(direction_getter),
            "direction_getter_kwargs": dict(direction_getter_kwargs or {}), "eos": self.eos,
        }
        self.head: DirectionGetter

    def _build_head(self, hidden_size: int) -> None:
        """Create the head once the subclass knows its hidden size."""
        name, kwargs = self._head_args
        self.head = get_direction_getter(name, hidden_size, eos=self.eos, **kwargs)

    # -- configuration ----------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able); ``from_config`` rebuilds the model."""
        return {key: (dict(value) if isinstance(value, dict) else value)
                for key, value in self._config.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DirectionModel:
        """Build the model from :meth:`get_config`'s dict.

        Raises:
            ConfigError: naming the class when the dict has unknown or missing arguments.
        """
        try:
            return cls(**config)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__} config: {exc}") from exc

    @property
    def task_names(self) -> list[str]:
        """Names of the losses :meth:`compute_loss` returns."""
        return ["direction", "eos"] if self.eos else ["direction"]

    def get_share_params(self) -> list[nn.Parameter]:
        """Parameters shared by the tasks: everything but the head."""
        head = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    # -- to implement -----------------------------------------------------------------------
    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``(P, input_size)`` packed inputs -> ``(P, H)`` causal hidden states."""
        raise NotImplementedError

    def start_tracking(self, inputs: Tensor, lengths: Tensor,
                       points: Tensor) -> tuple[Tensor, Any]:
        """Read whole sequences; return the head outputs at their last points and the state."""
        raise NotImplementedError

    def track_step(self, inputs: Tensor, previous: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One new point per streamline: ``(N, F)`` features + ``(N, 3k)`` previous directions."""
        raise NotImplementedError

    def select_state(self, state: Any, index: Tensor) -> Any:
        """The tracking state of the streamlines ``index`` (the others stopped)."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------
    def model_inputs(self, inputs: Tensor, lengths: Tensor, points: Tensor | None) -> Tensor:
        """Volume features + previous directions, checked against ``nb_features``."""
        if inputs.dim() != 2 or inputs.shape[1] != self.nb_features:
            raise DataError(f"{type(self).__name__} expects inputs of {self.nb_features} features "
                            f"per point, got shape {tuple(inputs.shape)}")
        return with_previous_directions(inputs, points, lengths, self.nb_previous_dirs)

    def forward(self, inputs: Tensor, lengths: Tensor, points: Tensor | None = None) -> Tensor:
        """``(P, nb_outputs)`` head outputs at every packed point."""
        return self.head(self.encode(self.model_inputs(inputs, lengths, points), lengths))

    def _outputs_and_targets(self, batch: Any) -> tuple[Tensor, Tensor]:
        if getattr(batch, "inputs", None) is None:
            raise DataError(f"{type(self).__name__} needs batches with inputs: give the batch "
                            "loader an input_group")
        return self(batch.inputs, batch.lengths, batch.points), last_point_mask(batch.lengths)

    def compute_loss(self, batch: Any) -> Tensor | dict[str, Tensor]:
        """The direction loss, or ``{"direction", "eos"}`` losses with ``eos``."""
        outputs, is_last = self._outputs_and_targets(batch)
        losses = self.head.losses(outputs, batch.directions, is_last)
        return losses if self.eos else losses["direction"]

    def compute_metrics(self, batch: Any) -> dict[str, Tensor]:
        """Losses and the mean angular error (degrees) of a batch, from one forward pass."""
        outputs, is_last = self._outputs_and_targets(batch)
        metrics = self.head.losses(outputs, batch.directions, is_last)
        metrics["angular_error"] = self.head.angular_error(outputs[~is_last],
                                                           batch.directions).mean()
        return metrics

    def angular_error(self, batch: Any) -> Tensor:
        """``(P - N,)`` degrees between predicted and true next directions."""
        outputs, is_last = self._outputs_and_targets(batch)
        return self.head.angular_error(outputs[~is_last], batch.directions)

    def directions(self, outputs: Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
        """Unit directions from head outputs (see the head's ``directions``)."""
        return self.head.directions(outputs, sample, generator)

    def stop_probability(self, outputs: Tensor) -> Tensor | None:
        """End-of-streamline probability from head outputs (None without ``eos``)."""
        return self.head.stop_probability(outputs)
