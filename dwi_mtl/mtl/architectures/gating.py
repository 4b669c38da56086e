"""Gates of the mixture-of-experts architectures (MMoE, DSelect_k, CGC, PLE), for any input.

LibMTL sizes its gates with ``img_size`` (a flattened image). Here a gate sees a *gate view* of
its input, computed without knowing the input's shape in advance:

- a tensor ``(B, F)`` is used as is; a tensor ``(B, C, ...)`` is mean-pooled over its trailing
  dimensions (``"pool"``, the default, right for variable-length padded sequences) or flattened
  (``"flatten"``, LibMTL's behaviour, for fixed-size inputs);
- a packed streamline batch (any object with a ``lengths`` attribute: ``StreamlineBatch``,
  ``PackedStreamlines``) gives one row per streamline: the mean, first and last point of its
  features (``inputs`` when present, else ``points``).

The first layer of the default gate is a :class:`torch.nn.LazyLinear`, so its input size is
inferred at the first forward pass; a user-given ``gate_network`` factory replaces it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError

GATE_VIEWS = ("pool", "flatten")

#: ``gate_network(num_outputs) -> nn.Module`` mapping a gate's input to ``(B, num_outputs)``.
GateFactory = Callable[[int], nn.Module]


def packed_lengths(inputs: Any) -> Tensor | None:
    """Return the ``(N,)`` lengths of a packed streamline batch, or None for other inputs."""
    lengths = getattr(inputs, "lengths", None)
    return lengths if isinstance(lengths, Tensor) else None


def packed_features(inputs: Any) -> Tensor:
    """Return the per-point features of a packed batch: ``inputs`` if set, else ``points``."""
    features = getattr(inputs, "inputs", None)
    return features if isinstance(features, Tensor) else inputs.points


def pool_packed(features: Tensor, lengths: Tensor) -> Tensor:
    """Pool packed per-point features ``(P, F)`` into ``(N, 3F)``: mean, first and last point."""
    lengths = lengths.to(device=features.device, dtype=torch.long)
    nb = lengths.shape[0]
    segment = torch.repeat_interleave(torch.arange(nb, device=features.device), lengths)
    sums = torch.zeros(nb, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, segment, features)
    mean = sums / lengths.clamp(min=1).unsqueeze(1).to(features.dtype)
    ends = torch.cumsum(lengths, 0)
    first = features[(ends - lengths).clamp(max=features.shape[0] - 1)]
    last = features[(ends - 1).clamp(min=0)]
    return torch.cat([mean, first, last], dim=1)


def gate_view(inputs: Any, mode: str = "pool") -> Tensor:
    """Return the 2D ``(B, F)`` view of ``inputs`` that a default gate consumes.

    Args:
        inputs: a tensor ``(B, ...)`` or a packed streamline batch (duck-typed on ``lengths``).
        mode: ``"pool"`` (mean over trailing dimensions) or ``"flatten"`` for tensors of more
            than two dimensions.

    Raises:
        ConfigError: for inputs that are neither a tensor nor a packed batch.
    """
    lengths = packed_lengths(inputs)
    if lengths is not None:
        return pool_packed(packed_features(inputs), lengths)
    if not isinstance(inputs, Tensor):
        raise ConfigError(
            f"the default gate needs a tensor or a packed streamline batch, got "
            f"{type(inputs).__name__}; pass gate_network=... to gate other inputs"
        )
    if inputs.dim() == 1:
        return inputs.unsqueeze(1)
    if inputs.dim() == 2:
        return inputs
    if mode == "flatten":
        return inputs.flatten(1)
    return inputs.flatten(2).mean(dim=2)


class GateView(nn.Module):
    """Module form of :func:`gate_view` (no parameters)."""

    def __init__(self, mode: str = "pool") -> None:
        super().__init__()
        if mode not in GATE_VIEWS:
            raise ConfigError(f"gate_view must be one of {GATE_VIEWS}, got {mode!r}")
        self.mode = mode

    def forward(self, inputs: Any) -> Tensor:
        """Return the ``(B, F)`` gate view of ``inputs``."""
        return gate_view(inputs, self.mode)


class _UniformInit:
    """Mixin: initialise weight and bias uniformly in ``[-init_scale, init_scale]``."""

    init_scale: float | None = None

    def reset_parameters(self) -> None:
        """Small uniform initialisation when ``init_scale`` is set, torch's default otherwise."""
        if getattr(self, "has_uninitialized_params", lambda: False)():
            return
        super().reset_parameters()  # type: ignore[misc]
        if self.init_scale is not None:
            with torch.no_grad():
                for param in (self.weight, self.bias):  # type: ignore[attr-defined]
                    if param is not None and param.numel():
                        param.uniform_(-self.init_scale, self.init_scale)


class GateLinear(_UniformInit, nn.Linear):
    """``nn.Linear`` with an optional small uniform initialisation."""

    def __init__(self, in_features: int, out_features: int, init_scale: float | None) -> None:
        self.init_scale = init_scale
        super().__init__(in_features, out_features)


