"""Multi-task attention network: task attention masks over the stages of a shared encoder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from dwi_mtl.mtl.architectures.abstract_arch import AbsArchitecture
from dwi_mtl.mtl.architectures.gating import packed_lengths
from dwi_mtl.mtl.architectures.stages import (
    LazyChannelMLP,
    align_to,
    check_stage_output,
    resolve_stages,
    run_stage,
)


class MTAN(AbsArchitecture):
    """Multi-Task Attention Network (MTAN).

    Proposed in Liu et al., "End-To-End Multi-Task Learning With Attention", CVPR 2019
    (https://openaccess.thecvf.com/content_CVPR_2019/papers/Liu_End-To-End_Multi-Task_Learning_With_Attention_CVPR_2019_paper.pdf),
    official code github.com/lorenmt/mtan.

    One shared encoder is run stage by stage. After stage ``s``, each task computes a soft mask
    ``sigmoid(mlp([x_s, resize(a_{s-1})]))`` from the shared features ``x_s`` and its own
    attended features of the previous stage, and keeps ``a_s = mask * x_s``; the decoder
    receives the last ``a_s``. The mask network is a two-layer channel MLP (1x1 convolution)
    whose widths are inferred at the first forward pass, and the previous attended features
    are resized to the current stage's shape, so any staged encoder works (not only ResNets):
    stage outputs ``(B, C)``, ``(B, C, L)``, ``(B, C, H, W)``, ...

    Keyword Args:
        stages (list[str]): top-level submodule names ending each stage (default: every child
            of an ``nn.Sequential`` encoder).

    Shared parameters: the encoder. Representation: every stage output (as seen by the
    attention modules, which are task-specific).
    """

    arch_name = "mtan"

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
        self.encoder = self._make_encoder()
        self._stages = resolve_stages(self.encoder, kwargs.get("stages"), "MTAN")
        self.attention = nn.ModuleDict(
            {t: nn.ModuleList(LazyChannelMLP() for _ in self._stages) for t in self.task_name}
        )
        self.to(self.device)

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Run the encoder stage by stage; each task attends to every stage output."""
        key = self._rep_key(tasks)
        attended: dict[str, Tensor | None] = {task: None for task in tasks}
        features = inputs
        lengths = packed_lengths(inputs)
        for index, stage in enumerate(self._stages):
            features = check_stage_output(run_stage(stage, features), "MTAN", index)
            (shared,) = self._record(key, features)
            for task in tasks:
                previous = attended[task]
                mask_in = (
                    shared
                    if previous is None
                    else torch.cat([shared, align_to(previous, shared, lengths)], dim=1)
                )
                mask = torch.sigmoid(
                    cast(nn.ModuleList, self.attention[task])[index](mask_in, shared)
                )
                attended[task] = mask * shared
        return {task: self.decoders[task](attended[task]) for task in tasks}

    def shared_modules(self) -> list[nn.Module | nn.Parameter]:
        """The encoder."""
        return [self.encoder]
