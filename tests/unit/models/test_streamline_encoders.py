"""StreamlineEncoder: padding-invariant encodings of packed variable-length streamlines."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.errors import ConfigError, DataError
from dwi_mtl.models import PackedStreamlines, StreamlineEncoder


def _batch(lengths, features=3, seed=0, with_inputs=False):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    points = torch.randn(int(lengths.sum()), 3, generator=gen)
    inputs = torch.randn(points.shape[0], features, generator=gen) if with_inputs else None
    return PackedStreamlines(points, lengths, inputs)


def _split(batch, index):
    """The streamline ``index`` of ``batch`` alone."""
    start = int(batch.lengths[:index].sum())
    end = start + int(batch.lengths[index])
    inputs = None if batch.inputs is None else batch.inputs[start:end]
    return PackedStreamlines(batch.points[start:end], batch.lengths[index : index + 1], inputs)


@pytest.mark.parametrize("pooling", ["mean", "gru", "none"])
def test_encoding_a_streamline_does_not_depend_on_its_batch(pooling):
    torch.manual_seed(0)
    encoder = StreamlineEncoder(3, 8, nb_conv_layers=2, kernel_size=3, pooling=pooling).eval()
    batch = _batch([2, 7, 4, 1])
    with torch.no_grad():
        together = encoder(batch)
        alone = [encoder(_split(batch, i)) for i in range(4)]
    expected_rows = int(batch.lengths.sum()) if pooling == "none" else 4
    assert together.shape == (expected_rows, 8)
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-6)


def test_stages_are_named_and_keep_padding_at_zero():
    encoder = StreamlineEncoder(3, 5, nb_conv_layers=2)
    assert [name for name, _ in encoder.named_children()] == ["pad", "conv1", "conv2", "pool"]
    batch = _batch([2, 4])
    padded = encoder.pad(batch)
    assert padded.shape == (2, 3, 4)
    hidden = encoder.conv2(encoder.conv1(padded))
    assert hidden.shape == (2, 5, 4) and not hidden[0, :, 2:].any()


def test_inputs_are_used_instead_of_points_or_with_them():
    batch = _batch([3, 2], features=4, with_inputs=True)
    assert StreamlineEncoder(4, 6)(batch).shape == (2, 6)
    assert StreamlineEncoder(7, 6, use_points=True)(batch).shape == (2, 6)
    with pytest.raises(DataError, match="expects 3 features per point.*\\(5, 4\\)"):
        StreamlineEncoder(3, 6)(batch)


def test_gru_pooling_without_convolutions_and_gradients_flow():
    encoder = StreamlineEncoder(3, 6, nb_conv_layers=0, pooling="gru")
    out = encoder(_batch([3, 5, 2]))
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert StreamlineEncoder(**encoder.get_config()).get_config() == encoder.get_config()


@pytest.mark.parametrize(
    ("lengths", "message"),
    [([3, 0], "positive counts"), ([3, 4], "sum to 7 but 'points' has 6 rows")],
)
def test_inconsistent_packed_batches_raise_data_errors(lengths, message):
    batch = PackedStreamlines(torch.randn(6, 3), torch.tensor(lengths))
    with pytest.raises(DataError, match=message):
        StreamlineEncoder(3, 4)(batch)
    with pytest.raises(DataError, match="packed batch with tensors"):
        StreamlineEncoder(3, 4)(torch.randn(6, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"nb_conv_layers": -1}, "nb_conv_layers must be >= 0"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        StreamlineEncoder(**kwargs)


def test_stages_refuse_to_run_before_pad():
    encoder = StreamlineEncoder(3, 4)
    with pytest.raises(ConfigError, match="after its 'pad' stage"):
        encoder.conv1(torch.randn(2, 3, 5))
