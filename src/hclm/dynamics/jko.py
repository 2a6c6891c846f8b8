"""Jordan–Kinderlehrer–Otto steps ``ρ_{k+1} = argmin_ρ F(ρ) + W2²(ρ, ρ_k)/(2τ)`` in 1-D quantile form.

In 1-D, ``W2²(ρ, σ) = ∫_0^1 (X(s) − Y(s))² ds`` for the quantile functions ``X`` and ``Y``, and
``∫ρ log ρ dx = −∫_0^1 log X'(s) ds``, so each step is a convex problem for the quantiles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import LinAlgError, solveh_banded
from scipy.special import ndtri

from hclm.dynamics.ornstein_uhlenbeck import check_positive

logger = logging.getLogger(__name__)

Function1D = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]

# Armijo constant and the smallest line-search step before a Newton iteration is given up.
_ARMIJO = 1e-4
_MIN_STEP = 1e-12


@dataclass(frozen=True)
class JKOTrajectory:
    """Quantile functions of a JKO run, one row per step (row 0 is the initial state).

    Attributes:
        times: ``k·τ``, shape (K + 1,).
        quantiles: ``X_k(s_j)`` at the levels ``s_j = (j + ½)/M``, shape (K + 1, M).
        free_energies: discrete free energy of each row (:func:`quantile_free_energy`), shape (K + 1,).
        iterations: Newton iterations of each step, shape (K,).
        tau: step ``τ``.
        beta: inverse temperature.
    """

    times: np.ndarray
    quantiles: np.ndarray
    free_energies: np.ndarray
    iterations: np.ndarray
    tau: float
    beta: float


def quantile_levels(count: int) -> np.ndarray:
    """Return the levels ``s_j = (j + ½)/M``, ``j = 0 … M−1``: the midpoints of ``M`` equal masses."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 3:
        raise ValueError(f"count must be an integer >= 3 quantile levels, got {count!r}")
    return (np.arange(count) + 0.5) / count


def gaussian_quantiles(mean: float, std: float, count: int) -> np.ndarray:
    """Compute ``X(s_j) = μ + σΦ⁻¹(s_j)`` of ``N(μ, σ²)`` at :func:`quantile_levels`, shape (M,)."""
    return float(mean) + check_positive("std", std) * ndtri(quantile_levels(count))


def quantiles_from_density(edges: ArrayLike, density: ArrayLike, count: int) -> np.ndarray:
    """Compute the quantile function of a piecewise-constant density at :func:`quantile_levels`.

    The cumulative distribution is linear inside each cell, so the quantile is found by linear
    interpolation of the cell edges against the cumulative mass. The density is rescaled to unit
    mass first.

    Args:
        edges: increasing cell edges, shape (n + 1,).
        density: cell values ``≥ 0``, shape (n,), with positive mass.
        count: number of levels ``M ≥ 3``.

    Returns:
        Quantiles, shape (M,), non-decreasing.
    """
    edge_array = np.asarray(edges, dtype=np.float64)
    rho = np.asarray(density, dtype=np.float64)
    if edge_array.ndim != 1 or rho.shape != (edge_array.shape[0] - 1,):
        raise ValueError(f"density needs one value per cell: got {rho.shape} values for {edge_array.shape} edges")
    if np.any(np.diff(edge_array) <= 0):
        raise ValueError("edges must be strictly increasing")
    if np.any(rho < 0) or not np.all(np.isfinite(rho)):
        raise ValueError("density must be finite and >= 0")
    masses = rho * np.diff(edge_array)
    total = masses.sum()
    if not total > 0:
        raise ValueError("density has zero mass; it has no quantile function")
    cumulative = np.concatenate(([0.0], np.cumsum(masses) / total))
    # Empty cells make the cumulative mass flat, where np.interp has no unique inverse. Keeping
    # only the first edge of each run of equal values maps such a level to the left end.
    keep = np.concatenate(([True], np.diff(cumulative) > 0))
    return np.interp(quantile_levels(count), cumulative[keep], edge_array[keep])


