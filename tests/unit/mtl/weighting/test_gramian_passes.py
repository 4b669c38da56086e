"""The fused passes of Gramian methods leave what the generic path leaves (issue 7 performance).

Each case builds the same model twice and runs one step through the fused path (the default
for Gramian methods in loop mode) and one through the generic path (store every row, Gramian,
``w @ J``), then compares every ``.grad`` and the weights.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import get_weighting, gramian_passes
from dwi_mtl.mtl.weighting.abstract_weighting import GradientWeighting, GramianWeighting

TASKS = ["a", "b", "c"]


class Net(nn.Module):
    """A shared trunk with a side parameter only task ``a`` uses, an unused one, heads."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.trunk = nn.Linear(4, 6)
        self.side = nn.Parameter(torch.randn(6))  # reached by the first task only
        self.unused = nn.Parameter(torch.randn(3))  # reached by no task: zero gradient
        self.transposed = nn.Parameter(torch.randn(6, 5).t())  # non-contiguous gradients
        self.wide = nn.Parameter(torch.randn(70000) * 1e-2)  # the chunked CPU products
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in tasks})

    def shared(self) -> list[Tensor]:
        return [self.trunk.weight, self.side, self.unused, self.trunk.bias, self.transposed,
                self.wide]

    def losses(self, absent: str | None = None) -> dict[str, Tensor]:
        x = torch.randn(9, 4, generator=torch.Generator().manual_seed(1))
        rep = torch.tanh(self.trunk(x) + x[:, :1] @ (self.transposed.sum(0, keepdim=True)))
        rep = rep * (1.0 + self.wide.square().mean())
        out = {}
        for i, t in enumerate(self.heads):
            value = self.heads[t](rep).square().mean() * (i + 1)
            if t == "a":
                value = value + (rep * self.side).sum().square() * 1e-2
            out[t] = value.detach() if t == absent else value
        return out


def run(name: str, generic: bool, tasks: list[str], **kwargs) -> tuple[list[Tensor], Tensor]:
    """One step; returns every parameter's gradient (zeros where None) and the weights."""
    method = get_weighting(name, tasks)
    assert isinstance(method, GramianWeighting)
    if generic:
        method._parameter_mode = types.MethodType(  # type: ignore[method-assign]
            GradientWeighting._parameter_mode, method)
    net = Net(tasks)
    pending = kwargs.pop("pending", False)
    if pending:
        for p in net.shared():
            p.grad = torch.full_like(p, 0.5)
    weights = method.backward(net.losses(kwargs.pop("absent", None)), net.shared(), **kwargs)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
    return grads, weights.tensor


CASES: dict[str, Callable[[], dict]] = {
    "plain": lambda: {},
    "pending gradients": lambda: {"pending": True},
    "last task absent": lambda: {"absent": "c"},
    "first task absent": lambda: {"absent": "a"},
    "float grad_scale": lambda: {"grad_scale": 64.0},
    "tensor grad_scale": lambda: {"grad_scale": torch.tensor(0.25)},
}


@pytest.mark.parametrize("name", ["mgda", "upgrad", "pcgrad", "nash_mtl", "cagrad"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_and_generic_paths_leave_the_same_gradients(name: str, case: str) -> None:
    fused, fused_w = run(name, False, TASKS, **CASES[case]())
    generic, generic_w = run(name, True, TASKS, **CASES[case]())
    torch.testing.assert_close(fused_w, generic_w, rtol=1e-5, atol=1e-7)
    for got, want in zip(fused, generic):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_fused_path_is_taken_up_to_its_task_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = gramian_passes.gramian_backward

    def spy(losses, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(losses))
        return original(losses, *args, **kwargs)

    monkeypatch.setattr(gramian_passes, "gramian_backward", spy)
    for tasks in (TASKS, TASKS + ["d"]):
        run("upgrad", False, tasks)
    assert calls == [3] and gramian_passes.MAX_TASKS == 3


def test_one_task_gives_its_own_gradient() -> None:
    fused, weights = run("upgrad", False, ["a"])
    generic, _ = run("upgrad", True, ["a"])
    assert weights.shape == (1,)
    for got, want in zip(fused, generic):
        torch.testing.assert_close(got, want)


def test_a_non_leaf_shared_tensor_is_refused_and_gradients_are_left_untouched() -> None:
    net = Net(TASKS)
    pending = torch.ones_like(net.trunk.weight)
    net.trunk.weight.grad = pending
    with pytest.raises(ConfigError, match="not a leaf"):
        get_weighting("upgrad", TASKS).backward(net.losses(), [net.trunk.weight, net.side * 2])
    assert net.trunk.weight.grad is pending
