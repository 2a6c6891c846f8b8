"""Quadratic Wasserstein distances W2: closed forms in 1-D and for Gaussians, exact LP with POT otherwise.

Every function returns the distance ``W2`` itself, not its square.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import ot
from numpy.typing import ArrayLike

from hclm.dynamics.ornstein_uhlenbeck import check_covariance, check_vector

logger = logging.getLogger(__name__)

# Iteration limit of POT's network simplex. POT 0.9.7 defaults to 100000, which a problem with a
# few thousand points per side can exceed.
DEFAULT_MAX_ITERATIONS = 10_000_000


def wasserstein2_1d(
    x: ArrayLike, y: ArrayLike, x_weights: ArrayLike | None = None, y_weights: ArrayLike | None = None
) -> float:
    """Compute W2 between two 1-D empirical measures from their quantile functions.

    ``W2² = ∫_0^1 (F_x⁻¹(s) − F_y⁻¹(s))² ds``. Both quantile functions are step functions, so the
    integral is a finite sum over the merged breakpoints of the two cumulative weights. With equal
    sizes and uniform weights this is ``mean((sort(x) − sort(y))²)``.

    Args:
        x: samples, shape (n,).
        y: samples, shape (m,).
        x_weights: non-negative weights of ``x``, shape (n,); default uniform. Rescaled to sum 1.
        y_weights: likewise for ``y``.

    Returns:
        ``W2`` in the units of the samples.
    """
    xs, xw = _weighted_samples(x, x_weights, "x")
    ys, yw = _weighted_samples(y, y_weights, "y")
    if x_weights is None and y_weights is None and xs.shape == ys.shape:
        return math.sqrt(float(np.mean((np.sort(xs) - np.sort(ys)) ** 2)))

    x_order = np.argsort(xs, kind="stable")
    y_order = np.argsort(ys, kind="stable")
    x_sorted, x_cumulative = xs[x_order], np.cumsum(xw[x_order])
    y_sorted, y_cumulative = ys[y_order], np.cumsum(yw[y_order])
    x_cumulative[-1] = y_cumulative[-1] = 1.0
    breaks = np.union1d(x_cumulative, y_cumulative)
    lengths = np.diff(np.concatenate(([0.0], breaks)))
    # On the piece (s_{k−1}, s_k] each quantile function is the first sample whose cumulative
    # weight reaches s_k.
    x_values = x_sorted[np.minimum(np.searchsorted(x_cumulative, breaks), xs.shape[0] - 1)]
    y_values = y_sorted[np.minimum(np.searchsorted(y_cumulative, breaks), ys.shape[0] - 1)]
    return math.sqrt(float(np.sum(lengths * (x_values - y_values) ** 2)))


def wasserstein2_quantiles(quantiles_a: ArrayLike, quantiles_b: ArrayLike) -> float:
    """Compute ``W2 ≈ (mean_j (X_a(s_j) − X_b(s_j))²)^{1/2}`` from quantiles at the same equal-mass levels.

    This is the midpoint rule for ``∫_0^1 (X_a − X_b)² ds``; it is exact when both inputs are
    ``M``-point empirical measures.
    """
    a = np.asarray(quantiles_a, dtype=np.float64)
    b = np.asarray(quantiles_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"quantiles must be two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("quantiles have NaN or infinite values")
    return math.sqrt(float(np.mean((a - b) ** 2)))


def wasserstein2_densities_1d(
    edges: ArrayLike, density_a: ArrayLike, density_b: ArrayLike, edges_b: ArrayLike | None = None
) -> float:
    """Compute W2 between two piecewise-constant densities on 1-D grids, exactly.

    Each cumulative distribution is piecewise linear, so each quantile function is piecewise
    linear in ``s`` with breakpoints at the cumulative cell masses. Between the merged
    breakpoints both are linear, and ``∫(d0 + (d1 − d0)u)² du = (d0² + d0·d1 + d1²)/3`` integrates
    the squared difference exactly. Empty cells become jumps of the quantile function.

    Args:
        edges: increasing cell edges of ``density_a``, shape (n + 1,).
        density_a: cell values ``≥ 0``, shape (n,), rescaled to unit mass.
        density_b: cell values ``≥ 0`` on ``edges_b``, rescaled to unit mass.
        edges_b: cell edges of ``density_b``; default ``edges``.

    Returns:
        ``W2`` in the units of ``x``.
    """
    grid_a, cumulative_a, rho_a = _cumulative(edges, density_a, "density_a")
    grid_b, cumulative_b, rho_b = _cumulative(edges if edges_b is None else edges_b, density_b, "density_b")
    breaks = np.union1d(cumulative_a, cumulative_b)
    lower, upper = breaks[:-1], breaks[1:]
    positive = upper > lower
    lower, upper = lower[positive], upper[positive]

    start_a = _quantile_pieces(grid_a, cumulative_a, rho_a, lower, upper)
    start_b = _quantile_pieces(grid_b, cumulative_b, rho_b, lower, upper)
    difference_lower = start_a[0] - start_b[0]
    difference_upper = start_a[1] - start_b[1]
    integrand = difference_lower**2 + difference_lower * difference_upper + difference_upper**2
    return math.sqrt(max(0.0, float(np.sum((upper - lower) * integrand) / 3.0)))


def wasserstein2_gaussian(mean1: ArrayLike, cov1: ArrayLike, mean2: ArrayLike, cov2: ArrayLike) -> float:
    """Compute W2 between ``N(m1, Σ1)`` and ``N(m2, Σ2)`` in closed form.

    ``W2² = ‖m1 − m2‖² + tr(Σ1 + Σ2 − 2(Σ2^{1/2}Σ1Σ2^{1/2})^{1/2})``; the trace term is the squared
    Bures distance. Square roots come from symmetric eigendecompositions with negative rounding
    eigenvalues set to 0, and a negative rounding total is returned as 0. In 1-D this is
    ``√((m1 − m2)² + (σ1 − σ2)²)``.

    Args:
        mean1, mean2: shape (d,).
        cov1, cov2: symmetric positive semidefinite, shape (d, d).

    Returns:
        ``W2`` in the units of ``x``.
    """
    first_mean = np.atleast_1d(np.asarray(mean1, dtype=np.float64))
    dim = first_mean.shape[0]
    first_mean = check_vector(first_mean, dim, "mean1")
    second_mean = check_vector(mean2, dim, "mean2")
    first = check_covariance(cov1, dim, "cov1")
    second = check_covariance(cov2, dim, "cov2")
    root = _psd_sqrt(second)
    cross = _psd_sqrt(root @ first @ root)
    bures = float(np.trace(first) + np.trace(second) - 2.0 * np.trace(cross))
    squared = float(np.sum((first_mean - second_mean) ** 2)) + bures
    return math.sqrt(max(0.0, squared))


def wasserstein2_empirical(
    x: ArrayLike,
    y: ArrayLike,
    x_weights: ArrayLike | None = None,
    y_weights: ArrayLike | None = None,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> float:
    """Compute W2 between empirical measures in ``d`` dimensions with POT's exact solver ``ot.emd2``.

    The cost is the squared Euclidean distance (``ot.dist``), so the optimal cost is ``W2²``.
    Memory and time grow with ``n·m`` (the dense cost matrix), so this suits a few thousand points.

    Args:
        x: samples, shape (n, d).
        y: samples, shape (m, d).
        x_weights, y_weights: non-negative weights, default uniform; rescaled to sum 1.
        max_iterations: iteration limit of the network simplex.

    Returns:
        ``W2`` in the units of the samples.

    Raises:
        ValueError: invalid input, or the solver stopped before the optimum.
    """
    first = _points(x, "x")
    second = _points(y, "y")
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got shapes {first.shape} and {second.shape}")
    _, first_weights = _weighted_samples(first[:, 0], x_weights, "x")
    _, second_weights = _weighted_samples(second[:, 0], y_weights, "y")
    cost = ot.dist(first, second, metric="sqeuclidean")
    value, log = ot.emd2(first_weights, second_weights, cost, numItermax=max_iterations, log=True)
    if log.get("warning"):
        raise ValueError(
            f"ot.emd2 stopped before the optimum ({log['warning']}); raise max_iterations above {max_iterations}"
        )
    return math.sqrt(max(0.0, float(value)))


def _weighted_samples(values: ArrayLike, weights: ArrayLike | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(values, dtype=np.float64)
    if samples.ndim != 1 or samples.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of samples, got shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise ValueError(f"{name} has NaN or infinite values")
    if weights is None:
        return samples, np.full(samples.shape[0], 1.0 / samples.shape[0])
    mass = np.asarray(weights, dtype=np.float64)
    if mass.shape != samples.shape:
        raise ValueError(f"{name}_weights must have shape {samples.shape}, got {mass.shape}")
    if not np.all(np.isfinite(mass)) or np.any(mass < 0) or not mass.sum() > 0:
        raise ValueError(f"{name}_weights must be finite, >= 0 and have a positive sum")
    return samples, mass / mass.sum()


def _points(values: ArrayLike, name: str) -> np.ndarray:
    points = np.asarray(values, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, d), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} has NaN or infinite values")
    return points


def _cumulative(edges: ArrayLike, density: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid = np.asarray(edges, dtype=np.float64)
    rho = np.asarray(density, dtype=np.float64)
    if grid.ndim != 1 or rho.shape != (grid.shape[0] - 1,):
        raise ValueError(f"{name} needs one value per cell: got {rho.shape} values for {grid.shape} edges")
    if np.any(np.diff(grid) <= 0) or not np.all(np.isfinite(grid)):
        raise ValueError(f"the edges of {name} must be finite and strictly increasing")
    if not np.all(np.isfinite(rho)) or np.any(rho < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    masses = rho * np.diff(grid)
    total = masses.sum()
    if not total > 0:
        raise ValueError(f"{name} has zero mass")
    cumulative = np.concatenate(([0.0], np.cumsum(masses) / total))
    cumulative[-1] = 1.0
    return grid, cumulative, rho / total


def _quantile_pieces(
    grid: np.ndarray,
    cumulative: np.ndarray,
    rho: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the quantile function at both ends of each piece ``[lower, upper]``, from inside the piece's cell.

    The cell is the last one whose cumulative mass at its left edge is ``≤ lower``. Its right
    edge has cumulative mass ``≥ upper > lower``, so its density is positive.
    """
    cells = np.clip(np.searchsorted(cumulative, lower, side="right") - 1, 0, rho.shape[0] - 1)
    start = grid[cells]
    level = cumulative[cells]
    density = rho[cells]
    return start + (lower - level) / density, start + (upper - level) / density


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, basis = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (basis * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ basis.T
