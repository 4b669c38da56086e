"""The cost-saving paths of per-task gradients give the plain results (issue 7 performance)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dwi_mtl.mtl.weighting import get_weighting
from dwi_mtl.mtl.weighting import gradients as grad_ops


@pytest.mark.parametrize("tasks", [1, 2, 3, 8, 12, 13])
def test_gramian_matches_the_plain_product(tasks: int) -> None:
    generator = torch.Generator().manual_seed(tasks)
    # wide enough (and not a multiple of the chunk) to take the chunked path for 3..12 rows
    matrix = torch.randn(tasks, 3 * grad_ops.GRAMIAN_CHUNK + 17, generator=generator)
    expected = matrix.double() @ matrix.double().T
    got = grad_ops.gramian(matrix)
    assert got.shape == (tasks, tasks) and got.dtype == matrix.dtype
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got, got.T)  # exactly symmetric terms, up to rounding


def test_loop_gradients_equal_separate_autograd_passes_and_zero_unreached_params() -> None:
    torch.manual_seed(0)
    encoder = nn.Linear(5, 4)
    unused = nn.Parameter(torch.randn(3))  # a shared tensor no task reaches: a zero block
    heads = [nn.Linear(4, 1), nn.Linear(4, 1)]
    x = torch.randn(7, 5)
    rep = encoder(x)
    losses = [h(rep).square().mean() for h in heads]
    shared = [encoder.weight, unused, encoder.bias]
    expected, head_grads = [], []
    for head, loss in zip(heads, losses):
        head_grads.append(torch.autograd.grad(loss, head.weight, retain_graph=True)[0])
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True,
                                    materialize_grads=True)
        expected.append(torch.cat([g.reshape(-1) for g in grads]))
    buffer = torch.full((2, 20 + 3 + 4), float("nan"))  # stale contents must be overwritten
    matrix = grad_ops.loop_gradients(losses, shared, out=buffer)
    assert matrix is buffer
    torch.testing.assert_close(matrix, torch.stack(expected))
    assert all(p.grad is None for p in shared)
    for head, grad in zip(heads, head_grads):  # heads keep their own task's gradient
        torch.testing.assert_close(head.weight.grad, grad)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_on_the_gramian_equals_normalising_the_rows_first(normalization: str) -> None:
    generator = torch.Generator().manual_seed(3)
    grads = torch.randn(4, 50, generator=generator, dtype=torch.float64)
    losses = torch.rand(4, generator=generator, dtype=torch.float64) + 0.5
    method = get_weighting("mgda", ["a", "b", "c", "d"], normalization=normalization)
    combined, weights = method.combine(grads.clone(), losses)
    norms = grads.norm(dim=1)
    scale = {"none": torch.ones(4, dtype=torch.float64), "l2": norms, "loss": losses,
             "loss+": losses * norms}[normalization]
    normalized = grads / scale[:, None]
    from dwi_mtl.mtl.weighting.solvers import min_norm_simplex

    reference = torch.as_tensor(min_norm_simplex((normalized @ normalized.T).numpy()))
    torch.testing.assert_close(combined, reference @ normalized)
    torch.testing.assert_close(weights, reference / scale)


def test_loop_gradients_keep_user_hooks_and_pending_gradients_and_remove_their_hooks() -> None:
    torch.manual_seed(1)
    encoder = nn.Linear(3, 4)
    heads = [nn.Linear(4, 1), nn.Linear(4, 1)]
    x = torch.randn(6, 3)
    seen: list[torch.Tensor] = []
    encoder.bias.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    pending = torch.full_like(encoder.weight, 2.0)
    encoder.weight.grad = pending  # gradient accumulation: put back untouched
    rep = encoder(x)
    losses = [h(rep).square().mean() for h in heads]
    expected = [torch.autograd.grad(loss, encoder.bias, retain_graph=True)[0] for loss in losses]
    matrix = grad_ops.loop_gradients(losses, [encoder.weight, encoder.bias])
    torch.testing.assert_close(matrix[:, 12:], torch.stack(expected))
    assert len(seen) == 2  # the user's hook saw each task's gradient, before ours released it
    for got, want in zip(seen, expected):
        torch.testing.assert_close(got, want)
    assert encoder.weight.grad is pending and encoder.bias.grad is None
    # our hooks are gone: a plain backward afterwards accumulates as usual
    encoder.zero_grad(set_to_none=True)
    encoder(x).sum().backward()
    assert encoder.weight.grad is not None and encoder.bias.grad is not None


def test_loop_gradients_reject_a_non_leaf_shared_tensor() -> None:
    weight = nn.Parameter(torch.randn(2, 2))
    scaled = weight * 2.0  # not a leaf: it has no .grad to read
    loss = scaled.sum()
    from dwi_mtl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"shared_params\[1\] is not a leaf"):
        grad_ops.loop_gradients([loss], [weight, scaled])
    assert weight.grad is None


def test_rep_grad_matrix_storage_is_reused_across_batch_sizes() -> None:
    torch.manual_seed(2)
    encoder, heads = nn.Linear(3, 4), [nn.Linear(4, 1), nn.Linear(4, 2)]
    method = get_weighting("upgrad", ["a", "b"], rep_grad=True)
    storages = []
    for batch in (8, 5, 8):  # a smaller batch fits the storage of the first one
        x = torch.randn(batch, 3)
        rep = encoder(x)
        losses = {"a": heads[0](rep).square().mean(), "b": heads[1](rep).abs().mean()}
        expected = torch.stack([
            torch.autograd.grad(v, rep, retain_graph=True)[0].reshape(-1) for v in losses.values()
        ])
        got = grad_ops.representation_gradients(
            list(losses.values()), [rep], out=method._buffer_for([rep], "_rep_matrix"))
        torch.testing.assert_close(got, expected)
        storages.append(got.untyped_storage().data_ptr())
        method.backward(losses, list(encoder.parameters()), representation=rep)
    assert storages[0] == storages[1] == storages[2]


def test_column_blocks_cover_the_columns_once() -> None:
    matrix = torch.empty(3, 5 * grad_ops.BLOCK_BYTES // 12 + 7)
    blocks = grad_ops.column_blocks(matrix)
    assert len(blocks) > 1 and blocks[0].start == 0 and blocks[-1].stop == matrix.shape[1]
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:]))


@pytest.mark.parametrize("tasks", [2, 5])
def test_blocked_moco_and_excess_mtl_equal_their_whole_matrix_formulas(tasks: int) -> None:
    names = [f"t{i}" for i in range(tasks)]
    moco = get_weighting("moco", names, rho=0.1)
    excess = get_weighting("excessmtl", names, robust_step_size=0.5, warmup_steps=1)
    size = 3 * grad_ops.BLOCK_BYTES // (4 * tasks) + 11  # several blocks, a ragged last one
    tracked: torch.Tensor | None = None
    squares = baseline = torch.zeros(())
    lambdas = torch.full((tasks,), 1.0 / tasks, dtype=torch.float64)
    log_w = torch.full((tasks,), -math.log(tasks), dtype=torch.float64)
    for step in range(4):
        generator = torch.Generator().manual_seed(step)
        grads = torch.randn(tasks, size, generator=generator)
        losses = torch.rand(tasks, generator=generator) + 0.1
        g, k = grads.double(), step + 1
        # MoCo, as written in the paper/LibMTL (float64)
        scaled = g / (g.norm(dim=1, keepdim=True) + 1e-8) * losses.double()[:, None]
        beta_k = 0.5 / k**0.5
        tracked = beta_k * scaled if tracked is None else tracked - beta_k * (tracked - scaled)
        step_vec = (tracked @ tracked.T + 0.1 * torch.eye(tasks, dtype=torch.float64)) @ lambdas
        lambdas = torch.softmax(lambdas - 0.1 / k**0.5 * step_vec, dim=0)
        combined, weights = moco.combine(grads.clone(), losses)
        moco.step += 1
        torch.testing.assert_close(weights.double(), lambdas, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(combined.double(), lambdas @ tracked, rtol=1e-5, atol=1e-6)
        # ExcessMTL (float64): AdaGrad-scaled excess risks, exponentiated-gradient weights
        squares = squares + g * g
        risk = (g * g / torch.sqrt(squares + 1e-7)).sum(dim=1)
        if step == 0:  # one warm-up step: its risks are the baseline, the weights stay uniform
            baseline = risk
        else:
            log_w = torch.log_softmax(log_w + 0.5 * risk / (baseline + 1e-7), dim=0)
        combined, weights = excess.combine(grads.clone(), losses)
        excess.step += 1
        torch.testing.assert_close(weights.double(), tasks * log_w.exp(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(combined.double(), tasks * log_w.exp() @ g, rtol=1e-5,
                                   atol=1e-5)