def density_from_quantiles(quantiles: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Convert quantiles at equal-mass levels into a density: mass ``1/M`` spread over each gap.

    Returns:
        ``(midpoints, density)`` of the ``M − 1`` gaps ``[X_j, X_{j+1}]``, with density
        ``1/(M·(X_{j+1} − X_j))``.
    """
    points = _check_quantiles(quantiles, "quantiles")
    gaps = np.diff(points)
    return 0.5 * (points[:-1] + points[1:]), 1.0 / (points.shape[0] * gaps)


def quantile_free_energy(quantiles: ArrayLike, potential: Function1D, beta: float) -> float:
    """Compute ``F_M(X) = (1/M)Σ_j V(X_j) + β⁻¹(1/M)Σ_j log(1/(M·g_j))`` with gaps ``g_j = X_{j+1} − X_j``.

    This discretizes ``∫V dρ + β⁻¹∫ρ log ρ`` with ``ρ = 1/(M g_j)`` on each gap. The ``M − 1``
    gaps carry mass ``(M − 1)/M``, so the entropy term misses the two half masses at the ends,
    an ``O(1/M)`` discretization error.
    """
    points = _check_quantiles(quantiles, "quantiles")
    inverse_temperature = check_positive("beta", beta)
    count = points.shape[0]
    energy = float(np.mean(_evaluate(potential, points, "potential")))
    entropy_term = float(np.sum(-np.log(count * np.diff(points)))) / count
    return energy + entropy_term / inverse_temperature


def jko_step(
    quantiles: ArrayLike,
    potential: Function1D,
    tau: float,
    beta: float = 1.0,
    *,
    derivative: Function1D | None = None,
    second_derivative: Function1D | None = None,
    tol: float = 1e-12,
    max_iterations: int = 100,
) -> tuple[np.ndarray, int]:
    """Take one JKO step by a damped Newton iteration on the increasing quantile vector.

    Minimizes ``Φ(X) = Σ_j V(X_j) + Σ_j (X_j − Y_j)²/(2τ) − β⁻¹Σ_j log(X_{j+1} − X_j)``, which
    is ``M`` times the discrete ``F(ρ) + W2²(ρ, ρ_k)/(2τ)`` up to a constant. The log barrier
    keeps the quantiles increasing. The Hessian is tridiagonal:
    ``diag(V''(X) + 1/τ) + β⁻¹·(graph Laplacian with weights 1/g_j²)``; it is positive definite
    when ``V'' > −1/τ``, and otherwise a multiple of the identity is added until a Cholesky
    factorization succeeds. Steps are halved until the gaps stay positive and the Armijo condition
    holds. The iteration stops when half the Newton decrement, divided by ``M``, is ``≤ tol``.

    Derivatives that are not given are computed by central differences with steps
    ``ε^{1/3}·max(1, |x|)`` (first) and ``ε^{1/4}·max(1, |x|)`` (second), relative errors of
    about ``1e-10`` and ``1e-8`` for smooth ``V``.

    Args:
        quantiles: previous quantiles ``Y``, shape (M,), strictly increasing.
        potential: ``V``, vectorized over a NumPy array.
        tau: JKO step ``τ > 0`` (time units).
        beta: inverse temperature ``β > 0``.
        derivative: ``V'``, optional.
        second_derivative: ``V''``, optional.
        tol: stopping tolerance in free-energy units.
        max_iterations: Newton iterations allowed.

    Returns:
        ``(new_quantiles, iterations)``.

    Raises:
        ValueError: invalid input, or no convergence within ``max_iterations``.
    """
    previous = _check_quantiles(quantiles, "quantiles")
    step = check_positive("tau", tau)
    inverse_temperature = check_positive("beta", beta)
    tolerance = check_positive("tol", tol)
    first = derivative if derivative is not None else _central_first(potential)
    second = second_derivative if second_derivative is not None else _central_second(potential)
    count = previous.shape[0]
    temperature = 1.0 / inverse_temperature

    def objective(points: np.ndarray) -> float:
        gaps = np.diff(points)
        if np.any(gaps <= 0):
            return math.inf
        potential_sum = float(np.sum(_evaluate(potential, points, "potential")))
        return potential_sum + float(np.sum((points - previous) ** 2)) / (2.0 * step) - temperature * float(np.sum(np.log(gaps)))

    x = previous.copy()
    value = objective(x)
    for iteration in range(1, max_iterations + 1):
        gaps = np.diff(x)
        inverse_gaps = 1.0 / gaps
        gradient = _evaluate(first, x, "derivative") + (x - previous) / step
        gradient[:-1] += temperature * inverse_gaps
        gradient[1:] -= temperature * inverse_gaps

        weights = temperature * inverse_gaps**2
        banded = np.zeros((2, count))
        banded[1] = _evaluate(second, x, "second_derivative") + 1.0 / step
        banded[1, :-1] += weights
        banded[1, 1:] += weights
        banded[0, 1:] = -weights
        direction = _solve_shifted(banded, -gradient)

        decrement = -float(gradient @ direction)
        if 0.5 * decrement / count <= tolerance:
            return x, iteration
        length = 1.0
        while True:
            candidate = x + length * direction
            candidate_value = objective(candidate)
            if candidate_value <= value - _ARMIJO * length * decrement:
                break
            length *= 0.5
            if length < _MIN_STEP:
                raise ValueError(
                    f"JKO Newton line search failed with tau = {step:g}; reduce tau or check that V is smooth"
                )
        x, value = candidate, candidate_value
    raise ValueError(
        f"JKO step did not converge in {max_iterations} Newton iterations with tau = {step:g}; "
        "reduce tau or raise max_iterations"
    )


def run_jko(
    potential: Function1D,
    initial_quantiles: ArrayLike,
    *,
    tau: float,
    steps: int,
    beta: float = 1.0,
    derivative: Function1D | None = None,
    second_derivative: Function1D | None = None,
    tol: float = 1e-12,
    max_iterations: int = 100,
    progress: Progress | None = None,
) -> JKOTrajectory:
    """Run ``steps`` JKO steps of size ``τ`` from ``initial_quantiles`` (see :func:`jko_step`).

    Row ``k`` approximates the Fokker–Planck solution at time ``kτ`` with an ``O(τ)`` error.

    Args:
        potential: ``V``, vectorized over a NumPy array.
        initial_quantiles: shape (M,), strictly increasing, at :func:`quantile_levels`.
        tau: step ``τ > 0``.
        steps: number of steps ``≥ 1``.
        beta: inverse temperature ``β > 0``.
        derivative, second_derivative: optional ``V'`` and ``V''``.
        tol, max_iterations: Newton settings of each step.
        progress: called as ``progress(k, steps)`` after each step.

    Returns:
        The :class:`JKOTrajectory`.
    """
    step = check_positive("tau", tau)
    inverse_temperature = check_positive("beta", beta)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    current = _check_quantiles(initial_quantiles, "initial_quantiles")
    rows = [current]
    energies = [quantile_free_energy(current, potential, inverse_temperature)]
    iterations = []
    for k in range(1, steps + 1):
        current, used = jko_step(
            current,
            potential,
            step,
            inverse_temperature,
            derivative=derivative,
            second_derivative=second_derivative,
            tol=tol,
            max_iterations=max_iterations,
        )
        rows.append(current)
        energies.append(quantile_free_energy(current, potential, inverse_temperature))
        iterations.append(used)
        if progress is not None:
            progress(k, steps)
    logger.info("JKO run finished: %d steps of tau = %g, %d quantiles", steps, step, current.shape[0])
    return JKOTrajectory(
        times=np.arange(steps + 1) * step,
        quantiles=np.stack(rows),
        free_energies=np.asarray(energies),
        iterations=np.asarray(iterations, dtype=np.int64),
        tau=step,
        beta=inverse_temperature,
    )


def _check_quantiles(quantiles: ArrayLike, name: str) -> np.ndarray:
    points = np.asarray(quantiles, dtype=np.float64)
    if points.ndim != 1 or points.shape[0] < 3:
        raise ValueError(f"{name} must be a 1-D array of at least 3 values, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} has NaN or infinite values")
    if np.any(np.diff(points) <= 0):
        raise ValueError(f"{name} must be strictly increasing; a quantile function of a density has no flat steps")
    return points


def _evaluate(function: Function1D, points: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(function(points), dtype=np.float64)
    if values.shape != points.shape:
        raise ValueError(f"{name} must map an array of shape {points.shape} to the same shape, got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} is NaN or infinite at some quantiles; use a potential that is finite there")
    return values


def _central_first(potential: Function1D) -> Function1D:
    def derivative(points: np.ndarray) -> np.ndarray:
        offset = np.finfo(np.float64).eps ** (1 / 3) * np.maximum(1.0, np.abs(points))
        return (_evaluate(potential, points + offset, "potential") - _evaluate(potential, points - offset, "potential")) / (
            2.0 * offset
        )

    return derivative


def _central_second(potential: Function1D) -> Function1D:
    def second(points: np.ndarray) -> np.ndarray:
        offset = np.finfo(np.float64).eps ** 0.25 * np.maximum(1.0, np.abs(points))
        upper = _evaluate(potential, points + offset, "potential")
        lower = _evaluate(potential, points - offset, "potential")
        return (upper - 2.0 * _evaluate(potential, points, "potential") + lower) / offset**2

    return second


def _solve_shifted(banded: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``(H + μI)p = rhs`` for the upper banded ``H``, with the smallest ``μ ∈ {0, 1e-8·s, 1e-7·s, …}`` that factors."""
    scale = max(1.0, float(np.max(np.abs(banded[1]))))
    shift = 0.0
    for _ in range(30):
        shifted = banded.copy()
        shifted[1] += shift
        try:
            return solveh_banded(shifted, rhs)
        except LinAlgError:
            shift = 1e-8 * scale if shift == 0.0 else 10.0 * shift
    raise ValueError("the JKO Hessian could not be made positive definite; check that V is finite and smooth")
