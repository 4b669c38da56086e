"""A state_dict round trip mid-training gives identical next steps, for every method."""

from __future__ import annotations

import io

import pytest
import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import WEIGHTINGS, get_weighting

from .helpers import GRADIENT_BASED, TinyMTL, batch

TASKS = ["a", "b", "c"]

# Short step windows so DWA / GradNorm / STCH are past their warm-up when the state is saved.
WINDOWED = {"dwa": {"window": 2}, "gradnorm": {"window": 2}, "stch": {"window": 2, "warmup": 1}}

CASES = [(name, False) for name in WEIGHTINGS] + [(name, True) for name in GRADIENT_BASED]


def build(name: str, rep_grad: bool):
    kwargs = dict(WINDOWED.get(name, {}), seed=5)
    if rep_grad:
        kwargs["rep_grad"] = True
    method = get_weighting(name, TASKS, **kwargs)
    model = TinyMTL(TASKS, seed=1)
    optimizer = torch.optim.SGD(list(model.parameters()) + method.parameters(), lr=0.05)
    return method, model, optimizer


def train_step(method, model, optimizer, step: int) -> tuple[dict[str, float], list[torch.Tensor]]:
    optimizer.zero_grad(set_to_none=True)
    x, targets = batch(TASKS, step)
    losses, rep = model.losses(x, targets)
    weights = method.backward(losses, model.get_share_params(), representation=rep)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    grads += [p.grad.clone() for p in method.parameters() if p.grad is not None]
    optimizer.step()
    method.on_step_end({k: v.detach() for k, v in losses.items()})
    if step % 3 == 2:
        method.on_epoch_end(step // 3)
    return dict(weights), grads


def serialize(obj: dict) -> dict:
    """Round trip through torch.save/torch.load (what the trainer's checkpoint does)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize(("name", "rep_grad"), CASES)
def test_round_trip_mid_training_gives_identical_next_steps(name: str, rep_grad: bool) -> None:
    method, model, optimizer = build(name, rep_grad)
    for step in range(5):
        train_step(method, model, optimizer, step)
    saved = serialize(
        {"w": method.state_dict(), "m": model.state_dict(), "o": optimizer.state_dict()}
    )
    expected = [train_step(method, model, optimizer, step) for step in range(5, 8)]

    method2, model2, optimizer2 = build(name, rep_grad)
    method2.load_state_dict(saved["w"])
    model2.load_state_dict(saved["m"])
    optimizer2.load_state_dict(saved["o"])
    for (weights, grads), step in zip(expected, range(5, 8)):
        weights2, grads2 = train_step(method2, model2, optimizer2, step)
        assert weights2 == pytest.approx(weights, rel=1e-6, abs=1e-9)
        assert len(grads2) == len(grads)
        for g, g2 in zip(grads, grads2):
            torch.testing.assert_close(g2, g, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_state_holds_only_plain_values(name: str) -> None:
    method, model, optimizer = build(name, False)
    for step in range(4):
        train_step(method, model, optimizer, step)
    allowed = (int, float, str, bool, type(None), torch.Tensor)

    def check(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                check(v)
        elif isinstance(value, list | tuple):
            for v in value:
                check(v)
        elif isinstance(value, torch.Tensor):
            assert value.device.type == "cpu"
        else:
            assert isinstance(value, allowed) or type(value).__module__ == "numpy"

    check(method.state_dict())


def test_loading_a_state_of_other_tasks_is_refused() -> None:
    state = get_weighting("dwa", ["a", "b"]).state_dict()
    with pytest.raises(ConfigError, match="tasks"):
        get_weighting("dwa", ["a", "c"]).load_state_dict(state)
