"""DSelect-k: a mixture of experts whose gates select exactly k experts once trained."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.architectures.abstract_arch import positive_int
from dwi_mtl.mtl.architectures.mmoe import MMoE


def smooth_step(x: Tensor, gamma: float) -> Tensor:
    """The cubic smooth step of DSelect-k: 0 below ``-gamma/2``, 1 above ``gamma/2``, C1 between."""
    cubic = (-2.0 / gamma**3) * x**3 + (3.0 / (2.0 * gamma)) * x + 0.5
    return torch.where(
        x <= -gamma / 2, torch.zeros_like(x), torch.where(x >= gamma / 2, 1.0, cubic)
    )


class DSelect_k(MMoE):
    """DSelect-k (differentiable selection of k experts).

    Proposed in Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture of Experts
    with Applications to Multi-Task Learning", NeurIPS 2021
    (https://openreview.net/forum?id=tKlYQJLYN8v); the gate follows the authors' TensorFlow
    implementation (google-research/dselect_k_moe).

    Each task's gate has ``num_nonzeros`` selectors; a selector reads ``ceil(log2(E))`` logits
    through a smooth step and picks one expert by its binary code. Once the logits leave
    ``[-kgamma/2, kgamma/2]`` a selector is exactly one-hot, so at most ``num_nonzeros`` experts
    get a non-zero weight. The selectors are mixed by a softmax over ``num_nonzeros`` logits.

    Keyword Args:
        num_experts (int): number of shared experts (encoder copies).
        num_nonzeros (int): experts selected per task (``k``), at most ``num_experts``.
        kgamma (float): width of the smooth step (default 1.0).
        gate_network, gate_view, gate_input_dim, img_size: as in :class:`MMoE`.
    """

    arch_name = "dselect_k"

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
        num_experts = positive_int(kwargs, "num_experts")
        self.num_nonzeros = positive_int(kwargs, "num_nonzeros")
        if self.num_nonzeros > num_experts:
            raise ConfigError(
                f"DSelect_k: num_nonzeros ({self.num_nonzeros}) must not exceed num_experts "
                f"({num_experts})"
            )
        kgamma = kwargs.get("kgamma", 1.0)
        if isinstance(kgamma, bool) or not isinstance(kgamma, (int, float)) or kgamma <= 0:
            raise ConfigError(f"DSelect_k: kgamma must be a positive number, got {kgamma!r}")
        self.kgamma = float(kgamma)
        # As the authors: small logits, so that selectors start unsaturated (non-zero gradient).
        self.gate_init_scale = self.kgamma / 100
        self.num_binary = max(1, math.ceil(math.log2(num_experts)))
        self._last_selectors: dict[str, Tensor] = {}
        super().__init__(
            task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs
        )

    def _build_gates(self, make_gate: Callable[[int], nn.Module]) -> None:
        """Build per task the selector-code logits and the selector-mixing logits."""
        k, nb = self.num_nonzeros, self.num_binary
        self.z_logits = nn.ModuleDict({t: make_gate(k * nb) for t in self.task_name})
        self.w_logits = nn.ModuleDict({t: make_gate(k) for t in self.task_name})
        codes = [[(e >> b) & 1 for b in range(nb)] for e in range(self.num_experts)]
        self.register_buffer(
            "binary_codes", torch.tensor(codes, dtype=torch.bool), persistent=False
        )

    def selector_outputs(self, task: str, inputs: Any) -> Tensor:
        """Return the ``(B, k, E)`` expert probabilities of each selector of ``task``."""
        logits = self.z_logits[task](inputs)
        logits = logits.reshape(logits.shape[0], self.num_nonzeros, 1, self.num_binary)
        steps = smooth_step(logits, self.kgamma)
        codes = cast(Tensor, self.binary_codes)
        selectors = torch.where(codes, steps, 1.0 - steps).prod(dim=-1)
        self._last_selectors[task] = selectors
        return selectors

    def _forward_tasks(self, inputs: Any, tasks: list[str]) -> dict[str, Tensor]:
        """Forget the selectors of earlier passes (all, or the task being recomputed)."""
        if self.multi_input and len(tasks) == 1:
            self._last_selectors.pop(tasks[0], None)
        else:
            self._last_selectors = {}
        return super()._forward_tasks(inputs, tasks)

    def entropy_regularization(self, task_names: Iterable[str] | None = None) -> Tensor:
        """Return the selectors' mean entropy over the tasks of the last forward pass.

        The authors add ``entropy_reg * entropy`` to the training loss so that every selector
        converges to exactly one expert (a one-hot output) instead of stalling at a mixture
        near the optimum; add ``coefficient * model.entropy_regularization()`` to the loss to
        do the same (it is zero once the gates have converged).

        Args:
            task_names: restrict to these tasks (with ``multi_input``); default: all tasks
                computed since the last full forward pass.

        Raises:
            ConfigError: if no forward pass was run (for these tasks).
        """
        wanted = self._last_selectors if task_names is None else set(task_names)
        selected = [s for task, s in self._last_selectors.items() if task in wanted]
        if not selected:
            raise ConfigError("DSelect_k.entropy_regularization() needs a forward pass first")
        entropies = [-(s * torch.log(s.clamp(min=1e-12))).sum(dim=-1).mean() for s in selected]
        return torch.stack(entropies).sum()

    def expert_weights(self, task: str, inputs: Any) -> Tensor:
        """Return the ``(B, E)`` expert weights: selectors mixed by a softmax."""
        mixing = torch.softmax(self.w_logits[task](inputs), dim=-1)
        return torch.einsum("bk,bke->be", mixing, self.selector_outputs(task, inputs))
