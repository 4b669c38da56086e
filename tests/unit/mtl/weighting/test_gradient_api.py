"""The backward contract: what lands in .grad, gradient modes, rep_grad, errors, properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dwi_mtl.errors import ConfigError
from dwi_mtl.mtl.weighting import WEIGHTINGS, get_weighting

from .helpers import GRADIENT_BASED, TinyMTL, batch

TASKS = ["a", "b", "c"]
DETERMINISTIC = ("mgda", "upgrad", "dualproj", "imtl", "cagrad", "nash_mtl", "aligned_mtl",
                 "fairgrad")


def step(method, model: TinyMTL, index: int = 0, **backward_kwargs):
    x, targets = batch(TASKS, index)
    losses, rep = model.losses(x, targets)
    if method.rep_grad if hasattr(method, "rep_grad") else False:
        backward_kwargs.setdefault("representation", rep)
    return losses, method.backward(losses, model.get_share_params(), **backward_kwargs)


@pytest.mark.parametrize("name", GRADIENT_BASED)
@pytest.mark.parametrize("mode", ["loop", "vmap", "rep"])
def test_task_parameters_get_their_own_task_gradient(name: str, mode: str) -> None:
    kwargs = {"rep_grad": True} if mode == "rep" else {"grad_mode": mode}
    method = get_weighting(name, TASKS, **kwargs)
    model = TinyMTL(TASKS)
    x, targets = batch(TASKS, 0)
    losses, _ = model.losses(x, targets)
    if name in ("imtl", "db_mtl"):  # these differentiate transformed losses
        losses = dict(zip(TASKS, method.transform_losses([losses[t] for t in TASKS])))
    expected = {
        t: torch.autograd.grad(losses[t], list(model.heads[t].parameters()), retain_graph=True)
        for t in TASKS
    }
    model.zero_grad(set_to_none=True)
    step(method, model)
    for t in TASKS:
        for p, g in zip(model.heads[t].parameters(), expected[t]):
            torch.testing.assert_close(p.grad, g)
    assert all(p.grad is not None for p in model.get_share_params())


@pytest.mark.parametrize("name", ["ew", "mgda", "pcgrad", "upgrad"])
def test_existing_shared_gradients_are_accumulated_not_overwritten(name: str) -> None:
    model, model2 = TinyMTL(TASKS, seed=3), TinyMTL(TASKS, seed=3)
    step(get_weighting(name, TASKS), model)
    fresh = [p.grad.clone() for p in model.get_share_params()]
    for p in model2.get_share_params():
        p.grad = torch.ones_like(p)
    step(get_weighting(name, TASKS), model2)
    for p, g in zip(model2.get_share_params(), fresh):
        torch.testing.assert_close(p.grad, g + 1.0)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "imtl", "cagrad", "aligned_mtl", "moco"])
def test_vmap_and_loop_modes_agree(name: str) -> None:
    model, model2 = TinyMTL(TASKS, seed=4), TinyMTL(TASKS, seed=4)
    _, w1 = step(get_weighting(name, TASKS, grad_mode="loop"), model)
    _, w2 = step(get_weighting(name, TASKS, grad_mode="vmap"), model2)
    assert list(w1.values()) == pytest.approx(list(w2.values()), rel=1e-4, abs=1e-6)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p.grad, p2.grad, rtol=1e-4, atol=1e-6)


class LinearEncoderMTL(nn.Module):
    """A bias-free linear encoder: with orthonormal input rows, the Gramians at the weight and
    at the representation coincide, so rep_grad and parameter mode must give the same step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(8, 5, bias=False).double()
        self.heads = nn.ModuleList([nn.Linear(5, 2).double() for _ in TASKS])

    def losses(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rep = self.encoder(x)
        out = {t: (torch.tanh(h(rep)) - 0.3 * (i + 1)).pow(2).sum() for i, (t, h)
               in enumerate(zip(TASKS, self.heads))}
        return out, rep


AGREEING = [n for n in GRADIENT_BASED if n not in ("graddrop", "excessmtl")]


@pytest.mark.parametrize("name", AGREEING)
def test_rep_grad_and_parameter_mode_agree_with_a_linear_encoder(name: str) -> None:
    models = [LinearEncoderMTL(), LinearEncoderMTL()]
    kwargs = {"window": 1} if name == "gradnorm" else {}
    methods = [get_weighting(name, TASKS, seed=2, **kwargs),
               get_weighting(name, TASKS, seed=2, rep_grad=True, **kwargs)]
    # One fixed input with orthonormal rows: the map from representation gradients to weight
    # gradients is then the same isometry at every step (also for EMA buffers: MoCo, DB_MTL).
    gen = torch.Generator().manual_seed(0)
    x = torch.linalg.qr(torch.randn(8, 4, dtype=torch.float64, generator=gen))[0].T
    for _ in range(3):
        for model, method in zip(models, methods):
            model.zero_grad(set_to_none=True)
            losses, rep = model.losses(x)
            method.backward(losses, list(model.encoder.parameters()), representation=rep)
            method.on_step_end({k: v.detach() for k, v in losses.items()})
        for p, p2 in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(p.grad, p2.grad, rtol=1e-6, atol=1e-8)
        with torch.no_grad():  # one identical SGD step, so the next step sees new losses
            for model in models:
                for p in model.parameters():
                    p -= 0.1 * p.grad


def test_representation_may_be_several_tensors() -> None:
    model = TinyMTL(TASKS)
    x, targets = batch(TASKS, 0)
    rep = model.encoder(x)
    left, right = rep[:, :4], rep[:, 4:]
    losses = {t: ((model.heads[t](torch.cat([left, right], 1)) - targets[t]) ** 2).mean()
              for t in TASKS}
    get_weighting("upgrad", TASKS, rep_grad=True).backward(
        losses, model.get_share_params(), representation=[left, right]
    )
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.get_share_params())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [(lambda d: d.pop("a"), "missing"), (lambda d: d.update(z=d["b"]), "unexpected"),
     (lambda d: d.update(a=torch.ones(2, requires_grad=True)), "scalar")],
)
def test_bad_losses_name_the_problem(mutate, message: str) -> None:
    model = TinyMTL(TASKS)
    losses, _ = model.losses(*batch(TASKS, 0))
    mutate(losses)
    with pytest.raises(ConfigError, match=message):
        get_weighting("mgda", TASKS).backward(losses, model.get_share_params())


