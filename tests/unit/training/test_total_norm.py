"""total_norm: the gradient norm the trainer logs and checks at every step."""

from __future__ import annotations

import math

import pytest
import torch

from dwi_mtl.training.optimization import GradientStepper, total_norm


def _grads(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def test_equals_the_norm_of_all_gradients_concatenated() -> None:
    grads = _grads((384, 128), (384,), (10, 384), (10,))
    flat = torch.cat([g.reshape(-1) for g in grads]).double()
    assert total_norm(grads) == pytest.approx(float(flat.norm()), rel=1e-6)


def test_matches_clip_grad_norm_reference() -> None:
    grads = _grads((7, 5), (5,))
    reference = float(torch.nn.utils.get_total_norm(grads))
    assert total_norm(grads) == pytest.approx(reference, rel=1e-6)


def test_no_gradients_have_a_zero_norm() -> None:
    assert total_norm([]) == 0.0


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_entry_makes_the_norm_non_finite(bad: float) -> None:
    grads = _grads((4, 3), (3,))
    grads[1][2] = bad
    assert not math.isfinite(total_norm(grads))


def test_nan_and_inf_together_are_still_non_finite() -> None:
    grads = _grads((4,), (4,))
    grads[0][0], grads[1][0] = math.nan, math.inf
    assert not math.isfinite(total_norm(grads))


def test_no_float32_overflow_when_combining_large_norms() -> None:
    # each norm fits in float32 (3.4e38); their float32 sum of squares would not
    grads = [torch.full((1,), 1.5e19) for _ in range(4)]
    assert total_norm(grads) == pytest.approx(3e19, rel=1e-6)


def test_stepper_logs_the_same_norm_before_and_after_without_clipping() -> None:
    model = torch.nn.Linear(3, 2)
    stepper = GradientStepper(torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))
    loss = model(torch.ones(4, 3)).pow(2).sum()
    stepper.backward(loss, {})
    before, after = stepper.grad_norm()
    expected = total_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert before == after == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_norms_are_combined_on_the_device() -> None:
    grads = [g.cuda() for g in _grads((64, 32), (32,))]
    reference = float(torch.cat([g.reshape(-1) for g in grads]).norm())
    assert total_norm(grads) == pytest.approx(reference, rel=1e-5)
