"""Every architecture x {MLP, streamline encoder} x {single, multi input}: the shared contract."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.architectures import ARCHITECTURES, AbsArchitecture, get_architecture

from .cases import CASES, OUT, TASKS, batch_size, build, case_id, make_inputs, task_losses

matrix = pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])


@matrix
def test_forward_gives_one_prediction_per_task_with_decoder_shapes(case):
    name, encoder, multi = case
    model = build(name, encoder, multi)
    assert isinstance(model, AbsArchitecture)
    inputs = make_inputs(encoder, 0)
    out = model(inputs)
    assert list(out) == TASKS
    for task, pred in out.items():
        assert pred.shape == (batch_size(inputs), OUT[task])
        assert torch.isfinite(pred).all()
    if multi:
        only_b = model(make_inputs(encoder, 3), "b")
        assert list(only_b) == ["b"]


@matrix
def test_gradients_reach_every_shared_and_task_parameter(case):
    name, encoder, multi = case
    model = build(name, encoder, multi)
    sum(task_losses(model, encoder, multi).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    shared_norm = sum(p.grad.norm() for p in model.get_share_params())
    assert shared_norm > 0
    for task in TASKS:
        assert model.decoders[task].weight.grad.norm() > 0


@matrix
def test_share_params_are_disjoint_from_task_params_and_cover_the_model(case):
    name, encoder, multi = case
    model = build(name, encoder, multi)
    task_losses(model, encoder, multi)  # materialise lazy gates / attention
    shared = {id(p) for p in model.get_share_params()}
    task = {id(p) for p in model.get_task_params()}
    decoder = {id(p) for p in model.decoders.parameters()}
    assert shared and len(shared) == len(model.get_share_params())
    assert not shared & decoder and not shared & task
    assert shared | task == {id(p) for p in model.parameters()}
    assert decoder <= task


@matrix
def test_task_parameters_serve_exactly_one_task(case):
    """A parameter outside get_share_params() receives gradient from one task only."""
    name, encoder, multi = case
    model = build(name, encoder, multi)
    losses = task_losses(model, encoder, multi)
    params = model.get_task_params()
    reached = torch.zeros(len(params), dtype=torch.int64)
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        reached += torch.tensor([g is not None for g in grads])
    assert reached.tolist() == [1] * len(params)


@matrix
def test_state_dict_round_trip_gives_identical_outputs(case):
    name, encoder, multi = case
    model = build(name, encoder, multi, seed=0)
    model(make_inputs(encoder, 0))  # materialise lazy modules before saving
    model.eval()
    fresh = build(name, encoder, multi, seed=123).eval()
    fresh.load_state_dict(model.state_dict())
    inputs = make_inputs(encoder, 5)
    with torch.no_grad():
        expected, got = model(inputs), fresh(inputs)
    for task in TASKS:
        assert torch.equal(expected[task], got[task])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_registry_returns_the_class_by_name_and_class_name(name):
    cls = get_architecture(name)
    assert ARCHITECTURES[name] == cls.__name__ and cls.arch_name == name
    assert get_architecture(cls.__name__) is cls
    assert cls.__doc__ and "Proposed in" in cls.__doc__ and "http" in cls.__doc__  # cites its paper


def test_registry_rejects_an_unknown_name():
    with pytest.raises(ConfigError, match="unknown architecture 'moe'.*hps"):
        get_architecture("moe")
