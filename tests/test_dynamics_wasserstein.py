"""Tests of the Wasserstein gradient-flow tools against closed forms and independent solvers.

Statistical checks use a z-score from a Bonferroni bound: with K comparisons, each held to
``z = Φ⁻¹(1 − p/(2K))`` standard errors, a correct implementation fails with probability at most
``p = 1e-6`` for a random seed. Deterministic checks use rounding bounds stated at each test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import ot
import pytest
import scipy.linalg
import torch
import typer
from scipy.spatial import cKDTree
from scipy.stats import norm
from typer.testing import CliRunner

from hclm.cli_simulate import simulate_app
from hclm.dynamics.bures import bures_velocity, compare_with_particles, exact_gaussian_flow, solve_bures_flow
from hclm.dynamics.fokker_planck import (
    bernoulli,
    discrete_gibbs_density,
    scharfetter_gummel_operator,
    solve_fokker_planck,
)
from hclm.dynamics.jko import gaussian_quantiles, jko_step, quantiles_from_density, run_jko
from hclm.dynamics.langevin import QuadraticPotential, check_step_size, gaussian_particles, run_langevin
from hclm.dynamics.ornstein_uhlenbeck import (
    em_moments,
    em_stationary_covariance,
    gaussian_free_energy,
    gibbs_free_energy,
    ou_covariance,
    ou_mean,
    ou_stationary_covariance,
)
from hclm.dynamics.simulate import simulate_fokker_planck
from hclm.dynamics.wasserstein import (
    wasserstein2_1d,
    wasserstein2_densities_1d,
    wasserstein2_empirical,
    wasserstein2_gaussian,
    wasserstein2_quantiles,
)

EPS = float(np.finfo(np.float64).eps)
FAMILY_FAILURE = 1e-6
A2 = np.array([[1.0, 0.3], [0.3, 2.0]])
CENTER2 = np.array([0.5, -1.0])
MEAN0 = np.array([2.0, 1.0])
COV0 = np.array([[0.3, 0.05], [0.05, 0.2]])
BETA = 2.0


def bonferroni_z(count: int) -> float:
    """Return the two-sided z for ``count`` comparisons at family-wise failure probability 1e-6."""
    return float(norm.isf(FAMILY_FAILURE / (2 * count)))


def double_well(x: np.ndarray) -> np.ndarray:
    return (x**2 - 1.0) ** 2


def quadratic_1d(x: np.ndarray) -> np.ndarray:
    return 0.5 * x**2


# --- Ornstein–Uhlenbeck closed form -------------------------------------------------------------


def test_ou_matches_expm_formula():
    times = np.array([0.0, 0.1, 0.7, 3.0])
    stationary = scipy.linalg.solve_continuous_lyapunov(A2, (2.0 / BETA) * np.eye(2))
    covariances = ou_covariance(times, A2, COV0, BETA)
    means = ou_mean(times, A2, CENTER2, MEAN0)
    # Both sides are a few 2×2 products of O(1) numbers, and expm is accurate to about 1e-15,
    # so 1e-12 is far above rounding and far below any formula error.
    for t, covariance, mean in zip(times, covariances, means):
        propagator = scipy.linalg.expm(-A2 * t)
        expected = propagator @ (COV0 - stationary) @ propagator + stationary
        assert np.abs(covariance - expected).max() < 1e-12, t
        assert np.abs(mean - (CENTER2 + propagator @ (MEAN0 - CENTER2))).max() < 1e-12, t


def test_ou_stationary_is_gibbs():
    expected = np.linalg.inv(A2) / BETA
    assert np.abs(ou_stationary_covariance(A2, BETA) - expected).max() < 1e-14
    assert np.abs(ou_covariance([60.0], A2, COV0, BETA)[0] - expected).max() < 1e-14


def test_gibbs_free_energy_is_minimum():
    gibbs = ou_stationary_covariance(A2, BETA)
    at_gibbs = float(gaussian_free_energy(CENTER2, gibbs, A2, CENTER2, BETA))
    assert abs(at_gibbs - gibbs_free_energy(A2, BETA)) < 1e-14
    away = float(gaussian_free_energy(MEAN0, COV0, A2, CENTER2, BETA))
    assert away > at_gibbs


def test_gaussian_free_energy_matches_quadrature():
    # 1-D: E[V] and the entropy by Gauss–Hermite quadrature, exact for these polynomial/log terms.
    a, mean, std = 1.7, 0.4, 0.6
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    x = mean + std * nodes
    weights = weights / weights.sum()
    energy = float(np.sum(weights * 0.5 * a * x**2))
    log_density = -0.5 * nodes**2 - math.log(std * math.sqrt(2.0 * math.pi))
    entropy = -float(np.sum(weights * log_density))
    expected = energy - entropy / BETA
    value = float(gaussian_free_energy([mean], [[std**2]], [[a]], [0.0], BETA))
    assert abs(value - expected) < 1e-13


def test_em_stationary_variance_1d():
    for a, dt in ((1.0, 0.01), (3.0, 0.2), (0.5, 3.9)):
        expected = (2.0 / BETA) * dt / (1.0 - (1.0 - a * dt) ** 2)
        value = float(em_stationary_covariance([[a]], BETA, dt)[0, 0])
        assert abs(value - expected) <= 1e-13 * expected, (a, dt)


def test_em_moments_match_recursion():
    dt, steps = 0.05, 40
    transition = np.eye(2) - dt * A2
    mean, covariance = MEAN0.copy(), COV0.copy()
    means, covariances = em_moments(np.arange(steps + 1), A2, CENTER2, MEAN0, COV0, BETA, dt)
    for k in range(steps + 1):
        assert np.abs(means[k] - mean).max() < 1e-13, k
        assert np.abs(covariances[k] - covariance).max() < 1e-13, k
        mean = transition @ mean + dt * A2 @ CENTER2
        covariance = transition @ covariance @ transition + (2.0 * dt / BETA) * np.eye(2)


def test_em_bias_is_first_order():
    # Σ_EM − Σ∞ = (dt/(2β))(I − dt·A/2)⁻¹, so it differs from dt/(2β)·I by
    # (dt/(2β))(dt·A/2)(I − dt·A/2)⁻¹, whose norm is at most dt²λ/(4β(1 − dt·λ/2)) with λ = λ_max.
    lam = float(np.linalg.eigvalsh(A2)[-1])
    for dt in (1e-2, 1e-3, 1e-4):
        bias = em_stationary_covariance(A2, BETA, dt) - ou_stationary_covariance(A2, BETA)
        leading = dt / (2.0 * BETA) * np.eye(2)
        second_order = dt * dt * lam / (4.0 * BETA * (1.0 - dt * lam / 2.0))
        # The subtraction that forms the bias rounds at the scale of Σ∞ itself.
        rounding = 4 * EPS * float(np.abs(ou_stationary_covariance(A2, BETA)).max())
        assert np.abs(bias - leading).max() <= second_order + rounding, dt


# --- Langevin particles -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def langevin_run():
    particles, dt, steps = 20_000, 0.01, 200
    initial = gaussian_particles(particles, MEAN0, COV0, seed=3)
    run = run_langevin(QuadraticPotential(A2, CENTER2), initial, dt=dt, steps=steps, beta=BETA, record_every=50, seed=4)
    return run, particles


def _standard_errors(covariances: np.ndarray, particles: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors of the sample mean and of the sample covariance entries of Gaussian draws."""
    variances = np.diagonal(covariances, axis1=1, axis2=2)
    mean_se = np.sqrt(variances / particles)
    cov_se = np.sqrt((variances[:, :, None] * variances[:, None, :] + covariances**2) / particles)
    return mean_se, cov_se


