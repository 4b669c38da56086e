"""The cost-saving paths of the third performance pass give the straightforward results.

- GradDrop's CPU combination over column blocks equals the whole-vector formula with the same
  draws (one ``torch.rand(n)`` from the step's generator);
- UPGrad's one-factorisation projections equal one projection per task;
- the LAPACK-level Cholesky refuses a matrix that is not positive definite;
- ``rep_grad``'s single head pass leaves no gradient at a leaf representation (autograd is
  handed ``None`` there instead of summing the tasks' rows nobody reads).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dwi_mtl.mtl.weighting import get_weighting, grad_drop, rep_passes, solvers
from dwi_mtl.state import derive_torch_generator


def _reference_graddrop(grads: torch.Tensor, leak: list[float], seed: int) -> torch.Tensor:
    """GradDrop over whole vectors (the formula of the method's docstring)."""
    leaks = torch.tensor(leak, dtype=grads.dtype)
    positive = grads.clamp(min=0)
    total = grads.sum(dim=0)
    positive_total = positive.sum(dim=0)
    magnitude = torch.add(-total, positive_total, alpha=2.0)
    uniform = torch.rand(total.shape, generator=derive_torch_generator(seed, 0), dtype=grads.dtype)
    keep = (total > uniform.mul(2.0).sub(1.0).mul(magnitude)).to(grads.dtype)
    if any(v > 0 for v in leak):
        positive_sum = (1.0 - leaks) @ positive
        negative_sum = (1.0 - leaks) @ grads - positive_sum
        return leaks @ grads + negative_sum + keep * (positive_sum - negative_sum)
    return torch.addcmul(total - positive_total, keep, magnitude)


@pytest.mark.parametrize("leak", [[0.0, 0.0, 0.0], [0.1, 0.5, 0.0]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_graddrop_equals_the_whole_vector_formula(
    monkeypatch: pytest.MonkeyPatch, leak: list[float], dtype: torch.dtype
) -> None:
    monkeypatch.setattr(grad_drop, "BLOCK_COLUMNS", 7)  # 100 columns: 15 blocks, a ragged one
    grads = torch.randn(3, 100, generator=torch.Generator().manual_seed(2), dtype=dtype)
    method = get_weighting("graddrop", ["a", "b", "c"], seed=5, leak=leak)
    combined, weights = method.combine(grads, torch.ones(3, dtype=dtype))
    expected = _reference_graddrop(grads, leak, seed=5)
    torch.testing.assert_close(combined, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(weights, torch.ones(3, dtype=dtype))


def test_upgrad_projections_share_one_factorisation() -> None:
    gen = np.random.default_rng(3)
    for tasks in (2, 5, 8):
        rows = gen.standard_normal((tasks, 12))
        gram = rows @ rows.T
        targets = np.eye(tasks) / tasks
        together = solvers.project_dual_cone_rows(targets, gram)
        one_by_one = np.stack([solvers.project_dual_cone(u, gram) for u in targets])
        np.testing.assert_allclose(together, one_by_one, atol=1e-12)
        assert (together >= targets - 1e-12).all()


def test_cholesky_refuses_an_indefinite_matrix() -> None:
    with pytest.raises(np.linalg.LinAlgError, match="potrf"):
        solvers._cholesky_upper(np.array([[1.0, 2.0], [2.0, 1.0]]))


def test_head_pass_leaves_no_gradient_at_a_leaf_representation() -> None:
    rep = torch.randn(4, 3, requires_grad=True)
    heads = [torch.nn.Linear(3, 2) for _ in range(2)]
    losses = [h(rep).pow(2).mean() for h in heads]
    out = torch.empty(2, rep.numel())
    reached = rep_passes.head_pass(losses, [rep], [], out)
    assert reached is not None and rep.grad is None
    for t, (head, loss) in enumerate(zip(heads, losses)):
        (expected,) = torch.autograd.grad(loss, rep, retain_graph=True)
        torch.testing.assert_close(out[t].view_as(rep), expected)
        assert head.weight.grad is not None


def test_graddrop_zero_columns_stay_zero_and_pure_signs_are_kept() -> None:
    grads = torch.tensor([[0.0, 2.0, -1.0, 0.5], [0.0, 1.0, -3.0, -0.5]])
    method = get_weighting("graddrop", ["a", "b"], seed=1)
    combined, _ = method.combine(grads, torch.ones(2))
    assert combined[0] == 0.0  # no gradient: nothing kept, no NaN from 0 / 0
    assert combined[1] == 3.0 and combined[2] == -4.0  # one sign: all of it kept
    assert combined[3] in (0.5, -0.5)  # conflicting: one side


def _cagrad_by_slsqp(monkeypatch: pytest.MonkeyPatch, gram: np.ndarray, c: float) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(solvers, "_cagrad_by_supports", lambda *args: None)
        return solvers.cagrad_weights(gram, c)


@pytest.mark.parametrize("tasks", [2, 3, 4])
def test_cagrad_support_solve_equals_slsqp(monkeypatch: pytest.MonkeyPatch, tasks: int) -> None:
    gen = np.random.default_rng(tasks)
    for _ in range(20):
        rows = gen.standard_normal((tasks, 25)) + gen.uniform(0, 2) * gen.standard_normal(25)
        gram = rows @ rows.T
        for c in (0.2, 0.5, 1.5):
            exact = solvers.cagrad_weights(gram, c)
            reference = _cagrad_by_slsqp(monkeypatch, gram, c)
            difference = np.linalg.norm((exact - reference) @ rows)
            assert difference <= 1e-6 * np.linalg.norm(reference @ rows)  # SLSQP's accuracy


def test_cagrad_kink_at_zero_falls_back_to_slsqp(monkeypatch: pytest.MonkeyPatch) -> None:
    # opposite rows: with c = 2 the dual's minimum is at g_w = 0, where it is not smooth
    rows = np.array([[1.0, 2.0, -1.0], [-0.5, -1.0, 0.5]])
    gram = rows @ rows.T
    normalised = gram / np.trace(gram)
    b = normalised @ np.full(2, 0.5)
    assert solvers._cagrad_by_supports(normalised, b, 2.0 * np.sqrt(0.5 * b.sum())) is None
    np.testing.assert_array_equal(
        solvers.cagrad_weights(gram, 2.0), _cagrad_by_slsqp(monkeypatch, gram, 2.0)
    )
    # with c = 0.4 the minimum is the second row alone, a smooth point: found exactly
    np.testing.assert_allclose(
        solvers._cagrad_by_supports(normalised, b, 0.4 * np.sqrt(0.5 * b.sum())), [0.0, 1.0]
    )
    np.testing.assert_allclose(solvers.cagrad_weights(gram, 0.0), [0.5, 0.5])
