"""Every architecture on a CUDA device (lazy gates, buffers, packed lengths move along)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwi_mtl.mtl.architectures import get_architecture

from .cases import CASES, KWARGS, TASKS, case_id, make_inputs, mlp_encoder, streamline_encoder

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_forward_backward_and_representation_on_cuda(case):
    name, encoder, multi = case
    factory = mlp_encoder if encoder == "mlp" else streamline_encoder
    decoders = {"a": nn.Linear(8, 2), "b": nn.Linear(8, 3)}
    model = get_architecture(name)(TASKS, factory, decoders, True, multi, "cuda", **KWARGS[name])
    inputs = make_inputs(encoder, 0).to("cuda")
    out = model(inputs)
    assert all(p.device.type == "cuda" for p in out.values())
    sum(p.square().mean() for p in out.values()).backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())
    assert all(r.is_cuda for r in model.get_representation())
