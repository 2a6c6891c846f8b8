"""Bures–Wasserstein gradient flow of ``F = E[V] − β⁻¹H`` on Gaussians ``N(m, Σ)`` for quadratic ``V``.

The W2 gradient flow keeps Gaussians Gaussian, and its moment equations are the OU ones, so the
ODE solution, the closed form and Langevin particles can be compared step by step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.integrate import solve_ivp

from hclm.dynamics.langevin import LangevinTrajectory, QuadraticPotential, gaussian_particles, run_langevin
from hclm.dynamics.ornstein_uhlenbeck import (
    check_covariance,
    check_positive,
    check_spd_matrix,
    check_times,
    check_vector,
    gaussian_free_energy,
    ou_covariance,
    ou_mean,
)
from hclm.dynamics.wasserstein import wasserstein2_gaussian

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GaussianTrajectory:
    """Means and covariances of a Gaussian flow at given times.

    Attributes:
        times: shape (T,).
        means: shape (T, d).
        covariances: shape (T, d, d), symmetric.
        free_energies: ``E[V] − β⁻¹·½ log det(2πeΣ)``, shape (T,).
    """

    times: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    free_energies: np.ndarray


@dataclass(frozen=True)
class BuresComparison:
    """Bures ODE, OU closed form and Langevin particles at the particles' recorded times.

    Attributes:
        bures: numerical solution of the Bures–Wasserstein ODE.
        exact: OU closed form (:func:`exact_gaussian_flow`).
        particles: the Langevin run.
        mean_errors: ``‖m_particles − m_bures‖``, shape (T,).
        covariance_errors: Frobenius norm ``‖Σ_particles − Σ_bures‖``, shape (T,).
        w2_errors: W2 between ``N(m, Σ)`` fitted to the particles and the Bures Gaussian, shape (T,).
        ode_errors: largest entry of ``|Σ_bures − Σ_exact|`` and ``|m_bures − m_exact|``, shape (T,).
    """

    bures: GaussianTrajectory
    exact: GaussianTrajectory
    particles: LangevinTrajectory
    mean_errors: np.ndarray
    covariance_errors: np.ndarray
    w2_errors: np.ndarray
    ode_errors: np.ndarray


def bures_velocity(
    mean: ArrayLike, cov: ArrayLike, matrix: ArrayLike, center: ArrayLike, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Compute ``ṁ = −A(m − m*)`` and ``Σ̇ = −(AΣ + ΣA) + 2β⁻¹I``, the W2 gradient flow of F on Gaussians.

    Derivation: the W2 gradient flow moves mass with the velocity ``v = −∇(δF/δρ) = −∇V − β⁻¹∇log ρ``.
    For ``ρ = N(m, Σ)``, ``∇log ρ(x) = −Σ⁻¹(x − m)``, so ``v(x) = −A(x − m*) + β⁻¹Σ⁻¹(x − m)`` is
    affine and the pushed density stays Gaussian. Then ``ṁ = E[v]`` and
    ``Σ̇ = E[v(x)(x − m)ᵀ] + E[(x − m)v(x)ᵀ]``, which gives the formulas: the OU moment equations.
    In Bures form, ``Σ̇ = −2(GΣ + ΣG)`` with ``G = ∇_Σ F = ½A − ½β⁻¹Σ⁻¹``.

    Args:
        mean: ``m``, shape (d,).
        cov: ``Σ``, shape (d, d), symmetric positive definite.
        matrix: ``A``, symmetric positive definite, shape (d, d).
        center: ``m*``, shape (d,).
        beta: inverse temperature ``β > 0``.

    Returns:
        ``(ṁ, Σ̇)`` of shapes (d,) and (d, d).
    """
    a = check_spd_matrix(matrix, "matrix")
    dim = a.shape[0]
    m = check_vector(mean, dim, "mean")
    sigma = check_covariance(cov, dim, "cov")
    m_star = check_vector(center, dim, "center")
    inverse_temperature = check_positive("beta", beta)
    return -a @ (m - m_star), -(a @ sigma + sigma @ a) + (2.0 / inverse_temperature) * np.eye(dim)


