"""The Nash-MTL / FairGrad fixed-point solver converges to machine precision without stalling."""

from __future__ import annotations

import numpy as np
import pytest

from dwi_mtl.mtl.weighting import solvers


@pytest.mark.parametrize("power", [1.0, 0.5, 2.0])
def test_warm_started_solve_stops_at_machine_precision_without_stalling(
    power: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(8, 40))
    gram = rows @ rows.T / 40.0
    exact = solvers.solve_power_fixed_point(gram, power)
    np.testing.assert_allclose(gram @ exact, exact ** (-power), rtol=1e-10)
    calls = []
    original = solvers._objective
    monkeypatch.setattr(solvers, "_objective", lambda *a: calls.append(1) or original(*a))
    # a warm start within float64 noise of the solution: the line search cannot see any
    # decrease of f, which once cost 60 halvings per iteration for up to 200 iterations
    warm = solvers.solve_power_fixed_point(gram, power, start=exact * (1.0 + 1e-9))
    np.testing.assert_allclose(warm, exact, rtol=1e-12)
    assert len(calls) < 20
