"""Configured runs of the Wasserstein-flow tools that write ``summary.json`` and PNG plots to a folder.

``simulate_langevin`` checks particles against the OU closed form, ``simulate_ou`` the Bures ODE
against it, and ``simulate_fokker_planck`` the finite-volume solver against JKO steps and Gibbs.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hclm._io import atomic_write_bytes, atomic_write_json
from hclm.dynamics.bures import compare_with_particles
from hclm.dynamics.fokker_planck import FokkerPlanckSolution, solve_fokker_planck
from hclm.dynamics.jko import (
    JKOTrajectory,
    density_from_quantiles,
    jko_step,
    quantile_free_energy,
    quantiles_from_density,
    run_jko,
)
from hclm.dynamics.langevin import (
    DEFAULT_ENTROPY_SAMPLES,
    QuadraticPotential,
    check_step_size,
    gaussian_particles,
    run_langevin,
)
from hclm.dynamics.ornstein_uhlenbeck import (
    em_moments,
    gaussian_free_energy,
    gibbs_free_energy,
    ou_covariance,
    ou_mean,
    ou_stationary_covariance,
)
from hclm.dynamics.wasserstein import wasserstein2_gaussian, wasserstein2_quantiles

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

POTENTIALS_1D = ("double-well", "quadratic")
"""Potentials of :func:`simulate_fokker_planck`: ``barrier·(x² − 1)²`` and ``½·stiffness·x²``."""

_DPI = 110
_BAND_ALPHA = 0.2
# Number of standard errors on each side of the sample-size band.
_BAND_WIDTH = 2.0
# Coordinates drawn in the moment plots; higher ones are left out to keep the legend readable.
_MAX_PLOTTED_COORDINATES = 4
# Density snapshots drawn in the Fokker–Planck plot.
_SNAPSHOTS = 5


def simulate_langevin(
    out: str | os.PathLike[str],
    *,
    dim: int = 2,
    particles: int = 20_000,
    steps: int = 500,
    dt: float = 0.01,
    beta: float = 1.0,
    stiffness_min: float = 1.0,
    stiffness_max: float = 4.0,
    rotation: float = 30.0,
    start: float = 2.0,
    start_std: float = 0.3,
    record_every: int | None = None,
    entropy_samples: int = DEFAULT_ENTROPY_SAMPLES,
    float64: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run Langevin particles in ``V = ½xᵀAx`` from ``N(start·1, start_std²·I)`` and compare with the OU closed form.

    ``A`` has the eigenvalues ``geomspace(stiffness_min, stiffness_max, dim)`` and its first two
    eigenvectors are the first two axes rotated by ``rotation`` degrees. Writes ``summary.json``,
    ``moments.png`` (particle mean minus the OU mean, and particle variances against the OU
    solution, each with a band of ±2 standard errors for ``N`` particles) and
    ``free_energy.png`` (the k-NN estimate against the exact Gaussian free energy).

    Args:
        out: output folder; created after the run succeeds, rejected if it already has a ``summary.json``.
        dim: dimension ``d ≥ 1``.
        particles: number of particles ``N``, more than 3.
        steps: Euler–Maruyama steps ``≥ 1``.
        dt: time step, ``0 < dt < 2/stiffness_max``.
        beta: inverse temperature ``β > 0``.
        stiffness_min, stiffness_max: smallest and largest eigenvalue of ``A``, ``0 < min ≤ max``.
        rotation: rotation of the eigenvectors in the plane of the first two axes, in degrees.
        start: initial mean of every coordinate.
        start_std: initial standard deviation of every coordinate, ``> 0``.
        record_every: steps between records; default ``max(1, steps // 100)``.
        entropy_samples: particles used by the k-NN entropy estimate.
        float64: simulate in float64 instead of float32.
        seed: seed of the initial draw; the noise uses ``seed + 1``.
        progress: called as ``progress(step, steps)``.

    Returns:
        The summary written to ``summary.json``.
    """
    folder = _check_folder(out)
    _check_int("dim", dim, 1)
    _check_int("particles", particles, 4)
    _check_int("steps", steps, 1)
    _check_float("dt", dt)
    _check_float("beta", beta)
    _check_float("start_std", start_std)
    matrix = _quadratic_matrix(dim, stiffness_min, stiffness_max, rotation)
    check_step_size(matrix, dt)
    config = {
        "dim": dim,
        "particles": particles,
        "steps": steps,
        "dt": dt,
        "beta": beta,
        "stiffness_min": stiffness_min,
        "stiffness_max": stiffness_max,
        "rotation_degrees": rotation,
        "start": start,
        "start_std": start_std,
        "record_every": record_every,
        "entropy_samples": entropy_samples,
        "float64": float64,
        "seed": seed,
    }

    center = np.zeros(dim)
    mean0 = np.full(dim, float(start))
    cov0 = float(start_std) ** 2 * np.eye(dim)
    potential = QuadraticPotential(matrix, center)
    dtype = torch.float64 if float64 else torch.float32
    began = time.perf_counter()
    initial = gaussian_particles(particles, mean0, cov0, seed=seed, dtype=dtype)
    run = run_langevin(
        potential,
        initial,
        dt=dt,
        steps=steps,
        beta=beta,
        record_every=record_every,
        entropy_samples=entropy_samples,
        seed=seed + 1,
        progress=progress,
    )
    elapsed = time.perf_counter() - began

    exact_means = ou_mean(run.times, matrix, center, mean0)
    exact_covariances = ou_covariance(run.times, matrix, cov0, beta)
    chain_means, chain_covariances = em_moments(run.steps, matrix, center, mean0, cov0, beta, dt)
    exact_energy = np.asarray(gaussian_free_energy(exact_means, exact_covariances, matrix, center, beta))
    gibbs_energy = gibbs_free_energy(matrix, beta)
    mean_errors = np.abs(run.means - exact_means) / np.sqrt(np.diagonal(exact_covariances, axis1=1, axis2=2) / particles)
    results = {
        "elapsed_seconds": elapsed,
        "stability_limit_dt": 2.0 / float(np.linalg.eigvalsh(matrix)[-1]),
        "final_time": float(run.times[-1]),
        "final_mean": run.means[-1].tolist(),
        "final_mean_exact": exact_means[-1].tolist(),
        "final_covariance": run.covariances[-1].tolist(),
        "final_covariance_exact": exact_covariances[-1].tolist(),
        "final_covariance_euler_maruyama": chain_covariances[-1].tolist(),
        "max_mean_error_in_standard_errors": float(mean_errors.max()),
        "max_covariance_error": float(np.abs(run.covariances - exact_covariances).max()),
        "max_covariance_error_vs_euler_maruyama": float(np.abs(run.covariances - chain_covariances).max()),
        "final_free_energy_knn": float(run.free_energies[-1]),
        "final_free_energy_exact": float(exact_energy[-1]),
        "gibbs_free_energy": gibbs_energy,
    }
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "moments": _plot_moments(folder, run.times, run.means, run.covariances, exact_means, exact_covariances, chain_covariances, particles),
        "free_energy": _plot_particle_free_energy(folder, run.times, run.free_energies, exact_energy, gibbs_energy, run.entropy_samples),
    }
    return _write_summary(folder, "langevin", config, results, files)


