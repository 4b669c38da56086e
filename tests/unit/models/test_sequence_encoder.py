"""CausalSequenceEncoder: per-point features that never look at the points that follow."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.models.sequence_encoder import CausalSequenceEncoder
from dwi_mtl.models.streamline_encoders import PackedStreamlines


def _packed(lengths: list[int], features: int = 4, seed: int = 0) -> PackedStreamlines:
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return PackedStreamlines(torch.randn(total, 3, generator=generator),
                             torch.tensor(lengths),
                             torch.randn(total, features, generator=generator))


def _inputs(batch: PackedStreamlines) -> torch.Tensor:
    assert batch.inputs is not None
    return batch.inputs


@pytest.mark.parametrize(("nb_conv", "nb_gru"), [(2, 1), (0, 1), (2, 0)])
def test_output_is_causal_and_packed(nb_conv: int, nb_gru: int) -> None:
    torch.manual_seed(0)
    encoder = CausalSequenceEncoder(4, hidden_size=6, nb_conv_layers=nb_conv, kernel_size=3,
                                    nb_gru_layers=nb_gru)
    batch = _packed([5, 7, 2])
    out = encoder(batch)
    assert out.shape == (14, 6) and encoder.out_features == 6
    inputs = _inputs(batch).clone()
    inputs[5 + 4:5 + 7] += 10.0  # points 4..6 of the second streamline
    again = encoder(PackedStreamlines(batch.points, batch.lengths, inputs))
    assert torch.equal(out[:5 + 4], again[:5 + 4])  # first streamline and points 0..3 intact
    assert not torch.allclose(out[5 + 4:12], again[5 + 4:12])
    assert torch.equal(out[12:], again[12:])


def test_a_streamline_does_not_depend_on_its_batch() -> None:
    torch.manual_seed(1)
    encoder = CausalSequenceEncoder(4, hidden_size=5, nb_conv_layers=1, nb_gru_layers=1)
    batch = _packed([3, 8])
    alone = PackedStreamlines(batch.points[:3], batch.lengths[:1], _inputs(batch)[:3])
    torch.testing.assert_close(encoder(batch)[:3], encoder(alone))


def test_use_points_and_config_round_trip() -> None:
    torch.manual_seed(2)
    encoder = CausalSequenceEncoder(7, hidden_size=4, use_points=True)
    copy = CausalSequenceEncoder(**encoder.get_config())
    copy.load_state_dict(encoder.state_dict())
    batch = _packed([4, 3])
    assert torch.equal(encoder(batch), copy(batch))
    assert list(encoder._modules) == ["pad", "conv1", "gru", "points"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"hidden_size": 0}, "hidden_size"), ({"kernel_size": 0}, "kernel_size"),
     ({"nb_conv_layers": -1}, "nb_conv_layers"), ({"nb_gru_layers": 1.5}, "nb_gru_layers"),
     ({"nb_conv_layers": 0, "nb_gru_layers": 0}, "both 0")],
)
def test_bad_arguments_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CausalSequenceEncoder(4, **kwargs)


def test_previous_directions_come_from_past_points_only() -> None:
    torch.manual_seed(3)
    encoder = CausalSequenceEncoder(4 + 6, hidden_size=5, nb_previous_dirs=2)
    assert encoder.get_config()["nb_previous_dirs"] == 2
    batch = _packed([6])
    out = encoder(batch)
    moved = PackedStreamlines(batch.points.clone(), batch.lengths, batch.inputs)
    moved.points[4] += 1.0  # changes the steps arriving at points 4 and 5
    again = encoder(moved)
    assert torch.equal(out[:4], again[:4]) and not torch.allclose(out[4:], again[4:])
    with pytest.raises(Exception, match="expects 4 features"):
        CausalSequenceEncoder(4, hidden_size=5, nb_previous_dirs=2)(batch)
