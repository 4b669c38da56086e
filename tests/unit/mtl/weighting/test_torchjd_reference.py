"""Gradient methods against TorchJD (the numerical reference) on fixed gradient matrices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dwi_mtl.mtl.weighting import get_weighting
from dwi_mtl.state import derive_seed

aggregation = pytest.importorskip("torchjd.aggregation")

ATOL = 1e-5


def matrix(tasks: int, dim: int = 20, seed: int = 0) -> torch.Tensor:
    """A fixed float64 gradient matrix with some conflicting rows."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tasks, dim, generator=gen, dtype=torch.float64)


def combine(name: str, grads: torch.Tensor, **kwargs: object) -> torch.Tensor:
    names = [f"t{i}" for i in range(grads.shape[0])]
    method = get_weighting(name, names, **kwargs)
    combined, _ = method.combine(grads, torch.ones(grads.shape[0], dtype=grads.dtype))
    return combined


def _needs(*modules: str) -> None:
    for module in modules:
        pytest.importorskip(module)


@pytest.mark.parametrize("tasks", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_upgrad_and_dualproj_match_torchjd(tasks: int, seed: int) -> None:
    _needs("qpsolvers", "quadprog")
    grads = matrix(tasks, seed=seed)
    expected = aggregation.UPGrad()(grads)
    torch.testing.assert_close(combine("upgrad", grads), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        combine("dualproj", grads), aggregation.DualProj()(grads), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("seed", range(4))
def test_mgda_matches_torchjd_with_two_tasks(seed: int) -> None:
    # Frank-Wolfe with exact line search is exact on a segment (two tasks).
    grads = matrix(2, seed=seed)
    expected = aggregation.MGDA(epsilon=1e-12, max_iters=1000)(grads)
    torch.testing.assert_close(combine("mgda", grads), expected, atol=ATOL, rtol=0)


def brute_force_min_norm(gram: np.ndarray) -> np.ndarray:
    """Minimum of w^T G w on the simplex by enumerating every support (exact, small T)."""
    size = gram.shape[0]
    best, best_value = None, np.inf
    for k in range(1, size + 1):
        for support in itertools.combinations(range(size), k):
            sub = gram[np.ix_(support, support)]
            kkt = np.block([[2 * sub, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
            rhs = np.concatenate([np.zeros(k), [1.0]])
            try:
                solution = np.linalg.solve(kkt, rhs)[:k]
            except np.linalg.LinAlgError:
                continue
            if (solution < -1e-12).any():
                continue
            w = np.zeros(size)
            w[list(support)] = solution
            value = w @ gram @ w
            if value < best_value:
                best, best_value = w, value
    assert best is not None
    return best


@pytest.mark.parametrize(("tasks", "dim"), [(3, 20), (4, 20), (6, 20), (5, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mgda_is_the_min_norm_point_of_the_convex_hull(tasks: int, dim: int, seed: int) -> None:
    grads = matrix(tasks, dim=dim, seed=seed)
    gram = (grads @ grads.T).numpy()
    expected = torch.as_tensor(brute_force_min_norm(gram)) @ grads
    torch.testing.assert_close(combine("mgda", grads), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("tasks", [2, 4])
@pytest.mark.parametrize("seed", [0, 3])
def test_pcgrad_matches_torchjd(tasks: int, seed: int) -> None:
    # Same draws: TorchJD uses the global generator, seeded here as our (seed, step) generator.
    grads = matrix(tasks, seed=seed)
    torch.manual_seed(derive_seed(7, 0))
    expected = aggregation.PCGrad()(grads)
    torch.testing.assert_close(combine("pcgrad", grads, seed=7), expected, atol=ATOL, rtol=0)


def test_gradvac_matches_torchjd_over_several_steps() -> None:
    names = ["a", "b", "c"]
    ours = get_weighting("gradvac", names, seed=3)
    reference = aggregation.GradVac()
    for step in range(4):
        grads = matrix(3, seed=10 + step)
        torch.manual_seed(derive_seed(3, step))
        expected = reference(grads)
        combined, _ = ours.combine(grads, torch.ones(3, dtype=grads.dtype))
        ours.step += 1
        torch.testing.assert_close(combined, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 5])
def test_graddrop_matches_torchjd_with_the_same_draws(seed: int) -> None:
    grads = matrix(3, dim=50, seed=seed)
    torch.manual_seed(derive_seed(11, 0))
    expected = aggregation.GradDrop()(grads)
    torch.testing.assert_close(combine("graddrop", grads, seed=11), expected, atol=ATOL, rtol=0)


def test_graddrop_with_leak_matches_torchjd() -> None:
    grads = matrix(3, dim=50, seed=8)
    torch.manual_seed(derive_seed(4, 0))
    leak = torch.tensor([0.1, 0.5, 0.0], dtype=torch.float64)
    expected = aggregation.GradDrop(leak=leak)(grads)
    combined = combine("graddrop", grads, seed=4, leak=leak.tolist())
    torch.testing.assert_close(combined, expected, atol=ATOL, rtol=0)


def test_graddrop_keeps_everything_when_all_signs_agree() -> None:
    grads = matrix(3, dim=30).abs() * torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64)
    torch.testing.assert_close(combine("graddrop", grads), grads.sum(dim=0))


@pytest.mark.parametrize("tasks", [2, 3, 6])
def test_imtl_matches_torchjd(tasks: int) -> None:
    grads = matrix(tasks, seed=tasks)
    expected = aggregation.IMTLG()(grads)
    torch.testing.assert_close(
        combine("imtl", grads, loss_scaling=False), expected, atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("tasks", [2, 3, 5])
@pytest.mark.parametrize("c", [0.4, 0.8])
def test_cagrad_matches_torchjd(tasks: int, c: float) -> None:
    _needs("cvxpy", "clarabel")
    grads = matrix(tasks, seed=tasks + 20)
    expected = aggregation.CAGrad(c=c)(grads)
    # TorchJD's interior-point solve (CLARABEL) is accurate to ~2e-4 here; see the exact test.
    torch.testing.assert_close(
        combine("cagrad", grads, c=c, rescale=0), expected, atol=5e-4, rtol=0
    )


@pytest.mark.parametrize("c", [0.4, 0.8])
def test_cagrad_solves_the_dual_exactly_with_two_tasks(c: float) -> None:
    from scipy.optimize import minimize_scalar

    grads = matrix(2, seed=22)
    gram = (grads @ grads.T).numpy()
    gram = gram / np.trace(gram)
    b = gram @ np.full(2, 0.5)
    sqrt_phi = c * np.sqrt(0.5 * b.sum())

    def dual(t: float) -> float:
        w = np.array([t, 1 - t])
        return float(b @ w + sqrt_phi * np.sqrt(w @ gram @ w))

    t = minimize_scalar(dual, bounds=(0, 1), method="bounded", options={"xatol": 1e-14}).x
    w = np.array([t, 1 - t])
    weights = 0.5 + sqrt_phi / np.sqrt(w @ gram @ w) * w
    expected = torch.as_tensor(weights) @ grads
    torch.testing.assert_close(
        combine("cagrad", grads, c=c, rescale=0), expected, atol=1e-7, rtol=0
    )


@pytest.mark.parametrize("tasks", [2, 3, 4])
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_matches_torchjd(tasks: int, scale_mode: str) -> None:
    grads = matrix(tasks, seed=tasks + 30)
    reference = aggregation.AlignedMTL(
        pref_vector=torch.ones(tasks, dtype=torch.float64), scale_mode=scale_mode
    )
    torch.testing.assert_close(
        combine("aligned_mtl", grads, scale_mode=scale_mode), reference(grads), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("tasks", [2, 3, 4])
def test_fairgrad_matches_torchjd(tasks: int) -> None:
    grads = matrix(tasks, seed=tasks + 40)
    for alpha in (0.5, 1.0, 2.0):
        expected = aggregation.FairGrad(alpha=alpha)(grads)
        torch.testing.assert_close(
            combine("fairgrad", grads, alpha=alpha), expected, atol=ATOL, rtol=1e-5
        )


@pytest.mark.parametrize("tasks", [2, 3])
def test_nash_mtl_matches_torchjd_and_solves_the_bargaining_equation(tasks: int) -> None:
    _needs("cvxpy", "ecos")
    grads = matrix(tasks, seed=tasks + 50)
    names = [f"t{i}" for i in range(tasks)]
    ours = get_weighting("nash_mtl", names, max_norm=0.0)
    combined, weights = ours.combine(grads, torch.ones(tasks, dtype=grads.dtype))
    gram = (grads @ grads.T).numpy()
    alpha = weights.numpy()
    np.testing.assert_allclose(gram @ alpha, 1.0 / alpha, rtol=1e-9)
    with pytest.warns(UserWarning):  # cvxpy's "not DPP" warning
        expected = aggregation.NashMTL(n_tasks=tasks, max_norm=0.0, optim_niter=200)(grads)
    torch.testing.assert_close(combined, expected, atol=ATOL, rtol=0)


def test_excess_mtl_matches_torchjd_over_several_steps() -> None:
    names = ["a", "b", "c"]
    ours = get_weighting("excessmtl", names, robust_step_size=0.5, warmup_steps=2)
    reference = aggregation.ExcessMTL(robust_step_size=0.5, n_warmup_steps=2)
    for step in range(5):
        grads = matrix(3, seed=60 + step)
        combined, _ = ours.combine(grads, torch.ones(3, dtype=grads.dtype))
        ours.step += 1
        # Our weights sum to T (LibMTL's scale), TorchJD's to one.
        torch.testing.assert_close(combined / 3, reference(grads), atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tasks", [2, 4, 7])
def test_upgrad_has_non_negative_inner_product_with_every_task_gradient(
    seed: int, tasks: int
) -> None:
    grads = matrix(tasks, dim=10, seed=100 + seed)
    combined = combine("upgrad", grads, reg_eps=0.0)
    assert (grads @ combined >= -1e-8 * grads.norm() * combined.norm()).all()
