"""DSelect_k: the smooth step, and exact k-sparse selection once its gates converge."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.architectures import DSelect_k
from dwi_mtl.mtl.architectures.dselect_k import smooth_step

from .cases import build, make_inputs


def test_smooth_step_is_zero_one_outside_the_band_and_continuous_inside():
    gamma = 2.0
    x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    torch.testing.assert_close(smooth_step(x, gamma), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    inside = torch.linspace(-0.99, 0.99, 101)
    values = smooth_step(inside, gamma)
    assert (values.diff() > 0).all() and values.min() > 0 and values.max() < 1


def test_untrained_weights_are_a_distribution_over_at_most_the_experts():
    model = build("dselect_k", "mlp", num_experts=4, num_nonzeros=2)
    weights = model.expert_weights("a", make_inputs("mlp", 0))
    assert weights.shape == (5, 4)
    assert (weights >= 0).all() and (weights.sum(dim=1) <= 1 + 1e-6).all()


def _fixed_experts(matrix: torch.Tensor):
    """Factory of frozen linear experts, expert i computing ``x @ matrix[i]``."""
    counter = itertools.count()

    def make() -> nn.Module:
        expert = nn.Linear(matrix.shape[1], 1, bias=False)
        with torch.no_grad():
            expert.weight.copy_(matrix[next(counter)].unsqueeze(0))
        expert.weight.requires_grad_(False)
        return expert

    return make


@pytest.mark.parametrize("seed", [0, 1])
def test_gates_converge_to_exactly_num_nonzeros_experts(seed):
    """Two tasks, each the mix of two of four frozen experts: each gate keeps exactly those two."""
    torch.manual_seed(seed)
    matrix = torch.randn(4, 4)
    model = DSelect_k(
        ["a", "b"],
        _fixed_experts(matrix),
        {"a": nn.Identity(), "b": nn.Identity()},
        False,
        False,
        "cpu",
        num_experts=4,
        num_nonzeros=2,
        static_gate=True,
    )
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(seed + 1))
    experts = x @ matrix.t()
    targets = {
        "a": 0.7 * experts[:, 0:1] + 0.3 * experts[:, 2:3],
        "b": 0.5 * experts[:, 1:2] + 0.5 * experts[:, 3:4],
    }
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(200):
        out = model(x)
        loss = sum(((out[t] - targets[t]) ** 2).mean() for t in targets)
        loss = loss + 0.05 * model.entropy_regularization()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for task, chosen in (("a", [0, 2]), ("b", [1, 3])):
            weights = model.expert_weights(task, x)
            assert ((weights > 0).sum(dim=1) == 2).all()
            assert (weights[:, chosen] > 0).all()
            torch.testing.assert_close(weights.sum(dim=1), torch.ones(64))


def test_default_gates_start_unsaturated():
    """Gate logits start within the smooth step's band, so every selector can still learn."""
    model = build("dselect_k", "mlp", num_experts=4, num_nonzeros=2)
    x = make_inputs("mlp", 0)
    for gate in [model.z_logits["a"], model.z_logits["b"]]:
        assert gate(x).abs().max() < model.kgamma / 2


def test_invalid_hyper_parameters_raise_config_errors():
    with pytest.raises(
        ConfigError, match="num_nonzeros \\(4\\) must not exceed num_experts \\(3\\)"
    ):
        build("dselect_k", "mlp", num_experts=3, num_nonzeros=4)
    with pytest.raises(ConfigError, match="kgamma"):
        build("dselect_k", "mlp", kgamma=0)
    with pytest.raises(ConfigError, match="num_nonzeros"):
        build("dselect_k", "mlp", num_nonzeros=None)
    with pytest.raises(ConfigError, match="forward pass first"):
        build("dselect_k", "mlp").entropy_regularization()


def test_entropy_regularization_follows_the_latest_forward_of_each_task():
    model = build("dselect_k", "mlp", multi_input=True)
    model(make_inputs("mlp", 0), "a")
    first_a = model.entropy_regularization(["a"])
    model(make_inputs("mlp", 1), "b")
    model(make_inputs("mlp", 2), "a")
    assert not torch.equal(model.entropy_regularization(["a"]), first_a)
    total = model.entropy_regularization()
    torch.testing.assert_close(
        total, model.entropy_regularization(["a"]) + model.entropy_regularization(["b"])
    )
    total.backward()  # no stale graph from the first pass of task a
    with pytest.raises(ConfigError, match="forward pass first"):
        model.entropy_regularization(["c"])