def test_particles_match_em_chain(langevin_run):
    run, particles = langevin_run
    means, covariances = em_moments(run.steps, A2, CENTER2, MEAN0, COV0, BETA, run.dt)
    mean_se, cov_se = _standard_errors(covariances, particles)
    z = bonferroni_z(run.steps.shape[0] * 5)
    assert np.all(np.abs(run.means - means) <= z * mean_se)
    assert np.all(np.abs(run.covariances - covariances) <= z * cov_se)


def test_particles_match_ou_within_bias(langevin_run):
    run, particles = langevin_run
    exact_means = ou_mean(run.times, A2, CENTER2, MEAN0)
    exact_covariances = ou_covariance(run.times, A2, COV0, BETA)
    chain_means, chain_covariances = em_moments(run.steps, A2, CENTER2, MEAN0, COV0, BETA, run.dt)
    mean_se, cov_se = _standard_errors(exact_covariances, particles)
    z = bonferroni_z(run.steps.shape[0] * 5)
    mean_bias = np.abs(chain_means - exact_means)
    cov_bias = np.abs(chain_covariances - exact_covariances)
    assert np.all(np.abs(run.means - exact_means) <= z * mean_se + mean_bias)
    assert np.all(np.abs(run.covariances - exact_covariances) <= z * cov_se + cov_bias)


