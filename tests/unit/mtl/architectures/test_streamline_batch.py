"""The pipeline's StreamlineBatch (packed points, lengths, inputs) through every architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwi_mtl.models import StreamlineEncoder
from dwi_mtl.mtl.architectures import ARCHITECTURES, get_architecture
from dwi_mtl.training.batch import StreamlineBatch

from .cases import KWARGS


def _batch() -> StreamlineBatch:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 8])
    nb_points = int(lengths.sum())
    points = torch.rand(nb_points, 3, generator=gen) * 10
    return StreamlineBatch(
        points=points,
        lengths=lengths,
        subject_indices=torch.zeros(3, dtype=torch.int64),
        streamline_ids=torch.arange(3),
        directions=torch.randn(nb_points - 3, 3, generator=gen),
        inputs=torch.randn(nb_points, 4, generator=gen),
    )


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("pooling", ["mean", "none"])
def test_streamline_batch_through_every_architecture(name, pooling):
    batch = _batch()
    torch.manual_seed(0)
    model = get_architecture(name)(
        ["bundle", "direction"],
        lambda: StreamlineEncoder(4, 6, nb_conv_layers=1, pooling=pooling),
        {"bundle": nn.Linear(6, 5), "direction": nn.Linear(6, 3)},
        True,
        False,
        "cpu",
        **KWARGS[name],
    )
    out = model(batch)
    rows = 3 if pooling == "mean" else batch.nb_points
    assert out["bundle"].shape == (rows, 5) and out["direction"].shape == (rows, 3)
    sum(p.square().mean() for p in out.values()).backward()
    assert all(p.grad is not None for p in model.get_share_params())
    assert model.get_representation()
