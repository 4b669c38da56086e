"""GradNormHooks: the norm taken in backward equals the one taken after it, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dwi_mtl.training.grad_norms import GradNormHooks
from dwi_mtl.training.optimization import GradientStepper


def _model() -> nn.Module:
    torch.manual_seed(0)
    # two weights above the hook threshold, the rest (biases, a small head) below it
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 3))


def _loss(model: nn.Module, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 64, generator=generator)
    y = torch.randint(0, 3, (16,), generator=generator)
    loss: torch.Tensor = nn.functional.cross_entropy(model(x), y)
    return loss


def _reference(params: list[torch.Tensor], hooks: GradNormHooks) -> torch.Tensor:
    """The same total computed without hooks (a fresh, never attached GradNormHooks)."""
    fresh = GradNormHooks(params, min_numel=hooks_min(hooks))
    total = fresh.total_norm()
    assert total is not None
    return total


def hooks_min(hooks: GradNormHooks) -> int:
    return min((hooks.params[i].numel() for i in hooks._big), default=1 << 62)


def test_hooks_record_the_large_gradients_only() -> None:
    model = _model()
    hooks = GradNormHooks(list(model.parameters()), min_numel=16384)
    assert [hooks.params[i].shape for i in hooks._big] == [(256, 64), (128, 256)]
    hooks.attach()
    hooks.attach()  # idempotent
    assert len(hooks._handles) == 2
    _loss(model, 0).backward()
    assert all(seen is not None for seen in hooks._seen)


def test_the_hooked_norm_equals_the_recomputed_one_and_foreach_bitwise() -> None:
    model = _model()
    params = list(model.parameters())
    hooks = GradNormHooks(params, min_numel=16384)
    hooks.attach()
    _loss(model, 0).backward()
    hooked = hooks.total_norm()
    assert hooked is not None
    assert torch.equal(hooked, _reference(params, hooks))
    foreach = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
    torch.testing.assert_close(hooked, foreach, rtol=1e-6, atol=0)


def test_accumulated_gradients_are_measured_after_the_last_backward() -> None:
    model = _model()
    params = list(model.parameters())
    hooks = GradNormHooks(params, min_numel=16384)
    hooks.attach()
    _loss(model, 0).backward()
    _loss(model, 1).backward()
    assert torch.equal(hooks.total_norm(), _reference(params, hooks))


def test_gradients_replaced_after_backward_are_recomputed() -> None:
    model = _model()
    params = list(model.parameters())
    hooks = GradNormHooks(params, min_numel=16384)
    hooks.attach()
    _loss(model, 0).backward()
    params[0].grad = params[0].grad * 3  # e.g. restored from a checkpoint mid-cycle
    params[2].grad = None  # released by user code
    total = hooks.total_norm()
    assert torch.equal(total, _reference(params, hooks))


def test_no_gradient_at_all_gives_none_and_a_partial_graph_counts_zeros() -> None:
    model = _model()
    params = list(model.parameters())
    hooks = GradNormHooks(params, min_numel=16384)
    hooks.attach()
    assert hooks.total_norm() is None
    model[4].weight.sum().backward()  # only the head gets gradients
    total = hooks.total_norm()
    assert total is not None
    assert torch.equal(total, torch.linalg.vector_norm(model[4].weight.grad))


def test_detach_removes_the_hooks_and_a_dead_owner_is_ignored() -> None:
    model = _model()
    hooks = GradNormHooks(list(model.parameters()), min_numel=16384)
    hooks.attach()
    hooks.detach()
    assert not hooks.attached
    _loss(model, 0).backward()
    assert all(seen is None for seen in hooks._seen)
    other = GradNormHooks(list(model.parameters()), min_numel=16384)
    other.attach()
    del other  # hooks left registered hold their owner weakly: backward still works
    _loss(model, 1).backward()


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_create_graph_gradients_are_not_recorded_but_still_measured() -> None:
    model = _model()
    params = list(model.parameters())
    hooks = GradNormHooks(params, min_numel=16384)
    hooks.attach()
    _loss(model, 0).backward(create_graph=True)
    assert all(seen is None for seen in hooks._seen)
    total = hooks.total_norm()
    assert total is not None and not total.requires_grad
    for p in params:
        p.grad = p.grad.detach()
    assert torch.equal(total, _reference(params, hooks))


def test_supported_only_for_cpu_parameters_of_one_floating_dtype() -> None:
    assert GradNormHooks.supported(list(_model().parameters()))
    assert not GradNormHooks.supported([])
    assert not GradNormHooks.supported([torch.zeros(2, requires_grad=True),
                                        torch.zeros(2, dtype=torch.float64, requires_grad=True)])


def _train(steps: int, clip: float | None, hooked: bool, accumulation: int = 1) -> list[float]:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stepper = GradientStepper(optimizer, list(model.parameters()), clip_grad=clip,
                              accumulation_steps=accumulation)
    if not hooked:
        stepper._norm_hooks = None
    norms = []
    for step in range(steps):
        stepper.backward(_loss(model, step), {})
        if stepper.step_due:
            norms.extend(stepper.grad_norm())
            stepper.step()
    stepper.close()
    norms.extend(float(p.detach().double().sum()) for p in model.parameters())
    return norms


@pytest.mark.parametrize(("clip", "accumulation"), [(None, 1), (0.05, 1), (None, 3), (0.05, 2)])
def test_the_stepper_trains_the_same_model_with_and_without_hooks(
    clip: float | None, accumulation: int
) -> None:
    hooked = _train(12, clip, True, accumulation)
    plain = _train(12, clip, False, accumulation)
    assert hooked == pytest.approx(plain, rel=1e-5)


def test_the_stepper_uses_hooks_for_a_plain_cpu_backward_only() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = GradientStepper(optimizer, list(model.parameters()))
    assert stepper._norm_hooks is not None
    stepper.backward(_loss(model, 0), {})
    assert stepper._norm_hooks.attached
    stepper.close()
    assert not stepper._norm_hooks.attached
    weighted = GradientStepper(optimizer, list(model.parameters()), weighting=object())
    assert weighted._norm_hooks is None


def test_a_mid_cycle_restore_measures_the_restored_gradients() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = GradientStepper(optimizer, list(model.parameters()), accumulation_steps=2)
    stepper.backward(_loss(model, 0), {})
    state = stepper.state_dict()
    expected = stepper.grad_norm()
    resumed_model = _model()
    resumed = GradientStepper(torch.optim.SGD(resumed_model.parameters(), lr=0.1),
                              list(resumed_model.parameters()), accumulation_steps=2)
    resumed.load_state_dict(state)
    assert resumed.grad_norm() == expected


def test_parameters_moved_to_another_dtype_fall_back_to_the_plain_norm() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = GradientStepper(optimizer, list(model.parameters()))
    assert stepper._norm_hooks is not None and stepper._norm_hooks.usable
    model.double()  # as a move to CUDA: the same parameter objects, other data
    assert not stepper._norm_hooks.usable
    stepper.backward(model(torch.randn(4, 64, dtype=torch.float64)).sum(), {})
    before, _ = stepper.grad_norm()
    expected = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
        [p.grad for p in model.parameters()])))
    assert before == pytest.approx(float(expected))
