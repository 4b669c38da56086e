"""Small dependency-free solvers on the ``T x T`` Gramian of the task gradients.

Every gradient method reduces its optimisation to the Gramian ``G = J J^T`` (``J`` the ``(T, n)``
per-task gradient matrix), so the solvers work on tiny float64 numpy arrays and never touch the
big gradients. Quadratic programs with non-negativity constraints are turned into non-negative
least squares (``scipy.optimize.nnls``, an exact active-set method) through a Cholesky factor;
the Nash-MTL / FairGrad fixed points are minimisers of strictly convex functions, solved with a
damped Newton method.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.lapack import dpotrf, dtrtrs
from scipy.optimize import nnls

#: Relative ridge added to the Gramian before a Cholesky factorisation (keeps it definite).
_RIDGE = 1e-12


def _cholesky_upper(gram: np.ndarray) -> np.ndarray:
    """Return ``R`` upper-triangular with ``R^T R = gram + ridge I`` (ridge relative to trace).

    LAPACK's ``potrf`` is called directly: on these ``T x T`` matrices the checks of
    ``scipy.linalg.cho_factor`` cost 10x the factorisation, and a step's solver runs with its
    caches cold (the gradients have just streamed through them), where each Python-level call
    costs several microseconds more.

    Raises:
        numpy.linalg.LinAlgError: when the regularised Gramian is not positive definite.
    """
    size = gram.shape[0]
    scale = max(float(np.trace(gram)) / size, 1e-300)
    factor, info = dpotrf(gram + _RIDGE * scale * np.eye(size), lower=0, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky factorisation failed (potrf info {info})")
    return np.asarray(factor)


def min_norm_simplex(gram: np.ndarray) -> np.ndarray:
    """Weights of the minimum-norm point of the convex hull of the task gradients (MGDA).

    Solves ``min_w w^T G w`` on the simplex exactly. With ``z = w / s`` the problem becomes
    ``min_{z >= 0} z^T G z - 2 * 1^T z`` (the KKT conditions of both coincide), a non-negative
    least-squares problem ``min ||R z - R^{-T} 1||`` with ``G = R^T R``.

    Args:
        gram: ``(T, T)`` positive semi-definite Gramian.

    Returns:
        ``(T,)`` non-negative weights summing to one.
    """
    size = gram.shape[0]
    if not np.isfinite(gram).all() or np.trace(gram) <= 0.0:
        return np.full(size, 1.0 / size)
    upper = _cholesky_upper(gram)
    rhs, info = dtrtrs(upper, np.ones(size), lower=0, trans=1)  # R^-T 1
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular solve failed (trtrs info {info})")
    z, _ = nnls(upper, rhs, maxiter=50 * size)
    total = z.sum()
    return z / total if total > 0 else np.full(size, 1.0 / size)


def project_dual_cone(u: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Weights ``v`` of the projection of ``J^T u`` onto the dual cone of the rows of ``J``.

    Solves ``min_v v^T G v`` subject to ``v >= u`` (Proposition 1 of the UPGrad paper) as the
    non-negative least squares ``min_{z >= 0} ||R (u + z)||`` with ``v = u + z``.

    Args:
        u: ``(T,)`` weights of the vector to project.
        gram: ``(T, T)`` positive (semi-)definite Gramian.

    Returns:
        ``(T,)`` weights ``v >= u``.
    """
    return project_dual_cone_rows(u.reshape(1, -1), gram)[0]


