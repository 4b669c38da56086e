"""rep_grad end to end with the weightings of dwi_mtl.mtl.weighting (the trainer's protocol)."""

from __future__ import annotations

import pytest
import torch

from .cases import CASES, TASKS, build, case_id, task_losses

weighting = pytest.importorskip("dwi_mtl.mtl.weighting")


@pytest.mark.parametrize("method", ["upgrad"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_gradient_weighting_at_the_representation(case, method):
    name, encoder, multi = case
    model = build(name, encoder, multi, rep_grad=True)
    losses = task_losses(model, encoder, multi)
    shared, task_params = model.get_share_params(), model.get_task_params()
    own = torch.autograd.grad(
        sum(losses.values()), task_params, retain_graph=True, allow_unused=True
    )
    method_ = weighting.get_weighting(method, TASKS, rep_grad=True)
    weights = method_.backward(losses, shared, representation=model.get_representation())
    twin = build(name, encoder, multi)  # same initialisation, same inputs, plain autograd
    twin_losses = task_losses(twin, encoder, multi)
    weighted = sum(float(weights[t]) * twin_losses[t] for t in TASKS)
    expected = torch.autograd.grad(
        weighted, twin.get_share_params(), allow_unused=True, materialize_grads=True
    )
    for param, grad in zip(shared, expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)
    for param, grad in zip(task_params, own):
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-7)
