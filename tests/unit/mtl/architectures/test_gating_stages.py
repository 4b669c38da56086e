"""Gate views, expert mixing and encoder stages for inputs of any shape (no img_size)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwi_mtl.models.streamline_encoders import PackedStreamlines, StreamlineEncoder
from dwi_mtl.mtl.architectures import MTAN, MMoE, get_architecture
from dwi_mtl.mtl.architectures.gating import gate_view, mix_experts
from dwi_mtl.mtl.architectures.stages import match_spatial, resolve_stages

from .cases import KWARGS, make_inputs, mlp_encoder


def test_gate_view_of_packed_streamlines_is_mean_first_last_per_streamline():
    points = torch.arange(12.0).reshape(6, 2)  # rows (0,1) (2,3) | (4,5) ... (10,11)
    batch = PackedStreamlines(points, torch.tensor([2, 4]))
    view = gate_view(batch)
    expected = torch.tensor([[1.0, 2.0, 0.0, 1.0, 2.0, 3.0], [7.0, 8.0, 4.0, 5.0, 10.0, 11.0]])
    torch.testing.assert_close(view, expected)
    with_inputs = PackedStreamlines(points, torch.tensor([2, 4]), inputs=torch.ones(6, 3))
    assert gate_view(with_inputs).shape == (2, 9)


def test_gate_view_of_tensors_pools_or_flattens():
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(gate_view(x), x.mean(dim=2))
    assert gate_view(x, "flatten").shape == (3, 20)
    assert gate_view(torch.randn(3)).shape == (3, 1)


def test_mix_experts_repeats_per_streamline_weights_along_points():
    lengths = torch.tensor([1, 3])
    stacked = torch.arange(8.0).reshape(2, 4, 1)  # 2 experts, 4 points
    weights = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    mixed = mix_experts(stacked, weights, lengths)
    torch.testing.assert_close(mixed.squeeze(1), torch.tensor([0.0, 4.0, 5.0, 6.0]))


def test_per_point_experts_with_per_streamline_gates():
    def encoder():
        return StreamlineEncoder(3, 8, nb_conv_layers=1, pooling="none")

    model = MMoE(["a"], encoder, {"a": nn.Linear(8, 3)}, False, False, "cpu", num_experts=2)
    batch = make_inputs("streamline", 0)
    assert model(batch)["a"].shape == (int(batch.lengths.sum()), 3)


@pytest.mark.parametrize(
    ("shape", "like", "expected"),
    [
        ((2, 3, 6), (2, 4), (2, 3)),
        ((2, 3, 8), (2, 4, 4), (2, 3, 4)),
        ((2, 3), (2, 4, 5), (2, 3, 5)),
    ],
)
def test_match_spatial_reaches_the_reference_shape(shape, like, expected):
    assert match_spatial(torch.randn(shape), torch.randn(like)).shape == expected


def test_match_spatial_values():
    x = torch.tensor([[[1.0, 3.0, 5.0, 7.0]]])
    torch.testing.assert_close(match_spatial(x, torch.zeros(1, 1, 2)), torch.tensor([[[2.0, 6.0]]]))
    torch.testing.assert_close(match_spatial(x, torch.zeros(1, 1)), torch.tensor([[4.0]]))
    up = match_spatial(torch.tensor([[[1.0, 2.0]]]), torch.zeros(1, 1, 4))
    torch.testing.assert_close(up, torch.tensor([[[1.0, 1.0, 2.0, 2.0]]]))
    image = match_spatial(torch.randn(2, 3, 8, 8), torch.zeros(2, 5, 4, 4))
    assert image.shape == (2, 3, 4, 4)


def test_named_stages_group_children_up_to_each_name():
    encoder = mlp_encoder()
    stages = resolve_stages(encoder, ["1", "3"], "test")
    assert [[type(m).__name__ for m in s] for s in stages] == [
        ["Linear", "ReLU"],
        ["Linear", "Tanh"],
    ]
    (single,) = resolve_stages(encoder, ["1"], "test")
    assert len(single) == 4


def test_staged_architectures_on_named_streamline_stages():
    batch = make_inputs("streamline", 0)
    for name in ("cross_stitch", "mtan", "ple"):
        cls = get_architecture(name)
        model = cls(
            ["a", "b"],
            lambda: StreamlineEncoder(3, 8, nb_conv_layers=2),
            {"a": nn.Linear(8, 1), "b": nn.Linear(8, 2)},
            True,
            False,
            "cpu",
            stages=["conv1", "pool"],
            **KWARGS[name],
        )
        out = model(batch)
        assert out["a"].shape == (4, 1) and out["b"].shape == (4, 2)
        assert model.get_representation()


def test_mtan_on_image_shaped_stages():
    def encoder():
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Flatten(1)
        )

    decoders = {"a": nn.LazyLinear(2), "b": nn.LazyLinear(1)}
    model = MTAN(["a", "b"], encoder, decoders, False, False, "cpu")
    out = model(torch.randn(2, 3, 8, 8))
    assert out["a"].shape == (2, 2) and out["b"].shape == (2, 1)


def test_gate_options_img_size_and_user_gate_network():
    x = make_inputs("mlp", 0)
    eager = MMoE(
        ["a"], mlp_encoder, {"a": nn.Linear(8, 1)}, False, False, "cpu", num_experts=2, img_size=[6]
    )
    assert isinstance(eager.gate_specific["a"][1], nn.Linear)
    assert eager.gate_specific["a"][1].in_features == 6
    user = MMoE(
        ["a"],
        mlp_encoder,
        {"a": nn.Linear(8, 1)},
        False,
        False,
        "cpu",
        num_experts=3,
        gate_network=lambda n: nn.Linear(6, n),
    )
    assert user(x)["a"].shape == (5, 1)
    assert user.gate_specific["a"].out_features == 3


@pytest.mark.parametrize("name", ["mmoe", "cgc", "ple", "dselect_k"])
def test_static_gates_give_the_same_weights_to_every_example(name):
    model = get_architecture(name)(
        ["a", "b"],
        lambda: StreamlineEncoder(3, 8, nb_conv_layers=1),
        {"a": nn.Linear(8, 1), "b": nn.Linear(8, 2)},
        False,
        False,
        "cpu",
        static_gate=True,
        **KWARGS[name],
    )
    batch = make_inputs("streamline", 0)
    out = model(batch)
    assert out["a"].shape == (4, 1) and out["b"].shape == (4, 2)
    if name == "mmoe":
        weights = model.expert_weights("a", batch)
        assert weights.shape == (4, 2) and torch.equal(weights, weights[:1].expand(4, -1))
