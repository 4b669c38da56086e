"""Progressive layered extraction: CGC levels stacked over the stages of the experts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.architectures.abstract_arch import SHARED_KEY, AbsArchitecture
from dwi_mtl.mtl.architectures.cgc import expert_counts
from dwi_mtl.mtl.architectures.gating import gate_factory, mix_experts, packed_lengths
from dwi_mtl.mtl.architectures.stages import Stage, check_stage_output, resolve_stages, run_stage


class PLE(AbsArchitecture):
    """Progressive Layered Extraction (PLE).

    Proposed in Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
    (MTL) Model for Personalized Recommendations", ACM RecSys 2020
    (https://dl.acm.org/doi/10.1145/3383313.3412236).

    Experts (shared, and specific to each task) are encoder copies cut into the same stages;
    level ``l`` is a CGC over stage ``l`` of every expert. Each task keeps its own stream (its
    gate mixes its experts and the shared ones) and a shared stream is mixed by a shared gate
    over all experts, except at the last level. Gates read the level's input stream through the
    gate view of :mod:`dwi_mtl.mtl.architectures.gating` (raw inputs at level 1), so any staged
    encoder and any input shape work (not only ResNets and images).

    Keyword Args:
        num_experts (int | list): as in :class:`CGC`.
        stages (list[str]): top-level submodule names ending each stage (levels).
        gate_network, gate_view, gate_input_dim, img_size: as in :class:`MMoE`; a user gate
            receives the level's stream (raw inputs at level 1, stage outputs after).

    ``multi_input`` is refused: the shared stream mixes all tasks' experts.
    Shared parameters: every parameter of the levels before the last (through the shared gates
    they influence every task) plus the last level's shared experts. Representation: the last
    level's shared expert outputs and the task streams entering the last level.
    """

    arch_name = "ple"

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
        self._forbid_multi_input()
        nb_shared, nb_specific = expert_counts(kwargs, self.task_name, "PLE")
        self.num_experts = {"share": nb_shared, **nb_specific}
        self.experts_shared = nn.ModuleList(self._make_encoder() for _ in range(nb_shared))
        self.experts_specific = nn.ModuleDict(
            {
                t: nn.ModuleList(self._make_encoder() for _ in range(n))
                for t, n in nb_specific.items()
            }
        )
        self._build_stages(kwargs.get("stages"))
        make_gate = gate_factory(kwargs)
        self.gate_specific = nn.ModuleDict(
            {
                t: nn.ModuleList(make_gate(nb_shared + n) for _ in range(self.nb_levels))
                for t, n in nb_specific.items()
            }
        )
        total = nb_shared + sum(nb_specific.values())
        self.gate_shared = nn.ModuleList(make_gate(total) for _ in range(self.nb_levels - 1))
        self.to(self.device)

    def _build_stages(self, names: list[str] | None) -> None:
        """Cut every expert into the same number of stages (the levels)."""
        self._shared_stages = [resolve_stages(e, names, "PLE") for e in self.experts_shared]
        self._specific_stages: dict[str, list[list[Stage]]] = {
            t: [resolve_stages(e, names, "PLE") for e in cast(nn.ModuleList, experts)]
            for t, experts in self.experts_specific.items()
        }
        counts = {len(s) for s in self._shared_stages}
        counts |= {len(s) for stages in self._specific_stages.values() for s in stages}
        if len(counts) != 1:
            raise ConfigError(f"PLE: the experts have different stage counts {counts}")
        self.nb_levels = counts.pop()

    def _experts(self, stages: list[list[Stage]], level: int, inputs: Any) -> Tensor:
        """Run stage ``level`` of each expert on ``inputs`` and stack the outputs."""
        return torch.stack(
            [check_stage_output(run_stage(s[level], inputs), "PLE", level) for s in stages]
        )

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Run the extraction levels, then decode each requested task's stream."""
        lengths = packed_lengths(inputs)
        shared_in: Any = inputs
        task_in: dict[str, Any] = {t: inputs for t in self.task_name}
        for level in range(self.nb_levels):
            last = level == self.nb_levels - 1
            shared_out = self._experts(self._shared_stages, level, shared_in)
            if last:
                shared_out, *streams = self._record(
                    SHARED_KEY, shared_out, *(task_in[t] for t in tasks)
                )
                task_in = dict(zip(tasks, streams))
            own_out, new_task_in = {}, {}
            for task in tasks if last else self.task_name:
                own_out[task] = self._experts(self._specific_stages[task], level, task_in[task])
                weights = torch.softmax(
                    cast(nn.ModuleList, self.gate_specific[task])[level](task_in[task]), dim=-1
                )
                both = torch.cat([own_out[task], shared_out])
                new_task_in[task] = mix_experts(both, weights, lengths)
            if not last:
                weights = torch.softmax(self.gate_shared[level](shared_in), dim=-1)
                everything = torch.cat([*own_out.values(), shared_out])
                shared_in = mix_experts(everything, weights, lengths)
            task_in = new_task_in
        return {task: self.decoders[task](task_in[task]) for task in tasks}

    def shared_modules(self) -> list[nn.Module | nn.Parameter]:
        """Everything before the last level, plus the last level's shared experts."""
        last = self.nb_levels - 1
        modules: list[nn.Module | nn.Parameter] = [self.gate_shared]
        for stages in self._shared_stages:
            modules.extend(m for stage in stages for m in stage)
        for task, experts in self._specific_stages.items():
            modules.extend(
                cast(nn.ModuleList, self.gate_specific[task])[level] for level in range(last)
            )
            modules.extend(m for stages in experts for stage in stages[:last] for m in stage)
        return modules
