"""Hard parameter sharing: one encoder shared by every task, one decoder per task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dwi_mtl.mtl.architectures.abstract_arch import AbsArchitecture


class HPS(AbsArchitecture):
    """Hard Parameter Sharing (HPS).

    Proposed in Caruana, "Multitask Learning: A Knowledge-Based Source of Inductive Bias",
    ICML 1993 (https://dl.acm.org/doi/10.5555/3091529.3091535). One encoder (built once by
    ``encoder_class``) feeds every decoder; its parameters are the shared ones and its output is
    the representation. Works with ``multi_input`` (the encoder is applied to each task's input).
    """

    arch_name = "hps"

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
        self.to(self.device)

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Encode once, record the representation, decode each requested task."""
        (rep,) = self._record(self._rep_key(tasks), self.encoder(inputs))
        return {task: self.decoders[task](rep) for task in tasks}

    def shared_modules(self) -> list[nn.Module | nn.Parameter]:
        """The encoder."""
        return [self.encoder]
