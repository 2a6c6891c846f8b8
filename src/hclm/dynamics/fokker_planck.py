"""Finite-volume solver of the 1-D Fokker–Planck equation ``∂ρ/∂t = ∂x(ρ V') + β⁻¹∂²ρ/∂x²``.

Scharfetter–Gummel fluxes make the discrete Gibbs density an exact steady state, and
backward Euler steps keep the density positive, its mass fixed and its free energy decreasing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import lapack
from scipy.special import xlogy

from hclm.dynamics.ornstein_uhlenbeck import check_positive

logger = logging.getLogger(__name__)

Potential1D = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]

# Below this |u| the Bernoulli function uses its Taylor series 1 − u/2 + u²/12 − u⁴/720.
_SERIES_LIMIT = 1e-4


@dataclass(frozen=True)
class FokkerPlanckSolution:
    """Density snapshots of a finite-volume run and the quantities checked along it.

    Attributes:
        edges: cell edges, shape (n + 1,).
        centers: cell centers, shape (n,).
        potential: ``V`` at the centers, shape (n,).
        beta: inverse temperature.
        dt: time step.
        steps: recorded step indices, shape (S,).
        times: ``step·dt``, shape (S,).
        densities: cell averages of ``ρ``, shape (S, n); each row has ``Σ h ρ_i = 1`` up to rounding.
        free_energies: discrete free energy of each snapshot, shape (S,).
        masses: ``Σ h ρ_i`` of each snapshot, shape (S,).
        gibbs: discrete Gibbs density ``∝ exp(−βV_i)``, shape (n,).
        gibbs_free_energy: discrete free energy of ``gibbs``, the minimum over unit-mass densities.
    """

    edges: np.ndarray
    centers: np.ndarray
    potential: np.ndarray
    beta: float
    dt: float
    steps: np.ndarray
    times: np.ndarray
    densities: np.ndarray
    free_energies: np.ndarray
    masses: np.ndarray
    gibbs: np.ndarray
    gibbs_free_energy: float

    @property
    def width(self) -> float:
        """Cell width ``h``."""
        return float(self.edges[1] - self.edges[0])


def bernoulli(u: ArrayLike) -> np.ndarray:
    """Evaluate the Bernoulli function ``B(u) = u/(e^u − 1)`` with ``B(0) = 1``, without overflow.

    For ``u > 0`` it uses ``u·e^{−u}/(1 − e^{−u})``, which tends to 0 instead of overflowing, and
    near 0 a Taylor series. ``B(−u) = B(u) + u``.
    """
    values = np.asarray(u, dtype=np.float64)
    result = np.empty_like(values)
    small = np.abs(values) < _SERIES_LIMIT
    positive = (values > 0) & ~small
    negative = (values < 0) & ~small
    series = values[small]
    result[small] = 1.0 - series / 2.0 + series**2 / 12.0 - series**4 / 720.0
    large = values[positive]
    result[positive] = large * np.exp(-large) / -np.expm1(-large)
    result[negative] = values[negative] / np.expm1(values[negative])
    return result


def scharfetter_gummel_operator(potential: ArrayLike, width: float, beta: float) -> np.ndarray:
    """Build the tridiagonal generator ``L`` with ``dρ/dt = Lρ`` from Scharfetter–Gummel fluxes.

    The flux from cell ``i`` to ``i+1`` is ``J = (D/h)[B(u_i)ρ_i − B(−u_i)ρ_{i+1}]`` with
    ``D = β⁻¹`` and ``u_i = β(V_{i+1} − V_i)``. It vanishes exactly when
    ``ρ_{i+1}/ρ_i = e^{−u_i}``, so ``exp(−βV_i)`` is a steady state. The boundary fluxes are zero.
    Every column of ``L`` sums to zero, which conserves mass, and the off-diagonal entries are
    positive.

    Args:
        potential: ``V`` at the cell centers, shape (n,), ``n ≥ 3``.
        width: cell width ``h > 0``.
        beta: inverse temperature ``β > 0``.

    Returns:
        Array of shape (3, n): row 0 is the superdiagonal ``L[i, i+1]`` (last entry 0), row 1 the
        diagonal and row 2 the subdiagonal ``L[i+1, i]`` (last entry 0).
    """
    values = np.asarray(potential, dtype=np.float64)
    h = check_positive("width", width)
    inverse_temperature = check_positive("beta", beta)
    u = inverse_temperature * np.diff(values)
    scale = 1.0 / (inverse_temperature * h * h)
    forward = scale * bernoulli(u)  # coefficient of ρ_i in the flux to the right
    backward = scale * bernoulli(-u)  # coefficient of ρ_{i+1} in the flux to the left

    operator = np.zeros((3, values.shape[0]))
    operator[0, :-1] = backward
    operator[2, :-1] = forward
    operator[1, :-1] -= forward
    operator[1, 1:] -= backward
    return operator


def discrete_gibbs_density(potential: ArrayLike, width: float, beta: float) -> np.ndarray:
    """Compute ``ρ_i = exp(−βV_i) / (h Σ_j exp(−βV_j))``, the steady state of the finite-volume scheme."""
    values = np.asarray(potential, dtype=np.float64)
    h = check_positive("width", width)
    inverse_temperature = check_positive("beta", beta)
    weights = np.exp(-inverse_temperature * (values - values.min()))
    return weights / (h * weights.sum())


def discrete_free_energy(density: ArrayLike, potential: ArrayLike, width: float, beta: float) -> np.ndarray:
    """Compute ``F_h = Σ_i h ρ_i (V_i + β⁻¹ log ρ_i)`` with ``0·log 0 = 0``.

    Args:
        density: cell averages, shape (n,) or (S, n), ``≥ 0``.
        potential: ``V`` at the cell centers, shape (n,).
        width: cell width ``h``.
        beta: inverse temperature ``β > 0``.

    Returns:
        Free energy, shape () or (S,).
    """
    rho = np.asarray(density, dtype=np.float64)
    values = np.asarray(potential, dtype=np.float64)
    inverse_temperature = check_positive("beta", beta)
    return width * np.sum(rho * values + xlogy(rho, rho) / inverse_temperature, axis=-1)


def solve_fokker_planck(
    potential: Potential1D | ArrayLike,
    interval: tuple[float, float],
    cells: int,
    initial: Potential1D | ArrayLike,
    *,
    beta: float = 1.0,
    dt: float,
    steps: int,
    record_every: int | None = None,
    progress: Progress | None = None,
) -> FokkerPlanckSolution:
    """Solve the Fokker–Planck equation on ``[a, b]`` with zero-flux boundaries by backward Euler.

    Each step solves ``(I − dt·L)ρ^{k+1} = ρ^k`` with the Scharfetter–Gummel generator ``L``
    (factorized once). ``I − dt·L`` is an M-matrix for every ``dt > 0``, so the scheme is
    unconditionally stable and keeps ``ρ ≥ 0`` (``> 0`` after one step). Its columns sum to 1, so
    the mass ``Σ h ρ_i`` is conserved up to rounding in the solve. Because ``F_h`` is convex and
    ``⟨∇F_h(ρ), Lρ⟩ ≤ 0``, every step satisfies ``F_h(ρ^{k+1}) ≤ F_h(ρ^k)`` whatever ``dt``.
    The scheme is first order in ``dt`` and second order in ``h`` for smooth ``V``.

    Args:
        potential: ``V``, a vectorized callable evaluated at the cell centers, or its values there,
            shape (cells,).
        interval: ``(a, b)`` with ``a < b``.
        cells: number of cells ``n ≥ 3``.
        initial: initial density, a callable of the centers or cell values, shape (cells,),
            ``≥ 0`` with positive mass. It is rescaled to ``Σ h ρ_i = 1``.
        beta: inverse temperature ``β > 0``.
        dt: time step ``> 0``.
        steps: number of steps ``≥ 1``.
        record_every: steps between snapshots ``≥ 1``; default ``max(1, steps // 100)``. Step 0
            and the last step are always recorded.
        progress: called as ``progress(step, steps)`` after each snapshot.

    Returns:
        The :class:`FokkerPlanckSolution`.

    Raises:
        ValueError: invalid arguments, naming the value and the valid range.
    """
    edges, centers, width = _grid(interval, cells)
    inverse_temperature = check_positive("beta", beta)
    step_size = check_positive("dt", dt)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    interval_steps = max(1, steps // 100) if record_every is None else record_every
    if not isinstance(interval_steps, int) or isinstance(interval_steps, bool) or interval_steps < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    values = _cell_values(potential, centers, "potential")
    rho = _initial_density(initial, centers, width)

    operator = scharfetter_gummel_operator(values, width, inverse_temperature)
    lower = -step_size * operator[2, :-1]
    diagonal = 1.0 - step_size * operator[1]
    upper = -step_size * operator[0, :-1]
    factors = lapack.dgttrf(lower, diagonal, upper)
    if factors[-1] != 0:
        raise ValueError(f"the backward Euler matrix is singular for dt = {step_size:g}; this should not happen for dt > 0")

    gibbs = discrete_gibbs_density(values, width, inverse_temperature)
    recorded_steps = [0]
    snapshots = [rho.copy()]
    if progress is not None:
        progress(0, steps)
    for step in range(1, steps + 1):
        rho, info = lapack.dgttrs(*factors[:-1], rho)
        if info != 0 or not np.all(np.isfinite(rho)):
            raise ValueError(f"the backward Euler solve failed at step {step} with dt = {step_size:g}")
        if step % interval_steps == 0 or step == steps:
            recorded_steps.append(step)
            snapshots.append(rho.copy())
            if progress is not None:
                progress(step, steps)

    densities = np.stack(snapshots)
    step_array = np.asarray(recorded_steps, dtype=np.int64)
    logger.info("Fokker–Planck run finished: %d cells, %d steps of dt = %g", cells, steps, step_size)
    return FokkerPlanckSolution(
        edges=edges,
        centers=centers,
        potential=values,
        beta=inverse_temperature,
        dt=step_size,
        steps=step_array,
        times=step_array * step_size,
        densities=densities,
        free_energies=discrete_free_energy(densities, values, width, inverse_temperature),
        masses=width * densities.sum(axis=1),
        gibbs=gibbs,
        gibbs_free_energy=float(discrete_free_energy(gibbs, values, width, inverse_temperature)),
    )


def _grid(interval: tuple[float, float], cells: int) -> tuple[np.ndarray, np.ndarray, float]:
    if not isinstance(cells, int) or isinstance(cells, bool) or cells < 3:
        raise ValueError(f"cells must be an integer >= 3, got {cells!r}")
    try:
        left, right = (float(value) for value in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (a, b) of numbers, got {interval!r}") from None
    if not (math.isfinite(left) and math.isfinite(right) and left < right):
        raise ValueError(f"interval must be finite with a < b, got ({left}, {right})")
    edges = np.linspace(left, right, cells + 1)
    return edges, 0.5 * (edges[:-1] + edges[1:]), (right - left) / cells


def _cell_values(source: Potential1D | ArrayLike, centers: np.ndarray, name: str) -> np.ndarray:
    values = source(centers) if callable(source) else source
    array = np.asarray(values, dtype=np.float64)
    if array.shape != centers.shape:
        raise ValueError(f"{name} must give one value per cell, shape {centers.shape}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} is NaN or infinite at some cell centers; use an interval where it is finite")
    return array


def _initial_density(initial: Potential1D | ArrayLike, centers: np.ndarray, width: float) -> np.ndarray:
    rho = _cell_values(initial, centers, "initial")
    if np.any(rho < 0):
        raise ValueError(f"initial density has negative values (minimum {rho.min():.3g}); a density must be >= 0")
    mass = width * rho.sum()
    if not mass > 0:
        raise ValueError("initial density has zero mass on the interval; put it where the grid is")
    return rho / mass
