"""rep_grad: per-task gradients at the representation follow the chain rule into the encoder."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.errors import ConfigError

from .cases import CASES, TASKS, build, case_id, make_inputs, task_losses

matrix = pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])


def _grads(outputs, inputs, grad_outputs=None):
    """Gradients of ``outputs`` w.r.t. ``inputs`` (zeros where unused), graph kept."""
    return torch.autograd.grad(
        outputs,
        inputs,
        grad_outputs=grad_outputs,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )


def _setup(case):
    name, encoder, multi = case
    model = build(name, encoder, multi, rep_grad=True)
    losses = task_losses(model, encoder, multi)
    return model, losses, model.get_representation()


@matrix
def test_representation_gradient_matches_shared_gradient_by_chain_rule(case):
    model, losses, reps = _setup(case)
    shared = model.get_share_params()
    for loss in losses.values():
        at_rep = _grads(loss, reps)
        through_rep = _grads(reps, shared, grad_outputs=at_rep)
        direct = _grads(loss, shared)
        for got, expected in zip(through_rep, direct):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@matrix
def test_no_task_parameter_lies_upstream_of_the_representation(case):
    model, _, reps = _setup(case)
    upstream = torch.autograd.grad(
        reps,
        model.get_task_params(),
        grad_outputs=[torch.ones_like(r) for r in reps],
        retain_graph=True,
        allow_unused=True,
    )
    assert all(g is None for g in upstream)


@matrix
def test_trainer_protocol_weights_the_shared_gradient_and_keeps_task_gradients(case):
    """The documented use: per-task grads at reps, combine, one backward with replacing hooks."""
    model, losses, reps = _setup(case)
    shared, task_params = model.get_share_params(), model.get_task_params()
    weights = {"a": 0.25, "b": 1.5}
    weighted = sum(weights[t] * losses[t] for t in TASKS)
    expected_shared = _grads(weighted, shared)
    expected_task = _grads(sum(losses.values()), task_params)
    per_task = {t: _grads(losses[t], reps) for t in TASKS}
    combined = [sum(weights[t] * per_task[t][i] for t in TASKS) for i in range(len(reps))]
    handles = [r.register_hook(lambda _, g=g: g) for r, g in zip(reps, combined)]
    sum(losses.values()).backward()
    for handle in handles:
        handle.remove()
    for param, expected in zip(shared, expected_shared):
        torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-6)
    for param, expected in zip(task_params, expected_task):
        torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-6)


def test_multi_input_representation_is_selected_per_task():
    model = build("hps", "mlp", multi_input=True, rep_grad=True)
    model(make_inputs("mlp", 0), "a")
    model(make_inputs("mlp", 1), "b")
    rep_a, rep_b = model.get_representation(["a"]), model.get_representation(["b"])
    assert len(rep_a) == len(rep_b) == 1 and rep_a[0] is not rep_b[0]
    assert len(model.get_representation()) == 2
    model(make_inputs("mlp", 2), "a")  # a new forward of task a replaces its representation
    assert model.get_representation(["a"])[0] is not rep_a[0]
    assert len(model.get_representation()) == 2


def test_representation_needs_rep_grad_and_a_forward_pass():
    with pytest.raises(ConfigError, match="rep_grad=False"):
        build("hps", "mlp").get_representation()
    model = build("hps", "mlp", rep_grad=True)
    with pytest.raises(ConfigError, match="forward"):
        model.get_representation()
    model(make_inputs("mlp", 0))
    model.clear_representation()
    with pytest.raises(ConfigError, match="forward"):
        model.get_representation()


def test_zero_grad_share_params_zeroes_only_shared_gradients():
    model = build("mmoe", "mlp")
    sum(task_losses(model, "mlp", False).values()).backward()
    model.zero_grad_share_params()
    assert all(p.grad is not None and not p.grad.any() for p in model.get_share_params())
    assert any(p.grad.any() for p in model.get_task_params())