def test_free_energy_record_is_consistent(langevin_run):
    run, _ = langevin_run
    assert np.allclose(run.free_energies, run.potential_energies - run.entropies / BETA, rtol=0, atol=1e-12)


def test_knn_free_energy_at_gibbs():
    particles, samples = 20_000, 4096
    gibbs = ou_stationary_covariance(A2, BETA)
    initial = gaussian_particles(particles, CENTER2, gibbs, seed=5, dtype=torch.float64)
    potential = QuadraticPotential(A2, CENTER2)
    run = run_langevin(potential, initial, dt=1e-3, steps=1, beta=BETA, entropy_samples=samples, seed=6)
    points = initial.numpy()
    # Standard error of the Kozachenko–Leonenko estimate d·mean(log ρ_i) and of mean V, from an
    # independent neighbour search on 4096 of the same particles. The estimator's bias is left out because,
    # over 8 seeds at 4096 points, the mean deviation was 0.02 of this standard error.
    subset = points[:samples]
    distances, _ = cKDTree(subset).query(subset, k=4)
    entropy_se = 2.0 * np.std(np.log(distances[:, 3])) / math.sqrt(samples)
    energy = potential(initial).numpy()
    energy_se = energy.std() / math.sqrt(particles)
    tolerance = bonferroni_z(1) * math.hypot(entropy_se / BETA, energy_se)
    assert abs(run.free_energies[0] - gibbs_free_energy(A2, BETA)) <= tolerance


def test_autograd_gradient_matches_analytic():
    initial = gaussian_particles(500, MEAN0, COV0, seed=7, dtype=torch.float64)
    potential = QuadraticPotential(A2, CENTER2)
    fused = run_langevin(potential, initial, dt=0.01, steps=20, beta=BETA, free_energy=False, seed=8)
    generic = run_langevin(lambda x: potential(x), initial, dt=0.01, steps=20, beta=BETA, free_energy=False, seed=8)
    # Same noise, so the runs differ only by rounding of the drift, about 20 steps × eps × |x|.
    assert torch.allclose(fused.particles, generic.particles, rtol=0, atol=1e-12)


def test_unstable_dt_raises():
    potential = QuadraticPotential(A2, CENTER2)
    limit = 2.0 / float(np.linalg.eigvalsh(A2)[-1])
    initial = gaussian_particles(100, MEAN0, COV0)
    assert limit < 1.0
    with pytest.raises(ValueError, match=r"dt = 1 is unstable"):
        run_langevin(potential, initial, dt=1.0, steps=5)
    with pytest.raises(ValueError, match="dt"):
        check_step_size(A2, limit)
    check_step_size(A2, 0.999 * limit)


def test_divergent_run_raises():
    def quartic(x: torch.Tensor) -> torch.Tensor:
        return (x**4).sum(dim=1)

    initial = torch.full((64, 1), 3.0, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"diverged.*dt = 0\.5"):
        run_langevin(quartic, initial, dt=0.5, steps=50, free_energy=False)


def test_invalid_langevin_input_raises():
    initial = gaussian_particles(100, MEAN0, COV0)
    potential = QuadraticPotential(A2, CENTER2)
    for bad in ({"dt": 0.0, "steps": 1}, {"dt": 0.01, "steps": 0}, {"dt": 0.01, "steps": 1, "beta": -1.0}):
        with pytest.raises(ValueError):
            run_langevin(potential, initial, **bad)


# --- Bures–Wasserstein flow ----------------------------------------------------------------------


