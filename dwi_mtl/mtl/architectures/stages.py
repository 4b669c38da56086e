"""Stages of an encoder, for the architectures that act between them (Cross_stitch, MTAN, PLE).

LibMTL hard-codes ResNet's ``layer1..layer4``. Here any encoder whose forward pass applies its
top-level submodules in order (an ``nn.Sequential``, or a custom stack) is cut into stages:

- ``stages=None``: every top-level child of an ``nn.Sequential`` is one stage;
- ``stages=["conv2", "pool"]``: stage *i* runs the children after stage *i-1*'s last child up to
  and including the named one; children after the last name join the last stage.

Stage outputs may have any shape ``(B, C, ...)``: channels on dimension 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from dwi_mtl.errors import ConfigError

Stage = list[nn.Module]


def resolve_stages(
    encoder: nn.Module, stage_names: Sequence[str] | None, owner: str
) -> list[Stage]:
    """Cut ``encoder`` into stages (lists of its top-level children run in order).

    Args:
        encoder: the encoder built by ``encoder_class``.
        stage_names: names of top-level children ending each stage, in order; None for one
            stage per child of an ``nn.Sequential``.
        owner: the architecture's name, for error messages.

    Raises:
        ConfigError: for a non-sequential encoder without ``stages``, unknown or unordered
            names, or an encoder without children.
    """
    children = list(encoder.named_children())
    if not children:
        raise ConfigError(f"{owner} needs an encoder with submodules to cut into stages")
    if stage_names is None:
        if not isinstance(encoder, nn.Sequential):
            raise ConfigError(
                f"{owner} needs a staged encoder: an nn.Sequential, or stages=[names of the "
                f"top-level submodules ending each stage]; got {type(encoder).__name__}"
            )
        return [[module] for _, module in children]
    if isinstance(stage_names, str) or not stage_names:
        raise ConfigError(f"{owner}: stages must be a non-empty list of submodule names")
    names = [name for name, _ in children]
    unknown = [n for n in stage_names if n not in names]
    if unknown:
        raise ConfigError(f"{owner}: unknown stage module(s) {unknown}; the encoder has {names}")
    ends = [names.index(n) for n in stage_names]
    if ends != sorted(set(ends)):
        raise ConfigError(f"{owner}: stages {list(stage_names)} must follow the order {names}")
    stages: list[Stage] = []
    start = 0
    for end in ends:
        stages.append([module for _, module in children[start : end + 1]])
        start = end + 1
    stages[-1].extend(module for _, module in children[start:])
    return stages


def run_stage(stage: Stage, inputs: Any) -> Any:
    """Apply the modules of one stage in order."""
    for module in stage:
        inputs = module(inputs)
    return inputs


def check_stage_output(output: Any, owner: str, index: int) -> Tensor:
    """Check that a stage returned a batched tensor (channels on dimension 1)."""
    if not isinstance(output, Tensor) or output.dim() < 2:
        raise ConfigError(
            f"{owner}: stage {index} must return a tensor (B, C, ...), got "
            f"{getattr(output, 'shape', type(output).__name__)}"
        )
    return output


def match_spatial(x: Tensor, like: Tensor) -> Tensor:
    """Resize ``x`` ``(B, C, *s)`` to the trailing (spatial) shape of ``like`` ``(B, C', *t)``.

    Extra trailing dimensions are averaged out, missing ones broadcast, and same-rank sizes are
    adapted by adaptive average pooling (down) or nearest interpolation (up).
    """
    while x.dim() > like.dim():
        x = x.mean(dim=-1)
    while x.dim() < like.dim():
        x = x.unsqueeze(-1)
    target = tuple(like.shape[2:])
    if tuple(x.shape[2:]) == target:
        return x
    if all(s == 1 for s in x.shape[2:]):
        return x.expand(*x.shape[:2], *target)
    if all(a >= b for a, b in zip(x.shape[2:], target)) and x.dim() <= 5:
        pool: Any = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[
            x.dim() - 3
        ]
        return pool(x, target)
    return F.interpolate(x, size=target, mode="nearest")


def align_to(x: Tensor, like: Tensor, lengths: Tensor | None) -> Tensor:
    """Bring ``x`` to ``like``'s batch and trailing shape (channels kept).

    When a stage goes from padded sequences ``(N, C, L)`` to packed points ``(P, C)`` (an
    encoder with per-point output), ``x`` is unpadded with the batch's ``lengths`` first.

    Raises:
        ConfigError: when the batch sizes cannot be matched.
    """
    if x.shape[0] != like.shape[0]:
        if lengths is None or x.dim() != 3 or int(lengths.sum()) != like.shape[0]:
            raise ConfigError(
                f"cannot align features of batch {x.shape[0]} to a stage of batch {like.shape[0]}"
            )
        steps = torch.arange(x.shape[2], device=x.device)
        x = x.transpose(1, 2)[steps < lengths.to(x.device).unsqueeze(1)]
    return match_spatial(x, like)


class LazyChannelMLP(LazyModuleMixin, nn.Module):
    """Two-layer MLP over the channel dimension (a 1x1 convolution) with lazy sizes.

    Input channels are read at the first forward pass and the output channel count is taken
    from a reference tensor (``like``), so it fits stage outputs of unknown widths. Used for
    MTAN's attention masks.
    """

    cls_to_become = None

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Lazy modules are a new feature")
            super().__init__()
        self.weight1 = UninitializedParameter()
        self.bias1 = UninitializedParameter()
        self.weight2 = UninitializedParameter()
        self.bias2 = UninitializedParameter()

    def reset_parameters(self) -> None:
        """Initialise like ``nn.Linear`` (Kaiming-uniform weights, uniform biases)."""
        if self.has_uninitialized_params():
            return
        for weight, bias in ((self.weight1, self.bias1), (self.weight2, self.bias2)):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(weight.shape[1])
            nn.init.uniform_(bias, -bound, bound)

    def initialize_parameters(self, x: Tensor, like: Tensor) -> None:  # type: ignore[override]
        """Materialise the weights for ``x``'s and ``like``'s channel counts."""
        if self.has_uninitialized_params():
            with torch.no_grad():
                c_in, c_out = x.shape[1], like.shape[1]
                self.weight1.materialize((c_out, c_in))
                self.bias1.materialize((c_out,))
                self.weight2.materialize((c_out, c_out))
                self.bias2.materialize((c_out,))
                self.reset_parameters()

    def forward(self, x: Tensor, like: Tensor) -> Tensor:
        """Return ``(B, C_like, ...)`` logits from ``x`` ``(B, C_x, ...)``."""
        h = F.relu(F.linear(x.movedim(1, -1), self.weight1, self.bias1))
        return F.linear(h, self.weight2, self.bias2).movedim(-1, 1)