def test_configuration_errors() -> None:
    model = TinyMTL(TASKS)
    losses, _ = model.losses(*batch(TASKS, 0))
    with pytest.raises(ConfigError, match="representation"):
        get_weighting("mgda", TASKS, rep_grad=True).backward(losses, model.get_share_params())
    frozen = [p.detach() for p in model.get_share_params()]
    with pytest.raises(ConfigError, match="requires grad"):
        get_weighting("mgda", TASKS).backward(losses, frozen)
    with pytest.raises(ConfigError, match="unknown weighting 'nope'"):
        get_weighting("nope", TASKS)
    with pytest.raises(ConfigError, match="bad arguments"):
        get_weighting("mgda", TASKS, temperature=3)
    with pytest.raises(ConfigError, match="grad_mode"):
        get_weighting("mgda", TASKS, grad_mode="fast")
    with pytest.raises(ConfigError, match="task_names"):
        get_weighting("ew", ["a", "a"])
    with pytest.raises(ConfigError, match="normalization"):
        get_weighting("mgda", TASKS, normalization="l3")


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_registry_names_and_config_round_trip(name: str) -> None:
    method = get_weighting(name, TASKS, seed=3)
    config = method.get_config()
    assert get_weighting(config.pop("name"), **config).get_config() == method.get_config()
    assert type(get_weighting(type(method).__name__, TASKS)) is type(method)


def test_task_weights_behave_as_a_read_only_mapping() -> None:
    model = TinyMTL(TASKS)
    _, weights = step(get_weighting("mgda", TASKS), model)
    assert list(weights) == TASKS and len(weights) == 3
    assert sum(dict(weights).values()) == pytest.approx(1.0)
    assert "TaskWeights" in repr(weights)
    assert weights.tensor.shape == (3,)


def gradient_matrices(tasks: int):
    return st.lists(
        st.floats(-3, 3, allow_nan=False, width=64), min_size=tasks * 6, max_size=tasks * 6
    ).map(lambda v: torch.tensor(v, dtype=torch.float64).reshape(tasks, 6))


@pytest.mark.parametrize("name", GRADIENT_BASED)
@settings(max_examples=15, deadline=None)
@given(vector=gradient_matrices(1), scales=st.lists(st.floats(0.5, 2), min_size=3, max_size=3))
def test_aligned_task_gradients_give_a_step_along_them(name, vector, scales) -> None:
    grads = torch.cat([vector * s for s in scales])
    if grads.norm() < 1e-3:
        return
    method = get_weighting(name, TASKS)
    combined, weights = method.combine(grads, torch.ones(3, dtype=grads.dtype))
    assert torch.isfinite(combined).all() and torch.isfinite(weights).all()
    cosine = combined @ vector[0] / (combined.norm() * vector[0].norm() + 1e-30)
    assert cosine > 1 - 1e-6


