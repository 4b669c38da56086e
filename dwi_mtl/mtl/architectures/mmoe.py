"""Multi-gate mixture of experts: shared expert encoders, one softmax gate per task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.mtl.architectures.abstract_arch import AbsArchitecture, positive_int
from dwi_mtl.mtl.architectures.gating import gate_factory, mix_experts, packed_lengths


class MMoE(AbsArchitecture):
    """Multi-gate Mixture-of-Experts (MMoE).

    Proposed in Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
    Mixture-of-Experts", KDD 2018 (https://dl.acm.org/doi/10.1145/3219819.3220007).

    Each expert is a copy of the encoder (``encoder_class()`` called ``num_experts`` times); each
    task's gate turns the input into softmax weights over the experts and the task's decoder
    receives the weighted sum of the expert outputs. Unlike LibMTL, no ``img_size`` is needed:
    the default gate reads a flattened/pooled view of any input (see
    :mod:`dwi_mtl.mtl.architectures.gating`).

    Keyword Args:
        num_experts (int): number of shared experts.
        gate_network (callable): optional factory ``num_outputs -> nn.Module`` replacing the
            default gate (it receives the raw inputs and returns ``(B, num_outputs)`` logits).
        gate_view (str): ``"pool"`` (default) or ``"flatten"`` for inputs of more than 2 dims.
        gate_input_dim (int): width of the gate view, to build the gate eagerly.
        img_size (list): LibMTL's argument; implies ``gate_view="flatten"`` of that size.

    Shared parameters: the experts. Representation: the stacked expert outputs ``(E, B, ...)``.
    """

    arch_name = "mmoe"
    #: Uniform initialisation range of the default gates (None: torch's default).
    gate_init_scale: float | None = None

    def __init__(
        self,
        task_name: list[str],
        encoder_class: Callable[[], nn.Module],
        decoders: Mapping[str, nn.Module],
        rep_grad: bool,
        multi_input: bool,
        device: str | torch.device,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs
        )
        self.num_experts = positive_int(kwargs, "num_experts")
        self.experts_shared = nn.ModuleList(self._make_encoder() for _ in range(self.num_experts))
        self._build_gates(gate_factory(kwargs, self.gate_init_scale))
        self.to(self.device)

    def _build_gates(self, make_gate: Callable[[int], nn.Module]) -> None:
        """Build one softmax gate over the experts per task."""
        self.gate_specific = nn.ModuleDict({t: make_gate(self.num_experts) for t in self.task_name})

    def expert_weights(self, task: str, inputs: Any) -> Tensor:
        """Return the ``(B, num_experts)`` weights ``task`` gives the experts for ``inputs``."""
        return torch.softmax(self.gate_specific[task](inputs), dim=-1)

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Run every expert once, then mix their outputs with each task's gate."""
        stacked = torch.stack([expert(inputs) for expert in self.experts_shared])
        (rep,) = self._record(self._rep_key(tasks), stacked)
        lengths = packed_lengths(inputs)
        return {
            task: self.decoders[task](mix_experts(rep, self.expert_weights(task, inputs), lengths))
            for task in tasks
        }

    def shared_modules(self) -> list[nn.Module | nn.Parameter]:
        """The experts."""
        return [self.experts_shared]