def project_dual_cone_rows(rows: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """:func:`project_dual_cone` of each row of ``rows`` with one factorisation of ``gram``.

    Args:
        rows: ``(K, T)`` weights of the vectors to project.
        gram: ``(T, T)`` positive (semi-)definite Gramian.

    Returns:
        ``(K, T)`` weights, row ``k`` the projection weights of ``rows[k]``.
    """
    upper = _cholesky_upper(gram)
    targets = -(rows @ upper.T)  # row k: -R u_k
    iterations = 50 * gram.shape[0]
    out = np.array(rows, dtype=np.float64)
    for k in range(out.shape[0]):
        z, _ = nnls(upper, targets[k], maxiter=iterations)
        out[k] += z
    return out


def solve_power_fixed_point(
    gram: np.ndarray, power: float, start: np.ndarray | None = None, tol: float = 1e-12
) -> np.ndarray:
    """Solve ``G x = x^(-power)`` for ``x > 0`` (Nash-MTL with power 1, FairGrad with 1/alpha).

    The solution is the unique minimiser of the strictly convex
    ``f(x) = x^T G x / 2 - sum(h(x))`` with ``h'(x) = x^(-power)``, found with a damped Newton
    method that keeps ``x`` positive.

    Args:
        gram: ``(T, T)`` positive semi-definite Gramian.
        power: positive exponent.
        start: initial point (warm start), positive.
        tol: stop when the residual's norm falls below ``tol`` times ``sqrt(T)``, or after a
            last full Newton step once the objective's remaining decrease is below float64
            resolution.

    Returns:
        ``(T,)`` positive solution.
    """
    size = gram.shape[0]
    x = np.ones(size) if start is None else np.clip(np.asarray(start, dtype=np.float64), 1e-8, None)
    for _ in range(200):
        residual = gram @ x - x ** (-power)
        if np.linalg.norm(residual) < tol * np.sqrt(size):
            break
        hessian = gram + np.diag(power * x ** (-power - 1.0))
        step = np.linalg.solve(hessian, residual)
        decrement = float(residual @ step)  # Newton decrement squared: ~2x the gap in f
        if decrement <= _DECREMENT_TOL * max(1.0, abs(_objective(gram, power, x))):
            # Within float64 resolution of f: the line search can no longer see a decrease
            # (it would halve 60 times, every iteration). One full Newton step, quadratically
            # convergent here, brings x to machine precision.
            candidate = x - step
            if (candidate > 0).all():
                x = candidate
            break
        x = _damped_update(gram, power, x, step)
    return x


#: Relative Newton decrement below which :func:`solve_power_fixed_point` takes its last step.
_DECREMENT_TOL = 1e-14


def _objective(gram: np.ndarray, power: float, x: np.ndarray) -> float:
    """The convex objective whose minimiser solves :func:`solve_power_fixed_point`."""
    if abs(power - 1.0) < 1e-15:
        barrier = np.log(x).sum()
    else:
        barrier = (x ** (1.0 - power)).sum() / (1.0 - power)
    return float(0.5 * x @ gram @ x - barrier)


def _damped_update(gram: np.ndarray, power: float, x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Backtracking line search along ``-step`` that keeps ``x`` positive and decreases f."""
    shrink = 1.0
    negative = step > 0
    if negative.any():
        shrink = min(1.0, 0.99 * float(np.min(x[negative] / step[negative])))
    current = _objective(gram, power, x)
    for _ in range(60):
        candidate = x - shrink * step
        if _objective(gram, power, candidate) <= current:
            return candidate
        shrink *= 0.5
    return x - shrink * step


def cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """Weights of the CAGrad direction ``g0 + sqrt(phi) / ||g_w|| g_w`` as a mix of the rows.

    Solves the dual ``min_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w)`` (Algorithm 1 of
    the CAGrad paper) with SLSQP and analytic gradients on the trace-normalised Gramian.

    Args:
        gram: ``(T, T)`` Gramian.
        c: radius scale of the conflict-averse ball (``c = 0`` gives the mean).

    Returns:
        ``(T,)`` weights of the rows.
    """
    from scipy.optimize import minimize

    size = gram.shape[0]
    trace = float(np.trace(gram))
    if trace <= 0.0 or not np.isfinite(trace):
        return np.zeros(size)
    gram = gram / trace
    mean = np.full(size, 1.0 / size)
    b = gram @ mean
    sqrt_phi = c * float(np.sqrt(max(mean @ b, 0.0)))

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw = gram @ w
        norm = float(np.sqrt(max(w @ gw, 1e-30)))
        return float(b @ w + sqrt_phi * norm), b + sqrt_phi * gw / norm

    simplex = {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(size)}
    result = minimize(
        fun, mean, jac=True, method="SLSQP", bounds=[(0.0, None)] * size,
        constraints=[simplex], options={"ftol": 1e-15, "maxiter": 500},
    )
    w = np.clip(result.x, 0.0, None)
    w = w / w.sum()
    norm = float(np.sqrt(max(w @ gram @ w, 0.0)))
    if norm < 1e-12:
        return mean
    return mean + (sqrt_phi / norm) * w