@pytest.mark.parametrize("name", DETERMINISTIC)
@settings(max_examples=15, deadline=None)
@given(grads=gradient_matrices(3))
def test_deterministic_methods_are_permutation_equivariant(name, grads) -> None:
    if torch.linalg.matrix_rank(grads) < 3 or (grads @ grads.T).diagonal().min() < 1e-2:
        return
    order = torch.tensor([2, 0, 1])
    combined, weights = get_weighting(name, TASKS).combine(grads, torch.ones(3, dtype=grads.dtype))
    combined2, weights2 = get_weighting(name, TASKS).combine(grads[order], torch.ones(3).double())
    torch.testing.assert_close(combined2, combined, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weights2, weights[order], rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_every_method_runs_on_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = TinyMTL(TASKS).cuda()
    method = get_weighting(name, TASKS).to("cuda")
    for index in range(3):
        x, targets = batch(TASKS, index)
        losses, rep = model.losses(x.cuda(), {k: v.cuda() for k, v in targets.items()})
        weights = method.backward(losses, model.get_share_params(), representation=rep)
        method.on_step_end(losses)
    assert all(p.grad.is_cuda for p in model.get_share_params())
    assert len(dict(weights)) == 3


GRAD_SCALE_CASES = [(n, False) for n in WEIGHTINGS] + [(n, True) for n in GRADIENT_BASED]


@pytest.mark.parametrize(("name", "rep_grad"), GRAD_SCALE_CASES)
def test_grad_scale_scales_every_gradient_and_nothing_else(name: str, rep_grad: bool) -> None:
    # Gradient accumulation (1/N) and AMP loss scaling: the method must see unscaled losses.
    kwargs = dict({"window": 1} if name in ("dwa", "gradnorm", "stch") else {}, seed=1)
    if rep_grad:
        kwargs["rep_grad"] = True
    runs = []
    for scale in (None, torch.tensor(8.0)):
        model, method = TinyMTL(TASKS, seed=6), get_weighting(name, TASKS, **kwargs)
        for index in range(3):
            model.zero_grad(set_to_none=True)
            for p in method.parameters():
                p.grad = None
            losses, rep = model.losses(*batch(TASKS, index))
            weights = method.backward(losses, model.get_share_params(), representation=rep,
                                      grad_scale=scale)
            method.on_step_end({k: v.detach() for k, v in losses.items()})
        grads = [p.grad for p in [*model.parameters(), *method.parameters()]]
        runs.append((dict(weights), grads))
    (weights, grads), (scaled_weights, scaled_grads) = runs
    assert scaled_weights == pytest.approx(weights, rel=1e-5)
    for g, g_scaled in zip(grads, scaled_grads):
        torch.testing.assert_close(g_scaled, 8.0 * g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["upgrad", "mgda", "nash_mtl", "cagrad", "aligned_mtl"])
def test_overflowed_gradients_do_not_raise(name: str) -> None:
    model = TinyMTL(TASKS)
    losses, _ = model.losses(*batch(TASKS, 0))
    losses["a"] = losses["a"] * float("inf")
    get_weighting(name, TASKS).backward(losses, model.get_share_params())
    assert not all(torch.isfinite(p.grad).all() for p in model.get_share_params())


@pytest.mark.parametrize("name", ["mgda", "upgrad", "pcgrad", "ew"])
@pytest.mark.parametrize("mode", ["loop", "vmap", "rep"])
def test_a_constant_task_loss_gives_a_zero_gradient_row(name: str, mode: str) -> None:
    if name == "ew" and mode != "loop":
        return
    kwargs = {} if name == "ew" else ({"rep_grad": True} if mode == "rep" else {"grad_mode": mode})
    model = TinyMTL(TASKS)
    losses, rep = model.losses(*batch(TASKS, 0))
    losses["b"] = torch.tensor(0.0)  # no sample of task b in this batch
    get_weighting(name, TASKS, **kwargs).backward(
        losses, model.get_share_params(), representation=rep
    )
    assert all(torch.isfinite(p.grad).all() for p in model.get_share_params())
    assert model.heads["b"].weight.grad is None