def test_bures_ode_matches_closed_form():
    times = np.linspace(0.0, 3.0, 31)
    rtol = 1e-10
    ode = solve_bures_flow(times, A2, CENTER2, MEAN0, COV0, BETA, rtol=rtol, atol=1e-12)
    exact = exact_gaussian_flow(times, A2, CENTER2, MEAN0, COV0, BETA)
    # The global error of an adaptive solver is about its local tolerance times the number of
    # e-folds it follows, λ_max·T ≈ 6 here; 100× the tolerance covers that with margin.
    tolerance = 100 * rtol * max(1.0, float(np.abs(exact.covariances).max()), float(np.abs(exact.means).max()))
    assert np.abs(ode.covariances - exact.covariances).max() <= tolerance
    assert np.abs(ode.means - exact.means).max() <= tolerance


def test_bures_velocity_is_ou_moment_ode():
    t, h = 0.4, 1e-4
    covariances = ou_covariance([t - h, t, t + h], A2, COV0, BETA)
    means = ou_mean([t - h, t, t + h], A2, CENTER2, MEAN0)
    mean_rate, cov_rate = bures_velocity(means[1], covariances[1], A2, CENTER2, BETA)
    # Central difference: truncation h²/6·|Σ'''| with |Σ'''| ≤ (2λ_max)³·‖Σ0 − Σ∞‖, rounding eps·|Σ|/h.
    lam = float(np.linalg.eigvalsh(A2)[-1])
    scale = float(np.abs(COV0 - ou_stationary_covariance(A2, BETA)).max() + np.abs(MEAN0 - CENTER2).max())
    tolerance = h * h / 6 * (2 * lam) ** 3 * 2 * scale + 4 * EPS * 3.0 / h
    assert np.abs(cov_rate - (covariances[2] - covariances[0]) / (2 * h)).max() <= tolerance
    assert np.abs(mean_rate - (means[2] - means[0]) / (2 * h)).max() <= tolerance


def test_bures_velocity_is_w2_gradient():
    # Σ̇ = −2(GΣ + ΣG) with G = ∇_Σ F, where F(Σ) = ½tr(AΣ) − β⁻¹·½ log det Σ + const; G by autograd.
    sigma = torch.tensor(COV0, dtype=torch.float64, requires_grad=True)
    matrix = torch.tensor(A2)
    energy = 0.5 * torch.trace(matrix @ sigma) - 0.5 * torch.logdet(sigma) / BETA
    (gradient,) = torch.autograd.grad(energy, sigma)
    gradient = 0.5 * (gradient + gradient.T).numpy()
    expected = -2.0 * (gradient @ COV0 + COV0 @ gradient)
    _, cov_rate = bures_velocity(MEAN0, COV0, A2, CENTER2, BETA)
    assert np.abs(cov_rate - expected).max() < 1e-13


def test_bures_comparison_within_sampling():
    particles = 20_000
    comparison = compare_with_particles(
        A2, CENTER2, MEAN0, COV0, BETA, dt=0.01, steps=100, particles=particles, record_every=50, free_energy=False
    )
    run = comparison.particles
    chain_means, chain_covariances = em_moments(run.steps, A2, CENTER2, MEAN0, COV0, BETA, run.dt)
    _, cov_se = _standard_errors(comparison.bures.covariances, particles)
    z = bonferroni_z(run.steps.shape[0] * 3)
    bias = np.abs(chain_covariances - comparison.exact.covariances)
    ode_error = comparison.ode_errors[:, None, None]
    assert np.all(np.abs(run.covariances - comparison.bures.covariances) <= z * cov_se + bias + ode_error)
    # Default solver tolerance 1e-10, times the 100 allowed in test_bures_ode_matches_closed_form.
    assert comparison.ode_errors.max() <= 100 * 1e-10 * max(1.0, float(np.abs(comparison.exact.means).max()))


# --- Finite-volume Fokker–Planck -----------------------------------------------------------------


def test_bernoulli_matches_definition():
    u = np.array([-700.0, -30.0, -1.0, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 1.0, 30.0, 700.0])
    with np.errstate(over="ignore"):
        expected = np.where(u == 0, 1.0, u / np.expm1(np.where(u == 0, 1.0, u)))
    expected[u == 700.0] = 700.0 * math.exp(-700.0)
    assert np.allclose(bernoulli(u), expected, rtol=1e-14, atol=0)
    # B(−u) = B(u) + u; the sum cancels for u ≪ 0, so the bound is relative to |B(u)| + |u|.
    assert np.all(np.abs(bernoulli(-u) - (bernoulli(u) + u)) <= 4 * EPS * (bernoulli(u) + np.abs(u)))