def solve_bures_flow(
    times: ArrayLike,
    matrix: ArrayLike,
    center: ArrayLike,
    mean0: ArrayLike,
    cov0: ArrayLike,
    beta: float,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> GaussianTrajectory:
    """Integrate the Bures–Wasserstein ODE (:func:`bures_velocity`) numerically with ``scipy.integrate.solve_ivp``.

    The state is ``(m, vec Σ)``; the output covariances are symmetrized. This is an independent
    route to :func:`exact_gaussian_flow`: the two agree to about the solver tolerance.

    Args:
        times: increasing output times ``≥ 0``, shape (T,); integration starts at ``t = 0``.
        matrix: ``A``, symmetric positive definite, shape (d, d).
        center: ``m*``, shape (d,).
        mean0: ``m(0)``, shape (d,).
        cov0: ``Σ(0)``, shape (d, d), positive definite.
        beta: inverse temperature ``β > 0``.
        rtol, atol: solver tolerances.
        method: a ``solve_ivp`` method.

    Returns:
        The :class:`GaussianTrajectory` at ``times``.

    Raises:
        ValueError: invalid input or a solver failure.
    """
    t = check_times(times)
    if np.any(np.diff(t) < 0):
        raise ValueError("times must be non-decreasing for the ODE solver")
    a = check_spd_matrix(matrix, "matrix")
    dim = a.shape[0]
    m_star = check_vector(center, dim, "center")
    m0 = check_vector(mean0, dim, "mean0")
    sigma0 = check_covariance(cov0, dim)
    inverse_temperature = check_positive("beta", beta)
    noise = (2.0 / inverse_temperature) * np.eye(dim)

    def rhs(_time: float, state: np.ndarray) -> np.ndarray:
        m = state[:dim]
        sigma = state[dim:].reshape(dim, dim)
        return np.concatenate((-a @ (m - m_star), (-(a @ sigma + sigma @ a) + noise).ravel()))

    start = np.concatenate((m0, sigma0.ravel()))
    end = float(t[-1])
    if end == 0.0:
        states = np.repeat(start[:, None], t.shape[0], axis=1)
    else:
        solution = solve_ivp(rhs, (0.0, end), start, method=method, t_eval=t, rtol=rtol, atol=atol)
        if not solution.success:
            raise ValueError(f"solve_ivp failed on the Bures ODE: {solution.message}; loosen rtol or try method='Radau'")
        states = solution.y
    means = states[:dim].T
    covariances = states[dim:].T.reshape(-1, dim, dim)
    covariances = 0.5 * (covariances + np.swapaxes(covariances, 1, 2))
    energies = gaussian_free_energy(means, covariances, a, m_star, inverse_temperature)
    return GaussianTrajectory(times=t, means=means, covariances=covariances, free_energies=np.asarray(energies))


def exact_gaussian_flow(
    times: ArrayLike, matrix: ArrayLike, center: ArrayLike, mean0: ArrayLike, cov0: ArrayLike, beta: float
) -> GaussianTrajectory:
    """Evaluate the same flow in closed form with :func:`ou_mean` and :func:`ou_covariance`."""
    t = check_times(times)
    means = ou_mean(t, matrix, center, mean0)
    covariances = ou_covariance(t, matrix, cov0, beta)
    energies = gaussian_free_energy(means, covariances, matrix, center, beta)
    return GaussianTrajectory(times=t, means=means, covariances=covariances, free_energies=np.asarray(energies))


def compare_with_particles(
    matrix: ArrayLike,
    center: ArrayLike,
    mean0: ArrayLike,
    cov0: ArrayLike,
    beta: float,
    *,
    dt: float,
    steps: int,
    particles: int = 20_000,
    record_every: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    free_energy: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> BuresComparison:
    """Run Langevin particles from ``N(mean0, cov0)`` and compare them with the Bures ODE and the OU closed form.

    The particles follow the Euler–Maruyama chain, so their moments differ from the flow by the
    sampling error (``O(N^{−1/2})``) plus the ``O(dt)`` time-step bias
    (:func:`hclm.dynamics.ornstein_uhlenbeck.em_moments` gives the chain's exact moments).

    Args:
        matrix: ``A``, symmetric positive definite, shape (d, d).
        center: ``m*``, shape (d,).
        mean0: initial mean, shape (d,).
        cov0: initial covariance, shape (d, d), positive definite.
        beta: inverse temperature ``β > 0``.
        dt: Langevin time step with ``dt·λ_max(A) < 2``.
        steps: Langevin steps ``≥ 1``.
        particles: number of particles ``≥ 2``.
        record_every: steps between records; default ``max(1, steps // 100)``.
        seed: seed of the initial draw and of the noise.
        dtype: particle dtype.
        free_energy: also record the k-NN free-energy estimate of the particles.
        progress: called as ``progress(step, steps)``.

    Returns:
        The :class:`BuresComparison`; both trajectories are evaluated at the particle record times.
    """
    potential = QuadraticPotential(matrix, center)
    dim = potential.dim
    m0 = check_vector(mean0, dim, "mean0")
    sigma0 = check_covariance(cov0, dim)
    initial = gaussian_particles(particles, m0, sigma0, seed=seed, dtype=dtype)
    run = run_langevin(
        potential,
        initial,
        dt=dt,
        steps=steps,
        beta=beta,
        record_every=record_every,
        free_energy=free_energy,
        seed=seed + 1,
        progress=progress,
    )
    bures = solve_bures_flow(run.times, potential.matrix, potential.center, m0, sigma0, beta)
    exact = exact_gaussian_flow(run.times, potential.matrix, potential.center, m0, sigma0, beta)
    mean_errors = np.linalg.norm(run.means - bures.means, axis=1)
    covariance_errors = np.linalg.norm(run.covariances - bures.covariances, axis=(1, 2))
    w2_errors = np.array(
        [
            wasserstein2_gaussian(m, s, mb, sb)
            for m, s, mb, sb in zip(run.means, run.covariances, bures.means, bures.covariances)
        ]
    )
    ode_errors = np.maximum(
        np.abs(bures.covariances - exact.covariances).max(axis=(1, 2)), np.abs(bures.means - exact.means).max(axis=1)
    )
    logger.info("Bures comparison: largest W2 between particles and ODE %.3g", float(w2_errors.max()))
    return BuresComparison(
        bures=bures,
        exact=exact,
        particles=run,
        mean_errors=mean_errors,
        covariance_errors=covariance_errors,
        w2_errors=w2_errors,
        ode_errors=ode_errors,
    )
