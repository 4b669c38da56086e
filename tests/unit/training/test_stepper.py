"""GradientStepper with MTL weightings: step-end hook, unscaled losses, rep_grad, lazy weights."""

from __future__ import annotations

import pytest
import torch

from dwi_mtl.mtl.weighting import get_weighting
from dwi_mtl.training.optimization import GradientStepper

TASKS = ["a", "b"]


class TwoHeads(torch.nn.Module):
    """A shared linear encoder, two linear heads; records its representation (rep_grad)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(3, 4)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1) for t in TASKS})
        self.rep: torch.Tensor | None = None

    def get_share_params(self) -> list[torch.nn.Parameter]:
        return list(self.encoder.parameters())

    def get_representation(self, task_names: list[str]) -> list[torch.Tensor]:
        assert self.rep is not None
        return [self.rep]

    def clear_representation(self) -> None:
        self.rep = None

    def losses(self, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        self.rep = torch.tanh(self.encoder(x))
        return {t: scale * (self.heads[t](self.rep) - i).pow(2).mean()
                for i, t in enumerate(TASKS)}


def _stepper(model: TwoHeads, weighting: object, **kwargs: object) -> GradientStepper:
    extra = list(weighting.parameters())  # type: ignore[attr-defined]
    optimizer = torch.optim.SGD(list(model.parameters()) + extra, lr=0.1)
    return GradientStepper(optimizer, list(model.parameters()), model.get_share_params(),
                           weighting=weighting, model=model, notify_step_end=True,
                           **kwargs)  # type: ignore[arg-type]


def _batches(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, generator=generator) for _ in range(n)]


def test_on_step_end_receives_the_cycle_mean_losses() -> None:
    model = TwoHeads()
    weighting = get_weighting("dwa", TASKS, window=2)
    stepper = _stepper(model, weighting, accumulation_steps=2)
    seen = []
    for x in _batches(8):
        losses = model.losses(x)
        seen.append({k: float(v.detach()) for k, v in losses.items()})
        stepper.backward(sum(losses.values()), losses)  # type: ignore[arg-type]
        if stepper.step_due:
            stepper.grad_norm()
            stepper.step()
    assert weighting.windows.completed == 2  # 4 optimizer steps, windows of 2: out of warm-up
    assert not torch.equal(weighting.current_weights(), torch.ones(2))
    first_window = weighting.windows.last[0]
    expected = [sum(s[t] for s in seen[:4]) / 4 for t in TASKS]  # 2 steps x 2 batches
    torch.testing.assert_close(first_window.double(), torch.tensor(expected, dtype=torch.float64))


def test_weighting_sees_unscaled_losses_under_accumulation() -> None:
    """UW is not homogeneous in the loss scale: its log-variance gradient shows the scaling."""
    model = TwoHeads()
    weighting = get_weighting("uw", TASKS)
    stepper = _stepper(model, weighting, accumulation_steps=2)
    values = []
    for x in _batches(2):
        losses = model.losses(x)
        values.append(torch.stack([v.detach() for v in losses.values()]))
        stepper.backward(sum(losses.values()), losses)  # type: ignore[arg-type]
    s = weighting.log_vars.detach()
    # mean over the cycle of d/ds [L / (2 e^s) + s / 2] = mean(0.5 - L e^-s / 2)
    expected = sum(0.5 - v * torch.exp(-s) / 2 for v in values) / 2
    torch.testing.assert_close(weighting.log_vars.grad, expected)


def test_accumulated_gradient_is_the_mean_of_the_batches() -> None:
    reference, model = TwoHeads(), TwoHeads()
    stepper = _stepper(model, get_weighting("mgda", TASKS), accumulation_steps=2)
    ref_stepper = _stepper(reference, get_weighting("mgda", TASKS))
    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for x in _batches(2):
        losses = model.losses(x)
        stepper.backward(sum(losses.values()), losses)  # type: ignore[arg-type]
        ref_losses = reference.losses(x)
        ref_stepper.backward(sum(ref_losses.values()), ref_losses)  # type: ignore[arg-type]
        for acc, p in zip(expected, reference.parameters(), strict=True):
            acc += p.grad / 2
        ref_stepper.discard()
    for acc, p in zip(expected, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, acc)


def test_rep_grad_weighting_gets_the_model_representation() -> None:
    rep_model, param_model = TwoHeads(), TwoHeads()
    rep_stepper = _stepper(rep_model, get_weighting("mgda", TASKS, rep_grad=True))
    param_stepper = _stepper(param_model, get_weighting("ew", TASKS))
    x = _batches(1)[0]
    losses = rep_model.losses(x)
    weights = rep_stepper.backward(sum(losses.values()), losses)  # type: ignore[arg-type]
    assert set(weights) == set(TASKS)
    assert rep_model.rep is None  # released after the backward
    assert all(p.grad is not None for p in rep_model.parameters())
    ref = param_model.losses(x)
    param_stepper.backward(sum(ref.values()), ref)  # type: ignore[arg-type]
    for p, q in zip(rep_model.heads.parameters(), param_model.heads.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)  # heads: their own task's gradient


def test_an_explicit_representation_is_used_and_left_to_its_owner() -> None:
    given, from_model = TwoHeads(), TwoHeads()
    given_stepper = _stepper(given, get_weighting("mgda", TASKS, rep_grad=True))
    model_stepper = _stepper(from_model, get_weighting("mgda", TASKS, rep_grad=True))
    x = _batches(1)[0]
    losses = given.losses(x)
    assert given.rep is not None
    representation = [given.rep]
    given_stepper.backward(sum(losses.values()), losses,  # type: ignore[arg-type]
                           representation=representation)
    assert given.rep is representation[0]  # the engine that recorded it releases it
    assert given_stepper.nb_accumulated == 1
    ref = from_model.losses(x)
    model_stepper.backward(sum(ref.values()), ref)  # type: ignore[arg-type]
    for p, q in zip(given.parameters(), from_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_task_weights_stay_lazy_until_logged() -> None:
    model = TwoHeads()
    stepper = _stepper(model, get_weighting("dwa", TASKS))
    losses = model.losses(_batches(1)[0])
    weights = stepper.backward(sum(losses.values()), losses)  # type: ignore[arg-type]
    assert weights._values is None  # type: ignore[attr-defined]  # no host copy in the step
    assert dict(weights) == {"a": 1.0, "b": 1.0}


def test_mid_cycle_state_restores_the_cycle_losses() -> None:
    model = TwoHeads()
    weighting = get_weighting("dwa", TASKS, window=1)
    stepper = _stepper(model, weighting, accumulation_steps=2)
    x1, x2 = _batches(2)
    losses = model.losses(x1)
    stepper.backward(sum(losses.values()), losses)  # type: ignore[arg-type]
    state = stepper.state_dict()
    other_weighting = get_weighting("dwa", TASKS, window=1)
    other_model = TwoHeads()
    other = _stepper(other_model, other_weighting, accumulation_steps=2)
    other.load_state_dict(state)
    for s, m in ((stepper, model), (other, other_model)):
        s.backward(sum(m.losses(x2).values()), m.losses(x2))  # type: ignore[arg-type]
        s.grad_norm()
        s.step()
    torch.testing.assert_close(weighting.windows.last[0], other_weighting.windows.last[0])


def test_without_notify_step_end_the_hook_is_left_to_the_engine() -> None:
    model = TwoHeads()
    weighting = get_weighting("dwa", TASKS, window=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = GradientStepper(optimizer, list(model.parameters()), weighting=weighting)
    losses = model.losses(_batches(1)[0])
    stepper.backward(sum(losses.values()), losses)  # type: ignore[arg-type]
    stepper.step()
    assert weighting.windows.completed == 0


@pytest.mark.parametrize("steps", [1, 3])
def test_plain_loss_accumulation_is_unchanged(steps: int) -> None:
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = GradientStepper(optimizer, list(model.parameters()), accumulation_steps=steps)
    x = _batches(1)[0]
    loss = sum(model.losses(x).values())
    stepper.backward(loss, {})  # type: ignore[arg-type]
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (sum(model.losses(x).values()) / steps).backward()  # type: ignore[union-attr]
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_rep_grad_with_a_real_mtl_architecture() -> None:
    """An HPS architecture built with rep_grad: the stepper hands its representation over."""
    from tests.unit.mtl.architectures.cases import TASKS as ARCH_TASKS
    from tests.unit.mtl.architectures.cases import build, task_losses

    model, twin = build("hps", "mlp", rep_grad=True), build("hps", "mlp", rep_grad=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = GradientStepper(optimizer, list(model.parameters()), model.get_share_params(),
                              weighting=get_weighting("mgda", ARCH_TASKS, rep_grad=True),
                              model=model)
    losses = task_losses(model, "mlp", False)
    stepper.backward(torch.stack(list(losses.values())).sum(), losses)
    twin_losses = task_losses(twin, "mlp", False)
    get_weighting("mgda", ARCH_TASKS, rep_grad=True).backward(
        twin_losses, twin.get_share_params(), representation=twin.get_representation())
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_gradients_live_until_the_next_cycle_starts_or_the_phase_ends():
    """Canonical order (zero_grad, forward, backward, step): a step keeps its gradients, the
    next cycle's first backward replaces them (no accumulation into stale ones), and
    ``release_gradients`` frees them at the end of a training phase."""
    model = TwoHeads()
    stepper = _stepper(model, get_weighting("ew", TASKS))
    first, second = _batches(2)
    stepper.backward(sum(model.losses(first).values()), {})
    stepper.step()
    assert all(p.grad is not None for p in model.parameters())
    stepper.backward(sum(model.losses(second).values()), {})
    fresh = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sum(model.losses(second).values()).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(fresh, model.parameters()))
    stepper.step()
    stepper.release_gradients()
    assert all(p.grad is None for p in model.parameters())
    stepper.backward(sum(model.losses(first).values()), {})
    stepper.release_gradients()  # mid-cycle: the accumulated gradients are kept
    assert all(p.grad is not None for p in model.parameters())


def test_release_before_the_forward_frees_the_last_step_once_and_keeps_a_cycle():
    """The engines release before each forward (zero_grad first, as in a plain loop); the
    cycle's backward then does not release again, and an accumulation cycle is kept."""
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = GradientStepper(optimizer, list(model.parameters()), accumulation_steps=2)
    calls = []
    original = optimizer.zero_grad
    optimizer.zero_grad = lambda set_to_none=True: (calls.append(1), original(set_to_none))
    first, second, third = _batches(3)
    for x in (first, second):
        stepper.release_gradients()
        stepper.backward(sum(model.losses(x).values()), {})
    assert len(calls) == 1  # the second batch accumulates into the first one's gradients
    stepper.step()
    assert all(p.grad is not None for p in model.parameters())
    stepper.release_gradients()
    assert all(p.grad is None for p in model.parameters()) and len(calls) == 2
    stepper.backward(sum(model.losses(third).values()), {})
    assert len(calls) == 2  # already released before the forward
