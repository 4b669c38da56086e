"""Loss-based methods against their closed forms, and their step/epoch windows."""

from __future__ import annotations

import math

import pytest
import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import get_weighting
from dwi_mtl.state import derive_torch_generator

TASKS = ["a", "b", "c"]


def leaf_losses(values: list[float]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Losses that are leaves, so their .grad is d(objective)/d(L_t)."""
    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    return dict(zip(TASKS, leaves)), leaves


def run(name: str, values: list[float], **kwargs: object):
    method = get_weighting(name, TASKS, **kwargs)
    losses, leaves = leaf_losses(values)
    weights = method.backward(losses, [])
    return method, weights, torch.stack([leaf.grad for leaf in leaves])


def test_ew_backpropagates_the_plain_sum() -> None:
    _, weights, grads = run("ew", [1.0, 2.0, 3.0])
    assert dict(weights) == {"a": 1.0, "b": 1.0, "c": 1.0}
    torch.testing.assert_close(grads, torch.ones(3, dtype=torch.float64))


def test_uw_matches_kendall_closed_form() -> None:
    method, weights, grads = run("uw", [1.0, 2.0, 3.0], init_log_var=0.3)
    expected = 1.0 / (2.0 * math.exp(0.3))
    assert list(weights.values()) == pytest.approx([expected] * 3)
    torch.testing.assert_close(grads, torch.full((3,), expected, dtype=torch.float64))
    # d/ds (L / (2 e^s) + s / 2) = -L / (2 e^s) + 1/2
    values = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(method.log_vars.grad, -values / (2 * math.exp(0.3)) + 0.5)
    assert method.parameters() == [method.log_vars]


def test_gls_is_the_geometric_mean() -> None:
    values = [1.0, 2.0, 4.0]
    _, weights, grads = run("gls", values)
    geometric = 8.0 ** (1 / 3)
    expected = [geometric / (3 * v) for v in values]
    torch.testing.assert_close(grads, torch.tensor(expected, dtype=torch.float64))
    assert list(weights.values()) == pytest.approx(expected)


def test_rlw_draws_softmax_normal_weights_from_seed_and_step() -> None:
    method, weights, grads = run("rlw", [1.0, 2.0, 3.0], seed=9)
    z = torch.randn(3, generator=derive_torch_generator(9, 0))
    expected = torch.softmax(z, dim=0)
    assert list(weights.values()) == pytest.approx(expected.tolist())
    torch.testing.assert_close(grads, expected.double())
    second = method.backward(leaf_losses([1.0, 2.0, 3.0])[0], [])
    assert list(second.values()) != list(weights.values())  # a new draw at step 1


def feed(method, values: list[float], steps: int) -> None:
    for _ in range(steps):
        method.on_step_end(dict(zip(TASKS, [torch.tensor(v) for v in values])))


def test_dwa_uses_equal_weights_then_ratios_of_step_windows() -> None:
    method = get_weighting("dwa", TASKS, window=2, temperature=2.0)
    assert list(method.backward(leaf_losses([1.0, 1.0, 1.0])[0], []).values()) == [1.0] * 3
    feed(method, [4.0, 4.0, 4.0], 2)
    feed(method, [2.0, 4.0, 8.0], 2)
    ratios = torch.tensor([0.5, 1.0, 2.0])
    expected = 3 * torch.softmax(ratios / 2.0, dim=0)
    weights, grads = run_existing(method, [1.0, 1.0, 1.0])
    assert list(weights.values()) == pytest.approx(expected.tolist())
    torch.testing.assert_close(grads, expected.double())


def run_existing(method, values: list[float]):
    losses, leaves = leaf_losses(values)
    weights = method.backward(losses, [])
    return weights, torch.stack([leaf.grad for leaf in leaves])


def test_dwa_epoch_windows_close_only_at_epoch_end() -> None:
    method = get_weighting("dwa", TASKS)
    feed(method, [4.0, 4.0, 4.0], 5)
    feed(method, [2.0, 2.0, 8.0], 5)
    assert method.windows.completed == 0
    method.on_epoch_end(0)
    feed(method, [1.0, 1.0, 1.0], 3)
    method.on_epoch_end(1)
    # epoch 0 mean: (3, 3, 6); epoch 1: (1, 1, 1) -> ratios (1/3, 1/3, 1/6)
    expected = 3 * torch.softmax(torch.tensor([1 / 3, 1 / 3, 1 / 6]) / 2.0, dim=0)
    weights, _ = run_existing(method, [1.0, 1.0, 1.0])
    assert list(weights.values()) == pytest.approx(expected.tolist(), rel=1e-6)


def test_stch_warmup_then_smooth_tchebycheff_with_the_nadir() -> None:
    method = get_weighting("stch", TASKS, mu=0.5, warmup=1, window=2)
    _, grads = run_existing(method, [1.0, 2.0, 4.0])
    torch.testing.assert_close(grads, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    feed(method, [2.0, 2.0, 2.0], 2)  # nadir = (2, 2, 2)
    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    _, grads = run_existing(method, values.tolist())
    normalized = torch.log(values / 2.0)
    softmax = torch.softmax(normalized / 0.5, dim=0)
    torch.testing.assert_close(grads, 3 * softmax / values, rtol=1e-6, atol=1e-9)


def test_famo_objective_and_logit_update() -> None:
    method = get_weighting("famo", TASKS, w_lr=0.1, gamma=0.0)
    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    _, grads = run_existing(method, values.tolist())
    # z uniform: objective sum(z log L) / c, c = sum(z / L) -> dObj/dL_t = z_t / (c L_t)
    z = torch.full((3,), 1 / 3, dtype=torch.float64)
    c = (z / (values + 1e-8)).sum()
    torch.testing.assert_close(grads, z / (c * (values + 1e-8)))
    new_values = [0.5, 2.0, 4.0]  # task a improved: its weight must go down
    run_existing(method, new_values)
    z_new = torch.softmax(method.logits.detach(), dim=0)
    assert z_new[0] < 1 / 3 < z_new[1] + 1e-6


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("dwa", {"temperature": 0}), ("dwa", {"window": 0}), ("dwa", {"window": "batch"}),
     ("stch", {"mu": 0}), ("stch", {"warmup": -1}), ("famo", {"w_lr": 0})],
)
def test_bad_arguments_raise_config_errors(name: str, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        get_weighting(name, TASKS, **kwargs)
