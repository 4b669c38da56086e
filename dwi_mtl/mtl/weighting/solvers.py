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
        current = _objective(gram, power, x)
        if decrement <= _DECREMENT_TOL * max(1.0, abs(current)):
            # Within float64 resolution of f: the line search can no longer see a decrease
            # (it would halve 60 times, every iteration). One full Newton step, quadratically
            # convergent here, brings x to machine precision.
            candidate = x - step
            if (candidate > 0).all():
                x = candidate
            break
        x = _damped_update(gram, power, x, step, current)
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


def _damped_update(
    gram: np.ndarray, power: float, x: np.ndarray, step: np.ndarray, current: float
) -> np.ndarray:
    """Backtracking line search along ``-step`` that keeps ``x`` positive and decreases f
    (``current``: f at ``x``, already computed by the caller)."""
    shrink = 1.0
    negative = step > 0
    if negative.any():
        shrink = min(1.0, 0.99 * float(np.min(x[negative] / step[negative])))
    for _ in range(60):
        candidate = x - shrink * step
        if _objective(gram, power, candidate) <= current:
            return candidate
        shrink *= 0.5
    return x - shrink * step


def cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """Weights of the CAGrad direction ``g0 + sqrt(phi) / ||g_w|| g_w`` as a mix of the rows.

    Solves the dual ``min_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w)`` (Algorithm 1 of
    the CAGrad paper) on the trace-normalised Gramian. Up to :data:`MAX_SUPPORT_TASKS` tasks
    exactly, through the stationary point of each support (:func:`_cagrad_by_supports`,
    40-60 us against SLSQP's 0.3-0.8 ms, the same weights to SLSQP's accuracy); with more
    tasks, or when no support passes its optimality checks, with SLSQP and analytic gradients
    (29 iterations at ``ftol=1e-15``, ~2 ms at T=8). Trying only the supports of ``T`` and
    ``T - 1`` tasks first at T=5-8 found the optimum in 3-22% of random cases: slower overall.

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

    w = _cagrad_by_supports(gram, b, sqrt_phi) if size <= MAX_SUPPORT_TASKS else None
    if w is None:
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


#: Norm of ``g_w`` (trace-normalised Gramian) below which a support's point is not trusted.
_MIN_DUAL_NORM = 1e-6

#: Largest number of tasks for which CAGrad's dual is solved through its ``2^T - 1`` supports
#: (at most 15 small solves, usually one or a few).
MAX_SUPPORT_TASKS = 4


def _cagrad_by_supports(gram: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray | None:
    """The exact minimiser of ``b.w + scale sqrt(w^T G w)`` on the simplex, or ``None``.

    On a support ``S`` the stationarity condition ``b_S + scale G_SS w_S / q = lambda 1`` with
    ``q = sqrt(w^T G w)`` gives ``w_S / q = G_SS^-1 (lambda 1 - b_S) / scale`` and ``lambda``
    from the quadratic ``(w_S / q)^T G_SS (w_S / q) = 1`` (its larger root, for ``q > 0``).
    The problem is convex and the objective differentiable where ``q > 0``, so the first
    support (largest first: usually the whole set, one solve) whose point is feasible and
    whose gradient is at least ``lambda`` off the support (the KKT conditions) holds the
    minimiser. ``None`` when no support passes (``G``
    singular on every candidate, ``g_w`` near zero where the objective has a kink, or
    ``scale = 0``): the caller then uses SLSQP, as before.
    """
    size = gram.shape[0]
    if scale <= 0.0:
        return None
    masks = sorted(range(1, 1 << size), key=lambda m: -bin(m).count("1"))  # largest first
    for mask in masks:
        w = _cagrad_support_point(gram, b, scale, [i for i in range(size) if mask >> i & 1])
        if w is not None:
            return w
    return None


def _cagrad_support_point(
    gram: np.ndarray, b: np.ndarray, scale: float, support: list[int]
) -> np.ndarray | None:
    """The KKT point of CAGrad's dual with ``w`` zero off ``support``, or ``None``."""
    sub = gram[np.ix_(support, support)]
    factor, info = dpotrf(sub, lower=0, clean=1)
    if info != 0:
        return None
    ones = np.ones(len(support))
    a = _cholesky_solve(factor, ones)
    d = _cholesky_solve(factor, b[support])
    big_a, big_b, big_c = float(ones @ a), float(ones @ d), float(b[support] @ d)
    discriminant = big_b * big_b - big_a * (big_c - scale * scale)
    if discriminant < 0.0 or big_a <= 0.0:
        return None
    multiplier = (big_b + np.sqrt(discriminant)) / big_a
    x = (multiplier * a - d) / scale
    total = float(x.sum())
    if total <= 0.0 or (x < -1e-12 * total).any():
        return None
    w = np.zeros(gram.shape[0])
    w[support] = np.clip(x, 0.0, None) / total
    norm = float(np.sqrt(max(float(w @ gram @ w), 0.0)))
    if norm <= _MIN_DUAL_NORM:  # the objective is not differentiable at g_w = 0: SLSQP decides
        return None
    gradient = b + scale * (gram @ w) / norm
    level = float(gradient[support].mean())
    off = np.ones(gram.shape[0], dtype=bool)
    off[support] = False
    if (gradient[off] < level - 1e-10 * max(1.0, abs(level))).any():
        return None
    return w


def _cholesky_solve(factor: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``R^T R x = rhs`` with the upper Cholesky factor ``R``."""
    y, _ = dtrtrs(factor, rhs, lower=0, trans=1)
    x, _ = dtrtrs(factor, y, lower=0, trans=0)
    return np.asarray(x)