def test_gibbs_is_exact_steady_state():
    centers = np.linspace(-3, 3, 201)[:-1] + 0.015
    values = double_well(centers)
    operator = scharfetter_gummel_operator(values, 0.03, 3.0)
    gibbs = discrete_gibbs_density(values, 0.03, 3.0)
    rate = operator[1] * gibbs
    rate[:-1] += operator[0, :-1] * gibbs[1:]
    rate[1:] += operator[2, :-1] * gibbs[:-1]
    magnitude = np.abs(operator[1]) * gibbs
    magnitude[:-1] += np.abs(operator[0, :-1]) * gibbs[1:]
    magnitude[1:] += np.abs(operator[2, :-1]) * gibbs[:-1]
    # A row of L·g sums three products, each exact up to a few eps, except that exp(−βV_i) carries
    # the relative error eps·β(V_i − V_min) of its rounded argument.
    condition = 1.0 + 3.0 * (values - values.min())
    assert np.all(np.abs(rate) <= 8 * EPS * condition * magnitude)


def test_columns_of_generator_sum_to_zero():
    values = double_well(np.linspace(-2.9, 2.9, 50))
    operator = scharfetter_gummel_operator(values, 0.12, 2.0)
    column = operator[1].copy()
    column[1:] += operator[0, :-1]
    column[:-1] += operator[2, :-1]
    assert np.all(np.abs(column) <= 4 * EPS * np.abs(operator[1]))


@pytest.fixture(scope="module")
def fv_run():
    cells, dt, beta = 200, 0.25, 3.0
    solution = solve_fokker_planck(
        double_well, (-3.0, 3.0), cells, lambda x: np.exp(-((x - 1.5) ** 2) / 0.02), beta=beta, dt=dt, steps=400, record_every=1
    )
    return solution


def test_fv_conserves_mass(fv_run):
    solution = fv_run
    h = solution.width
    # Backward-stable tridiagonal solve: per step the mass changes by at most about
    # 3·eps·(column sum of |I − dt·L|) = 3·eps·(1 + 4·dt/(β·h²)), plus n·eps for the sum itself.
    per_step = 3 * EPS * (1 + 4 * solution.dt / (solution.beta * h * h))
    bound = solution.steps * per_step + solution.centers.shape[0] * EPS
    assert np.all(np.abs(solution.masses - 1.0) <= bound)


def free_energy_rounding(solution) -> np.ndarray:
    """Bound the rounding of a difference of two discrete free energies, one per snapshot.

    Summing n terms rounds by at most n·eps·Σ|terms|, once for each of the two energies compared.
    """
    rho = solution.densities
    entropy_terms = np.where(rho > 0, rho * np.log(np.where(rho > 0, rho, 1.0)), 0.0) / solution.beta
    terms = solution.width * np.abs(rho * solution.potential + entropy_terms)
    return 2 * solution.centers.shape[0] * EPS * terms.sum(axis=1)


def test_fv_free_energy_non_increasing(fv_run):
    solution = fv_run
    rounding = free_energy_rounding(solution)
    assert np.all(np.diff(solution.free_energies) <= rounding[1:])
    assert solution.free_energies[-1] >= solution.gibbs_free_energy - rounding[-1]


