"""Invalid combinations and arguments raise one clear ConfigError naming the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.architectures import HPS, MMoE

from .cases import build, make_inputs, mlp_encoder


@pytest.mark.parametrize("name", ["cross_stitch", "ple"])
def test_multi_input_is_refused_where_tasks_exchange_features(name):
    with pytest.raises(ConfigError, match="does not support multi_input=True"):
        build(name, "mlp", multi_input=True)


@pytest.mark.parametrize("name", ["cross_stitch", "mtan", "ple"])
def test_unknown_stage_names_are_reported_with_the_available_ones(name):
    with pytest.raises(ConfigError, match=r"unknown stage module\(s\) \['layer9'\].*'0', '1'"):
        build(name, "mlp", stages=["1", "layer9"])


@pytest.mark.parametrize("name", ["cross_stitch", "mtan", "ple"])
def test_stage_names_out_of_order_are_refused(name):
    with pytest.raises(ConfigError, match="must follow the order"):
        build(name, "mlp", stages=["3", "1"])


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 8)
        self.second = nn.Linear(8, 8)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


@pytest.mark.parametrize("name", ["cross_stitch", "mtan", "ple"])
def test_non_sequential_encoder_needs_named_stages(name):
    decoders = {"a": nn.Linear(8, 2)}
    from dwi_mtl.mtl.architectures import get_architecture

    cls = get_architecture(name)
    kwargs = {"num_experts": 1} if name == "ple" else {}
    with pytest.raises(ConfigError, match="needs a staged encoder.*_Custom"):
        cls(["a"], _Custom, decoders, False, False, "cpu", **kwargs)
    model = cls(["a"], _Custom, decoders, False, False, "cpu", stages=["first", "second"], **kwargs)
    assert model(torch.randn(3, 6))["a"].shape == (3, 2)


def test_decoders_must_match_the_tasks():
    with pytest.raises(ConfigError, match=r"missing \['b'\], extra \['c'\]"):
        HPS(
            ["a", "b"],
            mlp_encoder,
            {"a": nn.Linear(8, 1), "c": nn.Linear(8, 1)},
            False,
            False,
            "cpu",
        )
    with pytest.raises(ConfigError, match="decoders\\['a'\\] must be an nn.Module"):
        HPS(["a"], mlp_encoder, {"a": "linear"}, False, False, "cpu")


@pytest.mark.parametrize("task_name", [[], "ab", ["a", "a"], ["a", ""]])
def test_bad_task_names_are_refused(task_name):
    with pytest.raises(ConfigError, match="task_name"):
        HPS(task_name, mlp_encoder, {}, False, False, "cpu")


def test_encoder_class_must_build_a_module():
    with pytest.raises(ConfigError, match="must build an nn.Module"):
        HPS(["a"], lambda: "encoder", {"a": nn.Linear(8, 1)}, False, False, "cpu")
    with pytest.raises(ConfigError, match="class or a factory"):
        HPS(["a"], 3, {"a": nn.Linear(8, 1)}, False, False, "cpu")


def test_forward_with_an_unknown_task_name():
    model = build("hps", "mlp", multi_input=True)
    with pytest.raises(ConfigError, match="task_name 'c' is not one of"):
        model(make_inputs("mlp", 0), "c")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("mmoe", {"num_experts": 0}, "num_experts' must be a positive integer"),
        ("mmoe", {"num_experts": None}, "missing architecture argument 'num_experts'"),
        (
            "cgc",
            {"num_experts": [1, 1, 1, 1]},
            "num_experts must be an int, \\[shared, specific\\]",
        ),
        ("ple", {"num_experts": [1, 0]}, "entries must be positive integers"),
        ("mmoe", {"gate_view": "median"}, "gate_view must be one of"),
        ("mmoe", {"gate_network": 3}, "gate_network must be a callable"),
        ("mmoe", {"gate_network": lambda n: None}, "must return an nn.Module"),
        ("mmoe", {"gate_input_dim": -1}, "gate_input_dim must be a positive integer"),
        ("cross_stitch", {"self_weight": "high"}, "self_weight must be a number"),
        ("mmoe", {"static_gate": "yes"}, "static_gate must be True or False"),
        ("mtan", {"stages": "1"}, "stages must be a non-empty list"),
    ],
)
def test_bad_hyper_parameters(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build(name, "mlp", **kwargs)


def test_gate_batch_that_cannot_match_the_experts():
    gate = lambda n: nn.Sequential(nn.Flatten(0), nn.LazyLinear(n), nn.Unflatten(0, (1, n)))  # noqa: E731
    model = MMoE(
        ["a"],
        mlp_encoder,
        {"a": nn.Linear(8, 1)},
        False,
        False,
        "cpu",
        num_experts=2,
        gate_network=gate,
    )
    with pytest.raises(ConfigError, match="gate gives 1 rows but the experts give 5"):
        model(make_inputs("mlp", 0))
