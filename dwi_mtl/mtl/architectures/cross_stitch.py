"""Cross-stitch networks: one encoder column per task, mixed linearly after each stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.architectures.abstract_arch import AbsArchitecture
from dwi_mtl.mtl.architectures.stages import Stage, check_stage_output, resolve_stages, run_stage


def cross_stitch_init(task_num: int, nb_stages: int, self_weight: float = 0.9) -> Tensor:
    """Initial mixing matrices ``(S, T, T)``: ``self_weight`` on the diagonal, the rest spread."""
    if task_num == 1:
        return torch.ones(nb_stages, 1, 1)
    other = (1.0 - self_weight) / (task_num - 1)
    matrix = torch.full((task_num, task_num), other)
    matrix.fill_diagonal_(self_weight)
    return matrix.repeat(nb_stages, 1, 1)


class Cross_stitch(AbsArchitecture):
    """Cross-stitch Networks (Cross_stitch).

    Proposed in Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016
    (https://openaccess.thecvf.com/content_cvpr_2016/papers/Misra_Cross-Stitch_Networks_for_CVPR_2016_paper.pdf).

    Each task has its own copy of the encoder (a column). After every stage, the columns'
    outputs are mixed by a learned ``T x T`` matrix (a cross-stitch unit): task ``t``'s next
    stage receives ``sum_s alpha[t, s] * x_s``. Any staged encoder works (not only ResNets), see
    :mod:`dwi_mtl.mtl.architectures.stages`; the columns' stage outputs must have equal shapes.

    Keyword Args:
        stages (list[str]): top-level submodule names ending each stage (default: every child
            of an ``nn.Sequential`` encoder).
        self_weight (float): initial diagonal of the mixing matrices (default 0.9).

    ``multi_input`` is refused: the columns exchange features, so the tasks must share inputs.
    Shared parameters: all columns and mixing matrices (every task depends on them).
    Representation: each task's mixed output of the last stage.
    """

    arch_name = "cross_stitch"

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
        self.encoder = nn.ModuleDict({t: self._make_encoder() for t in self.task_name})
        names = kwargs.get("stages")
        self._stages: dict[str, list[Stage]] = {
            t: resolve_stages(self.encoder[t], names, "Cross_stitch") for t in self.task_name
        }
        counts = {len(s) for s in self._stages.values()}
        if len(counts) != 1:
            raise ConfigError(f"Cross_stitch: encoder copies have different stage counts {counts}")
        self.nb_stages = counts.pop()
        self_weight = kwargs.get("self_weight", 0.9)
        if isinstance(self_weight, bool) or not isinstance(self_weight, (int, float)):
            raise ConfigError(f"Cross_stitch: self_weight must be a number, got {self_weight!r}")
        self.cross_unit = nn.Parameter(
            cross_stitch_init(self.task_num, self.nb_stages, float(self_weight))
        )
        self.to(self.device)

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Run the columns stage by stage, mixing them after each stage."""
        columns: list[Any] = [inputs] * self.task_num
        for index in range(self.nb_stages):
            outputs = [
                check_stage_output(run_stage(self._stages[t][index], x), "Cross_stitch", index)
                for t, x in zip(self.task_name, columns)
            ]
            shapes = {tuple(o.shape) for o in outputs}
            if len(shapes) != 1:
                raise ConfigError(f"Cross_stitch: stage {index} outputs differ in shape: {shapes}")
            mixed = torch.tensordot(self.cross_unit[index], torch.stack(outputs), dims=([1], [0]))
            columns = list(mixed.unbind(0))
        out = {}
        for task in tasks:
            (rep,) = self._record(task, columns[self.task_name.index(task)])
            out[task] = self.decoders[task](rep)
        return out

    def shared_modules(self) -> list[nn.Module | nn.Parameter]:
        """The columns and the cross-stitch units (everything but the decoders)."""
        return [self.encoder, self.cross_unit]