def test_fv_converges_to_gibbs(fv_run):
    # L·diag(g) is symmetric (detailed balance), so L is self-adjoint in ℓ²(1/g) with spectral gap γ.
    # Backward Euler then contracts the deviation from g by 1/(1 + dt·γ) per step in that norm.
    solution = fv_run
    operator = scharfetter_gummel_operator(solution.potential, solution.width, solution.beta)
    dense = np.diag(operator[1]) + np.diag(operator[0, :-1], 1) + np.diag(operator[2, :-1], -1)
    root = np.sqrt(solution.gibbs)
    symmetric = dense * root[None, :] / root[:, None]
    eigenvalues = np.linalg.eigvalsh(0.5 * (symmetric + symmetric.T))
    gap = -eigenvalues[-2]
    deviation = np.sqrt(np.sum((solution.densities - solution.gibbs) ** 2 / solution.gibbs, axis=1))
    bound = deviation[0] * (1 + solution.dt * gap) ** (-solution.steps.astype(float))
    # The weighted norm divides by g down to 1e-80, so it needs entry-wise relative accuracy: the
    # M-matrix solves give that, and n·eps per step allows for its rounding.
    allowance = 1.0 + solution.steps * solution.centers.shape[0] * EPS
    assert np.all(deviation <= bound * allowance)
    # KL ≤ χ² = h·Σ(ρ − g)²/g, and F_h − F_h(g) = KL/β for unit-mass densities.
    chi_squared = solution.width * deviation[-1] ** 2
    gap_bound = chi_squared / solution.beta + free_energy_rounding(solution)[-1]
    assert solution.free_energies[-1] - solution.gibbs_free_energy <= gap_bound


def test_fv_gibbs_steady_under_steps():
    centers_values = lambda x: double_well(x)  # noqa: E731
    solution = solve_fokker_planck(
        centers_values, (-2.5, 2.5), 100, lambda x: np.exp(-3.0 * double_well(x)), beta=3.0, dt=10.0, steps=20
    )
    assert np.abs(solution.densities[-1] - solution.gibbs).max() <= 1e-12 * solution.gibbs.max()


def test_fv_approaches_ou_with_refinement():
    # V = ½x², start N(1, 0.3²): the exact law at t is Gaussian with the OU mean and variance.
    t_end, errors = 0.5, []
    for cells, dt in ((100, 0.02), (200, 0.01), (400, 0.005)):
        solution = solve_fokker_planck(
            quadratic_1d, (-5.0, 5.0), cells, lambda x: np.exp(-0.5 * ((x - 1.0) / 0.3) ** 2),
            beta=1.0, dt=dt, steps=round(t_end / dt), record_every=round(t_end / dt),
        )
        mean = float(ou_mean([t_end], [[1.0]], [0.0], [1.0])[0, 0])
        std = math.sqrt(float(ou_covariance([t_end], [[1.0]], [[0.09]], 1.0)[0, 0, 0]))
        exact = quantiles_from_density(solution.edges, np.diff(norm.cdf(solution.edges, mean, std)) / solution.width, 400)
        errors.append(wasserstein2_quantiles(quantiles_from_density(solution.edges, solution.densities[-1], 400), exact))
    assert errors[1] < errors[0]
    assert errors[2] < errors[1]


def test_fv_invalid_input_raises():
    with pytest.raises(ValueError, match="cells"):
        solve_fokker_planck(double_well, (-1, 1), 2, np.ones, dt=0.1, steps=1)
    with pytest.raises(ValueError, match="dt"):
        solve_fokker_planck(double_well, (-1, 1), 10, np.ones, dt=-0.1, steps=1)
    with pytest.raises(ValueError, match="interval"):
        solve_fokker_planck(double_well, (1, -1), 10, np.ones, dt=0.1, steps=1)


# --- JKO ---------------------------------------------------------------------------------------


def test_jko_mean_exact_for_quadratic():
    # The barrier terms of the gradient telescope, so Σ_j(aX_j + (X_j − Y_j)/τ) = 0 at the minimizer.
    a, tau, previous = 1.3, 0.2, gaussian_quantiles(1.0, 0.5, 200)
    x, _ = jko_step(previous, lambda z: 0.5 * a * z**2, tau, BETA, derivative=lambda z: a * z, second_derivative=lambda z: np.full_like(z, a))
    assert abs(x.mean() - previous.mean() / (1 + a * tau)) < 1e-12


def test_jko_gaussian_step_converges_in_levels():
    # The exact JKO step from N(μ, σ²) for V = ½ax² is N(μ/(1 + aτ), s²) with
    # (a + 1/τ)s² − (σ/τ)s − 1/β = 0; the quantile discretization error must shrink with M.
    a, tau, mean, std = 1.0, 0.1, 1.0, 0.5
    curvature = a + 1 / tau
    s = (std / tau + math.sqrt(std**2 / tau**2 + 4 * curvature / BETA)) / (2 * curvature)
    errors = []
    for count in (100, 400, 1600):
        x, _ = jko_step(gaussian_quantiles(mean, std, count), lambda z: 0.5 * a * z**2, tau, BETA)
        errors.append(wasserstein2_quantiles(x, gaussian_quantiles(mean / (1 + a * tau), s, count)))
    assert errors[1] < errors[0]
    assert errors[2] < errors[1]
    assert errors[2] < 1e-3


