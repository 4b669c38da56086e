"""The single head pass of ``rep_grad`` leaves what the generic path leaves (issue 7 perf).

Each case runs one step through the default path (one backward through the heads, then the
encoder) and one through the generic path (``T`` head passes, then a hooked backward of the
summed losses), on identical models, and compares every ``.grad`` and the weights; graphs the
single pass cannot separate must fall back to the generic path.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from dwi_mtl.mtl.weighting import get_weighting, rep_passes

TASKS = ["a", "b", "c"]


class Net(nn.Module):
    """An encoder with two representation tensors and one head per task."""

    def __init__(self, shared_head: bool = False, skip: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.encoder = nn.Linear(4, 6)
        self.second = nn.Linear(4, 3)
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})
        self.joint = nn.Linear(6, len(TASKS))  # one node consumed by all tasks
        self.shared_head, self.skip = shared_head, skip

    def shared(self) -> list[Tensor]:
        return [*self.encoder.parameters(), *self.second.parameters()]

    def forward(self, absent: str | None = None) -> tuple[dict[str, Tensor], list[Tensor]]:
        x = torch.randn(10, 4, generator=torch.Generator().manual_seed(4))
        rep, other = torch.tanh(self.encoder(x)), torch.sigmoid(self.second(x))
        joint = self.joint(rep) if self.shared_head else None
        losses = {}
        for i, t in enumerate(TASKS):
            out = joint[:, i:i + 1] if joint is not None else self.heads[t](rep)
            value = (out * (1.0 + rep.mean())).square().mean()  # rep consumed twice
            if t == "b":
                value = value + other.sum() * 0.1
            if self.skip and t == "c":
                value = value + self.encoder.bias.sum()  # a shared parameter past the reps
            losses[t] = value.detach() if t == absent else value
        return losses, [rep, other]


def run(name: str, generic: bool, monkeypatch: pytest.MonkeyPatch, net_kwargs: dict,
        **kwargs) -> tuple[list[Tensor], Tensor, bool]:
    """One step; every parameter's gradient (zeros where None), the weights, fused or not."""
    calls: list[bool] = []
    original = rep_passes.head_pass

    def head_pass(*args):  # type: ignore[no-untyped-def]
        result = None if generic else original(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(rep_passes, "head_pass", head_pass)
    net = Net(**net_kwargs)
    method = get_weighting(name, TASKS, rep_grad=True)
    if kwargs.pop("pending", False):
        for p in net.parameters():
            p.grad = torch.full_like(p, 0.25)
    losses, reps = net(kwargs.pop("absent", None))
    weights = method.backward(losses, net.shared(), representation=reps, **kwargs)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
    return grads, weights.tensor, calls == [True]


CASES: dict[str, Callable[[], dict]] = {
    "plain": lambda: {},
    "pending gradients": lambda: {"pending": True},
    "a task absent": lambda: {"absent": "b"},
    "grad_scale": lambda: {"grad_scale": torch.tensor(8.0)},
}


@pytest.mark.parametrize("name", ["mgda", "upgrad", "imtl", "db_mtl", "pcgrad"])
@pytest.mark.parametrize("case", list(CASES))
def test_single_head_pass_equals_the_generic_path(
    name: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused, fused_w, was_fused = run(name, False, monkeypatch, {}, **CASES[case]())
    generic, generic_w, _ = run(name, True, monkeypatch, {}, **CASES[case]())
    assert was_fused
    torch.testing.assert_close(fused_w, generic_w, rtol=1e-5, atol=1e-7)
    for got, want in zip(fused, generic):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net_kwargs", [{"shared_head": True}, {"skip": True}],
                         ids=["one node for all tasks", "shared parameter past the reps"])
def test_inseparable_graphs_fall_back_to_the_generic_path(
    net_kwargs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused, fused_w, was_fused = run("upgrad", False, monkeypatch, net_kwargs)
    generic, generic_w, _ = run("upgrad", True, monkeypatch, net_kwargs)
    assert not was_fused
    torch.testing.assert_close(fused_w, generic_w)
    for got, want in zip(fused, generic):
        torch.testing.assert_close(got, want)


def test_a_representation_no_task_reaches_leaves_its_encoder_without_gradient() -> None:
    torch.manual_seed(0)
    encoder, unused_encoder = nn.Linear(3, 4), nn.Linear(3, 2)
    heads = [nn.Linear(4, 1), nn.Linear(4, 1)]
    x = torch.randn(5, 3)
    rep, unused = encoder(x), unused_encoder(x)
    losses = {"a": heads[0](rep).square().mean(), "b": heads[1](rep).abs().mean()}
    shared = [*encoder.parameters(), *unused_encoder.parameters()]
    get_weighting("mgda", ["a", "b"], rep_grad=True).backward(
        losses, shared, representation=[rep, unused])
    assert encoder.weight.grad is not None
    assert unused_encoder.weight.grad is None  # as with a plain backward