def simulate_ou(
    out: str | os.PathLike[str],
    *,
    dim: int = 2,
    particles: int = 20_000,
    steps: int = 400,
    dt: float = 0.005,
    beta: float = 1.0,
    stiffness_min: float = 0.5,
    stiffness_max: float = 2.0,
    rotation: float = 30.0,
    start: float = 1.5,
    start_std: float = 1.5,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compare the Bures–Wasserstein ODE, the OU closed form and Langevin particles for ``V = ½xᵀAx``.

    The initial Gaussian is ``N(start·1, start_std²·I)`` and ``A`` is built as in
    :func:`simulate_langevin`. Writes ``summary.json``, ``covariance.png`` (every covariance
    entry: closed form, ODE and particles) and ``convergence.png`` (W2 to the Gibbs Gaussian and
    ``F − F∞`` on a log scale, with the rates ``λ_min`` and ``2λ_min``).

    Args:
        out: output folder; created after the run succeeds, rejected if it already has a ``summary.json``.
        dim: dimension ``d ≥ 1``.
        particles: number of Langevin particles, more than 3.
        steps: Langevin steps ``≥ 1``; the flow runs to ``steps·dt``.
        dt: Langevin time step, ``0 < dt < 2/stiffness_max``.
        beta: inverse temperature ``β > 0``.
        stiffness_min, stiffness_max: smallest and largest eigenvalue of ``A``.
        rotation: rotation of the eigenvectors in the plane of the first two axes, in degrees.
        start: initial mean of every coordinate.
        start_std: initial standard deviation of every coordinate, ``> 0``.
        seed: seed of the particles.
        progress: called as ``progress(step, steps)``.

    Returns:
        The summary written to ``summary.json``.
    """
    folder = _check_folder(out)
    _check_int("dim", dim, 1)
    _check_int("particles", particles, 4)
    _check_int("steps", steps, 1)
    _check_float("dt", dt)
    _check_float("beta", beta)
    _check_float("start_std", start_std)
    matrix = _quadratic_matrix(dim, stiffness_min, stiffness_max, rotation)
    check_step_size(matrix, dt)
    config = {
        "dim": dim,
        "particles": particles,
        "steps": steps,
        "dt": dt,
        "beta": beta,
        "stiffness_min": stiffness_min,
        "stiffness_max": stiffness_max,
        "rotation_degrees": rotation,
        "start": start,
        "start_std": start_std,
        "seed": seed,
    }
    center = np.zeros(dim)
    mean0 = np.full(dim, float(start))
    cov0 = float(start_std) ** 2 * np.eye(dim)
    began = time.perf_counter()
    comparison = compare_with_particles(
        matrix,
        center,
        mean0,
        cov0,
        beta,
        dt=dt,
        steps=steps,
        particles=particles,
        seed=seed,
        free_energy=False,
        progress=progress,
    )
    elapsed = time.perf_counter() - began

    times = comparison.bures.times
    gibbs_cov = ou_stationary_covariance(matrix, beta)
    gibbs_energy = gibbs_free_energy(matrix, beta)
    exact_w2 = _w2_to_gibbs(comparison.exact.means, comparison.exact.covariances, center, gibbs_cov)
    particle_w2 = _w2_to_gibbs(comparison.particles.means, comparison.particles.covariances, center, gibbs_cov)
    smallest = float(np.linalg.eigvalsh(matrix)[0])
    results = {
        "elapsed_seconds": elapsed,
        "final_time": float(times[-1]),
        "max_ode_error": float(comparison.ode_errors.max()),
        "max_w2_particles_vs_ode": float(comparison.w2_errors.max()),
        "final_w2_to_gibbs_exact": float(exact_w2[-1]),
        "final_w2_to_gibbs_particles": float(particle_w2[-1]),
        "final_free_energy_gap_exact": float(comparison.exact.free_energies[-1] - gibbs_energy),
        "smallest_stiffness": smallest,
        "gibbs_free_energy": gibbs_energy,
    }
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "covariance": _plot_covariance_entries(folder, comparison),
        "convergence": _plot_gaussian_convergence(folder, times, exact_w2, particle_w2, comparison, gibbs_energy, smallest),
    }
    return _write_summary(folder, "ou", config, results, files)


def simulate_fokker_planck(
    out: str | os.PathLike[str],
    *,
    potential: str = "double-well",
    barrier: float = 1.0,
    stiffness: float = 1.0,
    interval: tuple[float, float] = (-3.0, 3.0),
    cells: int = 400,
    steps: int = 6000,
    dt: float = 0.005,
    beta: float = 3.0,
    start: float = 0.5,
    start_std: float = 0.3,
    jko_steps: int = 300,
    jko_quantiles: int = 400,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Solve the 1-D Fokker–Planck equation by finite volumes and by JKO steps, and compare both with Gibbs.

    The initial density is ``N(start, start_std²)`` restricted to the interval. The JKO run
    takes ``jko_steps`` steps of ``τ = steps·dt/jko_steps`` from the quantiles of the initial
    finite-volume density. Writes ``summary.json``, ``density.png`` (snapshots against the
    discrete Gibbs density), ``free_energy.png`` (each scheme's ``F`` minus its own minimum, log scale) and
    ``jko_vs_fv.png`` (W2 between the schemes at every JKO step, and quantile functions).

    Args:
        out: output folder; created after the run succeeds, rejected if it already has a ``summary.json``.
        potential: ``"double-well"`` for ``barrier·(x² − 1)²`` or ``"quadratic"`` for ``½·stiffness·x²``.
        barrier: height of the double-well barrier at ``x = 0``, ``> 0``.
        stiffness: curvature of the quadratic potential, ``> 0``.
        interval: ``(a, b)``, ``a < b``.
        cells: finite-volume cells ``≥ 3``.
        steps: backward Euler steps ``≥ 1``.
        dt: finite-volume time step ``> 0``.
        beta: inverse temperature ``β > 0``.
        start: mean of the initial density.
        start_std: standard deviation of the initial density, ``> 0``.
        jko_steps: JKO steps ``≥ 1``; must divide ``steps`` so JKO times fall on solver steps.
        jko_quantiles: quantile levels ``M ≥ 3`` of the JKO discretization.
        progress: called as ``progress(done, steps + jko_steps)``.

    Returns:
        The summary written to ``summary.json``.
    """
    folder = _check_folder(out)
    if potential not in POTENTIALS_1D:
        raise ValueError(f"potential must be one of {', '.join(POTENTIALS_1D)}, got {potential!r}")
    _check_float("barrier", barrier)
    _check_float("stiffness", stiffness)
    _check_int("cells", cells, 3)
    _check_int("steps", steps, 1)
    _check_float("dt", dt)
    _check_float("beta", beta)
    _check_float("start_std", start_std)
    _check_int("jko_steps", jko_steps, 1)
    _check_int("jko_quantiles", jko_quantiles, 3)
    if steps % jko_steps != 0:
        raise ValueError(
            f"jko_steps = {jko_steps} must divide steps = {steps} so each JKO time is a solver time; "
            f"use a divisor of {steps}"
        )
    config = {
        "potential": potential,
        "barrier": barrier,
        "stiffness": stiffness,
        "interval": list(interval),
        "cells": cells,
        "steps": steps,
        "dt": dt,
        "beta": beta,
        "start": start,
        "start_std": start_std,
        "jko_steps": jko_steps,
        "jko_quantiles": jko_quantiles,
    }
    energy, derivative, second = _potential_1d(potential, barrier, stiffness)
    total = steps + jko_steps
    stride = steps // jko_steps
    record_every = math.gcd(stride, max(1, steps // 200))

    def initial(x: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * ((x - start) / start_std) ** 2)

    began = time.perf_counter()
    solution = solve_fokker_planck(
        energy, interval, cells, initial, beta=beta, dt=dt, steps=steps, record_every=record_every, progress=progress
    )
    fv_seconds = time.perf_counter() - began

    def jko_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(steps + done, total)

    initial_quantiles = quantiles_from_density(solution.edges, solution.densities[0], jko_quantiles)
    began = time.perf_counter()
    jko = run_jko(
        energy,
        initial_quantiles,
        tau=stride * dt,
        steps=jko_steps,
        beta=beta,
        derivative=derivative,
        second_derivative=second,
        progress=jko_progress,
    )
    jko_seconds = time.perf_counter() - began
    jko_minimum = _jko_minimum(solution, energy, derivative, second, beta, jko_quantiles)

    matched = [int(np.flatnonzero(solution.steps == k * stride)[0]) for k in range(jko_steps + 1)]
    fv_quantiles = np.stack([quantiles_from_density(solution.edges, solution.densities[i], jko_quantiles) for i in matched])
    jko_w2 = np.array([wasserstein2_quantiles(a, b) for a, b in zip(jko.quantiles, fv_quantiles)])
    increases = np.diff(solution.free_energies)
    results = {
        "finite_volume_seconds": fv_seconds,
        "jko_seconds": jko_seconds,
        "final_time": float(solution.times[-1]),
        "max_mass_error": float(np.abs(solution.masses - 1.0).max()),
        "max_free_energy_increase": float(max(0.0, increases.max())) if increases.size else 0.0,
        "final_free_energy": float(solution.free_energies[-1]),
        "gibbs_free_energy": solution.gibbs_free_energy,
        "final_l1_to_gibbs": float(solution.width * np.abs(solution.densities[-1] - solution.gibbs).sum()),
        "jko_tau": jko.tau,
        "jko_max_w2_to_fv": float(jko_w2.max()),
        "jko_final_w2_to_fv": float(jko_w2[-1]),
        "jko_final_free_energy": float(jko.free_energies[-1]),
        "jko_minimum_free_energy": jko_minimum,
        "jko_newton_iterations_max": int(jko.iterations.max()),
    }
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "density": _plot_densities(folder, solution, jko, stride),
        "free_energy": _plot_fv_free_energy(folder, solution, jko, jko_minimum),
        "jko_vs_fv": _plot_jko_vs_fv(folder, jko, fv_quantiles, jko_w2),
    }
    return _write_summary(folder, "fokker-planck", config, results, files)


def _check_folder(out: str | os.PathLike[str]) -> Path:
    """Validate the output folder without creating it, so a rejected run leaves nothing behind."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} is a file; pass a folder path")
    if (folder / "summary.json").exists():
        raise ValueError(f"output folder {folder} already has a summary.json; choose another folder or delete it")
    return folder


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _quadratic_matrix(dim: int, stiffness_min: float, stiffness_max: float, rotation: float) -> np.ndarray:
    _check_float("stiffness_min", stiffness_min)
    _check_float("stiffness_max", stiffness_max)
    if stiffness_min > stiffness_max:
        raise ValueError(f"stiffness_min = {stiffness_min} must be <= stiffness_max = {stiffness_max}")
    if not math.isfinite(float(rotation)):
        raise ValueError(f"rotation must be a finite angle in degrees, got {rotation!r}")
    eigenvalues = np.geomspace(stiffness_min, stiffness_max, dim)
    basis = np.eye(dim)
    if dim >= 2:
        angle = math.radians(float(rotation))
        basis[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    matrix = (basis * eigenvalues) @ basis.T
    return 0.5 * (matrix + matrix.T)


def _potential_1d(
    name: str, barrier: float, stiffness: float
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    if name == "double-well":
        return (
            lambda x: barrier * (x**2 - 1.0) ** 2,
            lambda x: 4.0 * barrier * x * (x**2 - 1.0),
            lambda x: barrier * (12.0 * x**2 - 4.0),
        )
    return (lambda x: 0.5 * stiffness * x**2, lambda x: stiffness * x, lambda x: np.full_like(x, stiffness))


def _w2_to_gibbs(means: np.ndarray, covariances: np.ndarray, center: np.ndarray, gibbs_cov: np.ndarray) -> np.ndarray:
    return np.array([wasserstein2_gaussian(m, s, center, gibbs_cov) for m, s in zip(means, covariances)])


def _write_summary(folder: Path, kind: str, config: dict, results: dict, files: dict[str, Path]) -> dict[str, Any]:
    summary = {
        "kind": kind,
        "config": config,
        "results": results,
        "plots": {name: path.name for name, path in files.items()},
    }
    atomic_write_json(folder / "summary.json", summary)
    logger.info("wrote %s", folder / "summary.json")
    return summary


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # Dropping the Software entry keeps the PNG free of the matplotlib URL and version.
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote plot %s", path)
    return path


def _colors(count: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(index % 10) for index in range(count)]


def _plot_moments(
    folder: Path,
    times: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    exact_means: np.ndarray,
    exact_covariances: np.ndarray,
    chain_covariances: np.ndarray,
    particles: int,
) -> Path:
    figure = Figure(figsize=(11.0, 4.2))
    mean_axes, variance_axes = figure.subplots(1, 2)
    shown = min(means.shape[1], _MAX_PLOTTED_COORDINATES)
    for index, color in zip(range(shown), _colors(shown)):
        variance = exact_covariances[:, index, index]
        mean_band = _BAND_WIDTH * np.sqrt(variance / particles)
        # The means move far more than their sampling error, so this panel shows the deviation.
        mean_axes.fill_between(times, -mean_band, mean_band, color=color, alpha=_BAND_ALPHA, linewidth=0)
        mean_axes.plot(times, means[:, index] - exact_means[:, index], color=color, linewidth=1.0, marker=".", markersize=3, label=f"particles − OU exact, x{index + 1}")

        # The sample variance of N Gaussian draws has the standard error σ²·√(2/(N − 1)).
        variance_band = _BAND_WIDTH * variance * math.sqrt(2.0 / (particles - 1))
        variance_axes.fill_between(times, variance - variance_band, variance + variance_band, color=color, alpha=_BAND_ALPHA, linewidth=0)
        variance_axes.plot(times, variance, color=color, linewidth=1.2, label=f"OU exact, x{index + 1}")
        variance_axes.plot(times, chain_covariances[:, index, index], color=color, linewidth=0.8, linestyle=":", label=f"Euler–Maruyama exact, x{index + 1}")
        variance_axes.plot(times, covariances[:, index, index], color=color, linestyle="none", marker=".", markersize=3, label=f"particles, x{index + 1}")
    mean_axes.axhline(0.0, color="0.4", linewidth=0.8)
    mean_axes.set(xlabel="time t", ylabel="mean error", title=f"Particle mean − OU mean, band ±{_BAND_WIDTH:g} standard errors (N = {particles})")
    variance_axes.set(xlabel="time t", ylabel="variance", title="Particle variances against the OU solution")
    for axes in (mean_axes, variance_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return _save(figure, folder / "moments.png")


def _plot_particle_free_energy(
    folder: Path, times: np.ndarray, estimate: np.ndarray, exact: np.ndarray, gibbs: float, samples: int
) -> Path:
    figure = Figure(figsize=(7.0, 4.2))
    axes = figure.subplots()
    axes.plot(times, exact, color="black", linewidth=1.4, label="Gaussian closed form (OU moments)")
    axes.plot(times, estimate, color="tab:orange", linestyle="none", marker=".", markersize=4, label=f"particles, k-NN entropy on {samples} points")
    axes.axhline(gibbs, color="0.4", linestyle="--", linewidth=1.0, label="Gibbs minimum F∞ = −β⁻¹ log Z")
    axes.set(xlabel="time t", ylabel="free energy F = E[V] − H/β", title="Free energy along the Langevin flow")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, folder / "free_energy.png")


def _plot_covariance_entries(folder: Path, comparison: Any) -> Path:
    figure = Figure(figsize=(7.5, 4.5))
    axes = figure.subplots()
    times = comparison.bures.times
    dim = comparison.bures.means.shape[1]
    pairs = [(i, j) for i in range(min(dim, _MAX_PLOTTED_COORDINATES)) for j in range(i, min(dim, _MAX_PLOTTED_COORDINATES))]
    marker_every = max(1, times.shape[0] // 20)
    for (i, j), color in zip(pairs, _colors(len(pairs))):
        axes.plot(times, comparison.exact.covariances[:, i, j], color=color, linewidth=1.2, label=f"Σ{i + 1}{j + 1} closed form")
        axes.plot(times[::marker_every], comparison.bures.covariances[::marker_every, i, j], color=color, linestyle="none", marker="o", markerfacecolor="none", markersize=5, label=f"Σ{i + 1}{j + 1} Bures ODE")
        axes.plot(times, comparison.particles.covariances[:, i, j], color=color, linestyle="--", linewidth=0.9, label=f"Σ{i + 1}{j + 1} particles")
    particles = comparison.particles.particles.shape[0]
    axes.set(xlabel="time t", ylabel="covariance entry", title=f"Covariance: closed form, Bures ODE and {particles} particles")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    return _save(figure, folder / "covariance.png")


def _plot_gaussian_convergence(
    folder: Path,
    times: np.ndarray,
    exact_w2: np.ndarray,
    particle_w2: np.ndarray,
    comparison: Any,
    gibbs_energy: float,
    smallest: float,
) -> Path:
    figure = Figure(figsize=(11.0, 4.2))
    w2_axes, energy_axes = figure.subplots(1, 2)
    w2_axes.semilogy(times, exact_w2, color="black", linewidth=1.4, label="closed form")
    w2_axes.semilogy(times, particle_w2, color="tab:blue", linestyle="--", linewidth=1.0, label="Gaussian fit to particles")
    w2_axes.semilogy(times, exact_w2[0] * np.exp(-smallest * times), color="0.5", linestyle=":", label=f"rate λ_min = {smallest:.3g}")
    w2_axes.set(xlabel="time t", ylabel="W2 to the Gibbs Gaussian", title="Distance to equilibrium")

    gap = comparison.exact.free_energies - gibbs_energy
    positive = gap > 0
    energy_axes.semilogy(times[positive], gap[positive], color="black", linewidth=1.4, label="closed form")
    energy_axes.semilogy(times, gap[0] * np.exp(-2.0 * smallest * times), color="0.5", linestyle=":", label=f"rate 2λ_min = {2 * smallest:.3g}")
    energy_axes.set(xlabel="time t", ylabel="F − F∞ = KL/β", title="Free-energy gap")
    for axes in (w2_axes, energy_axes):
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, folder / "convergence.png")


def _snapshot_rows(count: int) -> np.ndarray:
    """Pick row 0 and rows spaced geometrically up to the last, so early fast changes are shown too."""
    if count <= _SNAPSHOTS:
        return np.arange(count)
    spaced = np.geomspace(1, count - 1, _SNAPSHOTS - 1).round().astype(int)
    return np.unique(np.concatenate(([0], spaced)))


def _plot_densities(folder: Path, solution: FokkerPlanckSolution, jko: JKOTrajectory, stride: int) -> Path:
    figure = Figure(figsize=(7.5, 4.5))
    axes = figure.subplots()
    jko_rows = _snapshot_rows(jko.quantiles.shape[0])
    for row, color in zip(jko_rows, _colors(len(jko_rows))):
        index = int(np.flatnonzero(solution.steps == row * stride)[0])
        axes.plot(solution.centers, solution.densities[index], color=color, linewidth=1.3, label=f"finite volume, t = {solution.times[index]:.3g}")
        midpoints, density = density_from_quantiles(jko.quantiles[row])
        axes.plot(midpoints, density, color=color, linestyle=":", linewidth=1.2, label=f"JKO, t = {jko.times[row]:.3g}")
    axes.plot(solution.centers, solution.gibbs, color="black", linestyle="--", linewidth=1.2, label="discrete Gibbs ∝ exp(−βV)")
    axes.set(xlabel="x", ylabel="density ρ", title="Fokker–Planck density snapshots")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, folder / "density.png")


def _jko_minimum(
    solution: FokkerPlanckSolution,
    energy: Callable[[np.ndarray], np.ndarray],
    derivative: Callable[[np.ndarray], np.ndarray],
    second: Callable[[np.ndarray], np.ndarray],
    beta: float,
    count: int,
) -> float:
    """Minimize the quantile free energy: one JKO step with a huge τ from the Gibbs quantiles.

    The quantile discretization has its own minimum, which differs from the finite-volume one
    by the ``O(1/M)`` entropy error, so each scheme's free-energy gap is taken to its own minimum.
    """
    start = quantiles_from_density(solution.edges, solution.gibbs, count)
    # At τ = 1e6 the W2 term is negligible: the minimum matched the one at τ = 1e4 to 1e-16.
    minimizer, _ = jko_step(start, energy, 1e6, beta, derivative=derivative, second_derivative=second)
    return quantile_free_energy(minimizer, energy, beta)


def _plot_fv_free_energy(folder: Path, solution: FokkerPlanckSolution, jko: JKOTrajectory, jko_minimum: float) -> Path:
    figure = Figure(figsize=(7.0, 4.2))
    axes = figure.subplots()
    gap = solution.free_energies - solution.gibbs_free_energy
    positive = gap > 0
    axes.semilogy(solution.times[positive], gap[positive], color="black", linewidth=1.4, label="finite volume")
    jko_gap = jko.free_energies - jko_minimum
    shown = jko_gap > 0
    axes.semilogy(jko.times[shown], jko_gap[shown], color="tab:red", linestyle="none", marker="o", markersize=3, label=f"JKO, τ = {jko.tau:.3g}")
    axes.set(xlabel="time t", ylabel="F − min F (each scheme's own minimum)", title="Free energy decreases to the Gibbs minimum")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, folder / "free_energy.png")


def _plot_jko_vs_fv(folder: Path, jko: JKOTrajectory, fv_quantiles: np.ndarray, w2: np.ndarray) -> Path:
    figure = Figure(figsize=(11.0, 4.2))
    error_axes, quantile_axes = figure.subplots(1, 2)
    error_axes.plot(jko.times, w2, color="tab:red", marker="o", markersize=4)
    error_axes.set(xlabel="time t", ylabel="W2(JKO, finite volume)", title=f"JKO against finite volume, τ = {jko.tau:.3g}")
    error_axes.grid(alpha=0.3)

    levels = (np.arange(jko.quantiles.shape[1]) + 0.5) / jko.quantiles.shape[1]
    rows = _snapshot_rows(jko.quantiles.shape[0])
    for row, color in zip(rows, _colors(len(rows))):
        quantile_axes.plot(levels, fv_quantiles[row], color=color, linewidth=1.3, label=f"finite volume, t = {jko.times[row]:.3g}")
        quantile_axes.plot(levels, jko.quantiles[row], color=color, linestyle=":", linewidth=1.4, label="JKO")
    quantile_axes.set(xlabel="level s", ylabel="quantile X(s)", title="Quantile functions")
    quantile_axes.grid(alpha=0.3)
    quantile_axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return _save(figure, folder / "jko_vs_fv.png")