@pytest.fixture(scope="module")
def fv_reference():
    t_end, beta = 0.4, 3.0
    solution = solve_fokker_planck(
        double_well, (-3.0, 3.0), 1200, lambda x: np.exp(-0.5 * ((x - 0.5) / 0.3) ** 2),
        beta=beta, dt=1e-4, steps=4000, record_every=4000,
    )
    return solution, t_end, beta


def test_jko_approaches_fv_as_tau_shrinks(fv_reference):
    solution, t_end, beta = fv_reference
    count = 400
    start = quantiles_from_density(solution.edges, solution.densities[0], count)
    reference = quantiles_from_density(solution.edges, solution.densities[-1], count)
    errors = []
    for steps in (2, 4, 8, 16):
        run = run_jko(double_well, start, tau=t_end / steps, steps=steps, beta=beta)
        errors.append(wasserstein2_quantiles(run.quantiles[-1], reference))
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse


def test_jko_free_energy_non_increasing(fv_reference):
    solution, t_end, beta = fv_reference
    start = quantiles_from_density(solution.edges, solution.densities[0], 200)
    run = run_jko(double_well, start, tau=0.05, steps=8, beta=beta)
    # Each step minimizes F + W2²/(2τ) from the previous state, so F cannot rise beyond the
    # Newton stopping tolerance 1e-12.
    assert np.all(np.diff(run.free_energies) <= 1e-11)


# --- W2 distances ------------------------------------------------------------------------------


def test_w2_gaussian_1d_closed_form():
    for m1, s1, m2, s2 in ((0.0, 1.0, 1.0, 2.0), (-3.0, 0.1, 2.0, 0.1), (0.5, 3.0, 0.5, 0.2)):
        value = wasserstein2_gaussian([m1], [[s1**2]], [m2], [[s2**2]])
        assert abs(value - math.hypot(m1 - m2, s1 - s2)) < 1e-12


def test_w2_gaussian_commuting_case():
    first, second = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mean1, mean2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = math.sqrt(np.sum((mean1 - mean2) ** 2) + np.sum((np.sqrt(first) - np.sqrt(second)) ** 2))
    assert abs(wasserstein2_gaussian(mean1, np.diag(first), mean2, np.diag(second)) - expected) < 1e-12


def test_w2_density_grid_gaussians():
    edges = np.linspace(-12.0, 12.0, 2401)
    h = edges[1] - edges[0]
    for m1, s1, m2, s2 in ((0.0, 1.0, 1.5, 0.5), (-2.0, 2.0, 1.0, 1.0)):
        density_a = np.diff(norm.cdf(edges, m1, s1)) / h
        density_b = np.diff(norm.cdf(edges, m2, s2)) / h
        # The binned CDF equals the exact CDF at the edges, so each binned quantile is within one
        # cell h of the exact quantile, and W2 moves by at most 2h (triangle inequality in L²).
        value = wasserstein2_densities_1d(edges, density_a, density_b)
        assert abs(value - math.hypot(m1 - m2, s1 - s2)) <= 2 * h


def test_w2_1d_empirical_matches_pot():
    generator = np.random.default_rng(11)
    x, y = generator.normal(size=37), generator.normal(1.0, 2.0, size=53)
    x_weights, y_weights = generator.random(37), generator.random(53)
    cost = (x[:, None] - y[None, :]) ** 2
    for a, b in ((None, None), (x_weights, y_weights)):
        a_norm = np.full(37, 1 / 37) if a is None else a / a.sum()
        b_norm = np.full(53, 1 / 53) if b is None else b / b.sum()
        expected = math.sqrt(ot.emd2(a_norm, b_norm, cost, numItermax=10**7))
        assert abs(wasserstein2_1d(x, y, a, b) - expected) < 1e-9