class LazyGateLinear(_UniformInit, nn.LazyLinear):
    """``nn.LazyLinear`` with an optional small uniform initialisation (input width lazy)."""

    cls_to_become = None  # type: ignore[assignment]  # keep the small-init class

    def __init__(self, out_features: int, init_scale: float | None) -> None:
        self.init_scale = init_scale
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Lazy modules are a new feature")
            super().__init__(out_features)


class StaticGate(nn.Module):
    """An input-independent gate: learned logits, the same for every example of the batch.

    DSelect-k's "static" gate; for MMoE/CGC/PLE a fixed learned mixture of the experts.
    """

    def __init__(self, num_outputs: int, init_scale: float | None = None) -> None:
        super().__init__()
        scale = 0.0 if init_scale is None else init_scale
        self.logits = nn.Parameter(torch.empty(num_outputs).uniform_(-scale, scale))

    def forward(self, inputs: Any) -> Tensor:
        """Return the logits repeated for each example (streamline, row) of ``inputs``."""
        lengths = packed_lengths(inputs)
        if lengths is not None:
            batch = lengths.shape[0]
        elif isinstance(inputs, Tensor):
            batch = inputs.shape[0]
        else:
            raise ConfigError(f"a static gate needs a tensor or a packed batch, got {type(inputs)}")
        return self.logits.unsqueeze(0).expand(batch, -1)


def default_gate(
    num_outputs: int,
    mode: str = "pool",
    input_dim: int | None = None,
    init_scale: float | None = None,
) -> nn.Module:
    """Build the default gate: gate view then one linear layer giving ``num_outputs`` logits.

    Args:
        num_outputs: number of logits (experts, or DSelect-k selector codes).
        mode: the gate view for tensors of more than two dimensions.
        input_dim: the gate view's width when known; else inferred at the first forward pass.
        init_scale: initialise the layer uniformly in ``[-init_scale, init_scale]`` (DSelect-k
            starts its selectors unsaturated); torch's default initialisation when None.
    """
    if input_dim is not None:
        linear: nn.Module = GateLinear(input_dim, num_outputs, init_scale)
    else:
        linear = LazyGateLinear(num_outputs, init_scale)
    return nn.Sequential(GateView(mode), linear)


def gate_factory(kwargs: Mapping[str, Any], init_scale: float | None = None) -> GateFactory:
    """Return the gate factory selected by the architecture's keyword arguments.

    ``gate_network`` (a callable ``num_outputs -> nn.Module``) wins, then ``static_gate=True``
    (:class:`StaticGate`); otherwise the default gate
    with ``gate_view`` (``"pool"``) and ``gate_input_dim``, or ``img_size`` (LibMTL's argument:
    the gate then flattens inputs of that size), initialised with ``init_scale``.
    """
    user = kwargs.get("gate_network")
    if user is not None:
        if not callable(user):
            raise ConfigError(
                f"gate_network must be a callable num_outputs -> nn.Module, got {user!r}"
            )
        return _checked_factory(user)
    static = kwargs.get("static_gate", False)
    if not isinstance(static, bool):
        raise ConfigError(f"static_gate must be True or False, got {static!r}")
    if static:
        return lambda num_outputs: StaticGate(num_outputs, init_scale)
    mode = kwargs.get("gate_view", "pool")
    input_dim = kwargs.get("gate_input_dim")
    img_size = kwargs.get("img_size")
    if img_size is not None and input_dim is None:
        mode, input_dim = "flatten", int(torch.tensor(list(img_size)).prod().item())
    if input_dim is not None and (not isinstance(input_dim, int) or input_dim < 1):
        raise ConfigError(f"gate_input_dim must be a positive integer, got {input_dim!r}")
    GateView(mode)  # validates the mode now, not at the first forward pass
    return lambda num_outputs: default_gate(num_outputs, mode, input_dim, init_scale)


def _checked_factory(user: GateFactory) -> GateFactory:
    """Wrap a user gate factory so that a non-module result is reported clearly."""

    def build(num_outputs: int) -> nn.Module:
        gate = user(num_outputs)
        if not isinstance(gate, nn.Module):
            raise ConfigError(f"gate_network({num_outputs}) must return an nn.Module, got {gate!r}")
        return gate

    return build


def mix_experts(stacked: Tensor, weights: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Combine expert outputs ``(E, B, ...)`` with per-example weights ``(B, E)``.

    When the experts give per-point outputs of a packed batch (``B`` = total points) while the
    gate gives per-streamline weights, the weights are repeated along each streamline.

    Raises:
        ConfigError: when the batch sizes of experts and gate cannot be matched.
    """
    batch = stacked.shape[1]
    if weights.shape[0] != batch:
        if lengths is not None and int(lengths.sum()) == batch:
            weights = torch.repeat_interleave(weights, lengths.to(weights.device), dim=0)
        else:
            raise ConfigError(
                f"gate gives {weights.shape[0]} rows but the experts give {batch}: the gate's "
                "input must have the experts' batch size (or pass gate_network=...)"
            )
    shaped = weights.t().reshape(weights.shape[1], batch, *([1] * (stacked.dim() - 2)))
    return (stacked * shaped.to(stacked.dtype)).sum(dim=0)
