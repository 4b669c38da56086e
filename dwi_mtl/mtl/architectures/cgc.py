"""Customized gate control: shared experts plus experts specific to each task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.architectures.abstract_arch import AbsArchitecture
from dwi_mtl.mtl.architectures.gating import gate_factory, mix_experts, packed_lengths


def expert_counts(
    kwargs: Mapping[str, Any], tasks: list[str], owner: str
) -> tuple[int, dict[str, int]]:
    """Parse ``num_experts`` into (shared count, {task: specific count}).

    Accepted forms: an int (same count for the shared pool and each task), ``[shared,
    specific]``, or LibMTL's ``[shared, task_1, ..., task_T]``.

    Raises:
        ConfigError: for a missing value, a wrong length or a non-positive count.
    """
    value = kwargs.get("num_experts")
    if isinstance(value, int) and not isinstance(value, bool):
        counts = [value, value]
    elif isinstance(value, (list, tuple)) and len(value) in (2, 1 + len(tasks)):
        counts = list(value)
    else:
        raise ConfigError(
            f"{owner}: num_experts must be an int, [shared, specific] or [shared, one per task "
            f"({len(tasks)})], got {value!r}"
        )
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ConfigError(f"{owner}: num_experts entries must be positive integers, got {value!r}")
    specific = counts[1:] if len(counts) == 1 + len(tasks) else counts[1:] * len(tasks)
    return counts[0], dict(zip(tasks, specific))


class CGC(AbsArchitecture):
    """Customized Gate Control (CGC).

    Proposed in Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
    (MTL) Model for Personalized Recommendations", ACM RecSys 2020
    (https://dl.acm.org/doi/10.1145/3383313.3412236).

    Shared experts serve every task; each task also owns experts. A task's gate weighs its own
    experts and the shared ones. Experts are encoder copies; gates as in :class:`MMoE` (any
    input, no ``img_size``).

    Keyword Args:
        num_experts (int | list): see :func:`expert_counts`.
        gate_network, gate_view, gate_input_dim, img_size: as in :class:`MMoE`.

    Shared parameters: the shared experts. Representation: their stacked outputs.
    """

    arch_name = "cgc"

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
        nb_shared, nb_specific = expert_counts(kwargs, self.task_name, "CGC")
        self.num_experts = {"share": nb_shared, **nb_specific}
        self.experts_shared = nn.ModuleList(self._make_encoder() for _ in range(nb_shared))
        self.experts_specific = nn.ModuleDict(
            {
                t: nn.ModuleList(self._make_encoder() for _ in range(n))
                for t, n in nb_specific.items()
            }
        )
        make_gate = gate_factory(kwargs)
        self.gate_specific = nn.ModuleDict(
            {t: make_gate(nb_shared + n) for t, n in nb_specific.items()}
        )
        self.to(self.device)

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Run the shared experts once, then each task's experts and gate."""
        shared = torch.stack([expert(inputs) for expert in self.experts_shared])
        (rep,) = self._record(self._rep_key(tasks), shared)
        lengths = packed_lengths(inputs)
        out = {}
        for task in tasks:
            own = torch.stack(
                [expert(inputs) for expert in cast(nn.ModuleList, self.experts_specific[task])]
            )
            weights = torch.softmax(self.gate_specific[task](inputs), dim=-1)
            out[task] = self.decoders[task](mix_experts(torch.cat([own, rep]), weights, lengths))
        return out

    def shared_modules(self) -> list[nn.Module | nn.Parameter]:
        """The shared experts."""
        return [self.experts_shared]