def test_w2_1d_equal_sizes_sorted():
    generator = np.random.default_rng(12)
    x, y = generator.normal(size=100), generator.normal(size=100)
    assert abs(wasserstein2_1d(x, y) - wasserstein2_empirical(x[:, None], y[:, None])) < 1e-9


def test_w2_gaussian_against_pot_samples():
    # For any symmetric positive definite T, x ↦ m2 + T(x − m1) is the gradient of a convex
    # function, so by Brenier it is the optimal map from any measure to its image. With
    # x ~ N(m1, Σ1) the image is N(m2, TΣ1T), and mean_i ‖x_i − y_i‖² is an unbiased estimate of
    # the closed-form W2² with the sample's own standard error.
    generator = np.random.default_rng(13)
    dim, count = 3, 800
    mean1, mean2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 1.0])
    factor = generator.normal(size=(dim, dim))
    cov1 = factor @ factor.T + 0.5 * np.eye(dim)
    skew = generator.normal(size=(dim, dim))
    transport = skew @ skew.T / dim + 0.3 * np.eye(dim)
    cov2 = transport @ cov1 @ transport
    x = generator.multivariate_normal(mean1, cov1, size=count)
    y = mean2 + (x - mean1) @ transport
    empirical = wasserstein2_empirical(x, y)
    squared_costs = np.sum((x - y) ** 2, axis=1)
    assert abs(empirical**2 - squared_costs.mean()) <= 1e-8 * squared_costs.mean()
    closed = wasserstein2_gaussian(mean1, cov1, mean2, cov2)
    standard_error = squared_costs.std(ddof=1) / math.sqrt(count)
    assert abs(empirical**2 - closed**2) <= bonferroni_z(1) * standard_error


def test_w2_rejects_bad_input():
    with pytest.raises(ValueError):
        wasserstein2_gaussian([0.0], [[-1.0]], [0.0], [[1.0]])
    with pytest.raises(ValueError):
        wasserstein2_1d([np.nan], [0.0])
    with pytest.raises(ValueError):
        wasserstein2_densities_1d([0.0, 1.0], [0.0], [1.0])


# --- Simulation runners and CLI ----------------------------------------------------------------


def test_simulate_rejects_bad_config(tmp_path):
    with pytest.raises(ValueError, match="jko_steps"):
        simulate_fokker_planck(tmp_path / "a", steps=100, jko_steps=7)
    with pytest.raises(ValueError, match="cells"):
        simulate_fokker_planck(tmp_path / "b", cells=2)


@pytest.fixture(scope="module")
def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(simulate_app, name="simulate")
    return app


CLI_CASES = {
    "langevin": (["--particles", "3000", "--steps", "60", "--entropy-samples", "1000"], ("moments.png", "free_energy.png")),
    "ou": (["--particles", "3000", "--steps", "60"], ("covariance.png", "convergence.png")),
    "fokker-planck": (
        ["--cells", "120", "--steps", "200", "--jko-steps", "10", "--jko-quantiles", "100"],
        ("density.png", "free_energy.png", "jko_vs_fv.png"),
    ),
}


@pytest.mark.parametrize("kind", sorted(CLI_CASES))
def test_cli_writes_summary_and_plots(cli_app, tmp_path, kind):
    options, plots = CLI_CASES[kind]
    out = tmp_path / kind
    result = CliRunner().invoke(cli_app, ["simulate", kind, "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == kind
    assert set(summary["plots"].values()) == set(plots)
    for name in plots:
        assert (out / name).stat().st_size > 1000, name


def test_cli_bad_dt_exits_2(cli_app, tmp_path):
    result = CliRunner().invoke(cli_app, ["simulate", "langevin", "--out", str(tmp_path / "x"), "--dt", "0.6"])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "dt = 0.6" in result.output


def test_cli_reused_folder_exits_2(cli_app, tmp_path):
    out = tmp_path / "fp"
    options = ["--cells", "50", "--steps", "20", "--jko-steps", "2", "--jko-quantiles", "50"]
    first = CliRunner().invoke(cli_app, ["simulate", "fokker-planck", "--out", str(out), *options])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(cli_app, ["simulate", "fokker-planck", "--out", str(out), *options])
    assert second.exit_code == 2
    assert "summary.json" in second.output
