"""Overdamped Langevin particles ``dX = −∇V(X) dt + √(2/β) dW`` by the Euler–Maruyama scheme.

Their law follows the Fokker–Planck equation, the Wasserstein gradient flow of
``F(ρ) = ∫V dρ + β⁻¹∫ρ log ρ``. The run records moments and a free-energy estimate on a schedule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from hclm.dynamics.ornstein_uhlenbeck import (
    check_covariance,
    check_em_stability,
    check_positive,
    check_spd_matrix,
    check_vector,
)
from hclm.surrogates import knn_entropy

logger = logging.getLogger(__name__)

Potential = Callable[[torch.Tensor], torch.Tensor]
Gradient = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]

# knn_entropy switches to a SciPy k-d tree at 4096 rows (d ≤ 8), which is faster there than its
# blocked search is at 2048 rows, and the larger subset lowers the bias of the estimate.
DEFAULT_ENTROPY_SAMPLES = 4096
# Seed of the fixed random subset of particles used for the entropy estimate. It is separate from
# the noise generator, so recording the free energy does not change the trajectory.
_SUBSAMPLE_SEED = 20240611


class QuadraticPotential:
    """Quadratic potential ``V(x) = ½(x − m*)ᵀA(x − m*)`` with ``A`` symmetric positive definite.

    Its gradient ``A(x − m*)`` is affine, so :func:`run_langevin` takes a fused drift step
    ``x ← x(I − dt·A) + dt·Am*`` and checks ``dt·λ_max(A) < 2`` before the first step.
    """

    def __init__(self, matrix: ArrayLike, center: ArrayLike | None = None) -> None:
        self.matrix = check_spd_matrix(matrix, "matrix")
        dim = self.matrix.shape[0]
        self.center = check_vector(0.0 if center is None else center, dim, "center")
        self.max_eigenvalue = float(np.linalg.eigvalsh(self.matrix)[-1])

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the space."""
        return int(self.matrix.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate ``V`` on rows of ``x``, shape (N, d) to (N,)."""
        offset = x - torch.as_tensor(self.center, dtype=x.dtype, device=x.device)
        return 0.5 * ((offset @ torch.as_tensor(self.matrix, dtype=x.dtype, device=x.device)) * offset).sum(dim=1)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate ``∇V = A(x − m*)`` on rows of ``x``, shape (N, d) to (N, d)."""
        offset = x - torch.as_tensor(self.center, dtype=x.dtype, device=x.device)
        return offset @ torch.as_tensor(self.matrix, dtype=x.dtype, device=x.device)


@dataclass(frozen=True)
class LangevinTrajectory:
    """Recorded statistics of a Langevin run, one row per recorded step.

    Attributes:
        steps: step indices, shape (R,).
        times: ``step·dt``, shape (R,).
        means: particle means, shape (R, d).
        covariances: unbiased particle covariances, shape (R, d, d).
        potential_energies: ``mean_i V(X_i)`` over all particles, shape (R,), or None if not recorded.
        entropies: k-NN entropy estimates in nats on the subsample, shape (R,), or None.
        free_energies: ``potential_energies − entropies/β``, shape (R,), or None.
        particles: final particle positions, shape (N, d).
        dt: time step.
        beta: inverse temperature.
        entropy_samples: size of the subsample behind ``entropies`` (0 when not recorded).
    """

    steps: np.ndarray
    times: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    potential_energies: np.ndarray | None
    entropies: np.ndarray | None
    free_energies: np.ndarray | None
    particles: torch.Tensor
    dt: float
    beta: float
    entropy_samples: int


def check_step_size(matrix: ArrayLike, dt: float) -> None:
    """Check ``dt·λ_max(A) < 2``, the stability condition of Euler–Maruyama for ``V = ½(x−m*)ᵀA(x−m*)``.

    Args:
        matrix: ``A``, symmetric positive definite, shape (d, d).
        dt: time step ``> 0``.

    Raises:
        ValueError: ``dt ≤ 0`` or ``dt·λ_max(A) ≥ 2``, with the largest stable ``dt``.
    """
    step = check_positive("dt", dt)
    a = check_spd_matrix(matrix, "matrix")
    check_em_stability(float(np.linalg.eigvalsh(a)[-1]), step)


def gaussian_particles(
    count: int,
    mean: ArrayLike,
    cov: ArrayLike,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``count`` rows from ``N(mean, cov)`` as ``mean + ξ L^T`` with ``LLᵀ = cov`` (eigen square root).

    Args:
        count: number of particles ``N ≥ 2``.
        mean: shape (d,).
        cov: symmetric positive semidefinite, shape (d, d).
        seed: integer seed or a ``torch.Generator``.
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        Tensor of shape (N, d) in ``dtype``.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 2:
        raise ValueError(f"count must be an integer >= 2, got {count!r}")
    mean_array = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    dim = mean_array.shape[0]
    mean_array = check_vector(mean_array, dim, "mean")
    cov_array = check_covariance(cov, dim, "cov")
    eigenvalues, basis = np.linalg.eigh(cov_array)
    root = basis * np.sqrt(np.clip(eigenvalues, 0.0, None))
    generator = _generator(seed)
    noise = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    rows = noise @ torch.from_numpy(root.T) + torch.from_numpy(mean_array)
    return rows.to(dtype)


def run_langevin(
    potential: Potential,
    initial: torch.Tensor,
    *,
    dt: float,
    steps: int,
    beta: float = 1.0,
    gradient: Gradient | None = None,
    record_every: int | None = None,
    free_energy: bool = True,
    entropy_samples: int = DEFAULT_ENTROPY_SAMPLES,
    entropy_k: int = 3,
    seed: int | torch.Generator = 0,
    progress: Progress | None = None,
) -> LangevinTrajectory:
    """Simulate ``X_{k+1} = X_k − dt·∇V(X_k) + √(2dt/β)·ξ_k`` for all particles at once.

    The update is vectorized over the particles in the dtype of ``initial`` (float32 or float64).
    The gradient is, in order of preference: the fused affine step of a
    :class:`QuadraticPotential`, the ``gradient`` callable, or autograd of ``potential(x).sum()``.

    At step 0, every ``record_every`` steps and at the last step, the run records the particle
    mean and covariance (float64, over all particles) and, if ``free_energy``, the estimate
    ``F = mean_i V(X_i) − β⁻¹·Ĥ``. ``Ĥ`` is :func:`hclm.surrogates.knn_entropy` on a fixed random
    subset of at most ``entropy_samples`` particles, so each record costs one k-NN search on that
    subset rather than on all ``N``. The estimator has a bias that shrinks with the subset size.

    Divergence: after every step the sum of the coordinates must be finite, so NaN, infinity or
    coordinates too large to sum stop the run with a ValueError that names ``dt``. Recorded
    moments are checked too, so the trajectory contains no NaN. For a :class:`QuadraticPotential`
    the condition ``dt·λ_max(A) < 2`` is checked before the first step.

    NOTE: for a general potential a too large ``dt`` is caught only once coordinates overflow, so
    a slow geometric growth that stays finite until ``steps`` ends is not detected.

    Args:
        potential: ``V``, maps a tensor of shape (N, d) to shape (N,); differentiable with torch
            unless ``gradient`` is given or it is a :class:`QuadraticPotential`.
        initial: initial particles, shape (N, d), ``N ≥ 2``, floating point; not modified.
        dt: time step ``> 0``.
        steps: number of steps ``≥ 1``.
        beta: inverse temperature ``β > 0``.
        gradient: optional ``∇V``, shape (N, d) to (N, d).
        record_every: steps between records ``≥ 1``; default ``max(1, steps // 100)``.
        free_energy: record potential energy, entropy and free energy.
        entropy_samples: largest subset for the entropy estimate, ``> entropy_k``.
        entropy_k: neighbour order of the k-NN estimator.
        seed: integer seed or a ``torch.Generator`` for the noise.
        progress: called as ``progress(step, steps)`` after each record.

    Returns:
        The recorded :class:`LangevinTrajectory`.

    Raises:
        ValueError: invalid arguments, an unstable ``dt`` for a quadratic potential, or particles
            that became non-finite (divergence), each naming the value and the fix.
    """
    step_size = check_positive("dt", dt)
    inverse_temperature = check_positive("beta", beta)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    interval = max(1, steps // 100) if record_every is None else record_every
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    x = _check_particles(initial)
    count, dim = x.shape
    if free_energy and not (isinstance(entropy_samples, int) and entropy_samples > entropy_k):
        raise ValueError(
            f"entropy_samples must be an integer > entropy_k = {entropy_k}, got {entropy_samples!r}; "
            "the k-NN estimator needs more points than neighbours"
        )
    if free_energy and count <= entropy_k:
        raise ValueError(f"the k-NN free energy needs more than entropy_k = {entropy_k} particles, got {count}")

    drift = _make_drift(potential, gradient, x, step_size)
    noise_scale = math.sqrt(2.0 * step_size / inverse_temperature)
    generator = _generator(seed)
    subset = _entropy_subset(count, entropy_samples) if free_energy else None

    records: list[dict] = []
    records.append(_record(0, x, step_size, potential, inverse_temperature, subset, entropy_k))
    if progress is not None:
        progress(0, steps)

    # The state is stored transposed, shape (d, N): the product A·Xᵀ is a BLAS-friendly shape,
    # while X·A with X of shape (N, d) was about ten times slower for d = 2 with torch 2.13 on CPU.
    state = x.T.contiguous()
    noise = torch.empty_like(state)
    buffer = torch.empty_like(state)
    for step in range(1, steps + 1):
        torch.randn(state.shape, generator=generator, dtype=state.dtype, out=noise)
        drift(state, buffer)
        buffer.add_(noise, alpha=noise_scale)
        state, buffer = buffer, state
        if not bool(torch.isfinite(state.sum())):
            _raise_divergence(step, step_size, "particle coordinates became NaN, infinite or too large to sum")
        if step % interval == 0 or step == steps:
            records.append(_record(step, state.T, step_size, potential, inverse_temperature, subset, entropy_k))
            if progress is not None:
                progress(step, steps)

    logger.info("Langevin run finished: %d particles, d = %d, %d steps of dt = %g", count, dim, steps, step_size)
    final = state.T.contiguous()
    return _trajectory(records, final, step_size, inverse_temperature, 0 if subset is None else int(subset.numel()))


def _check_particles(initial: torch.Tensor) -> torch.Tensor:
    if not isinstance(initial, torch.Tensor) or not initial.is_floating_point():
        raise ValueError(
            f"initial must be a floating-point torch.Tensor of shape (N, d), got {type(initial).__name__}"
            + (f" of dtype {initial.dtype}" if isinstance(initial, torch.Tensor) else "")
        )
    if initial.dim() != 2 or initial.shape[0] < 2 or initial.shape[1] < 1:
        raise ValueError(f"initial must have shape (N, d) with N >= 2 and d >= 1, got {tuple(initial.shape)}")
    if not bool(torch.isfinite(initial).all()):
        raise ValueError("initial has NaN or infinite entries; pass finite starting positions")
    return initial.detach().clone().contiguous()


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer or a torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _make_drift(
    potential: Potential, gradient: Gradient | None, x: torch.Tensor, dt: float
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Return ``drift(state, out)`` that writes ``x − dt·∇V(x)`` into ``out``; both have the shape (d, N) of ``xᵀ``."""
    dim = x.shape[1]
    if isinstance(potential, QuadraticPotential) and gradient is None:
        if potential.dim != dim:
            raise ValueError(f"the potential has dimension {potential.dim} but the particles have d = {dim}")
        check_em_stability(potential.max_eigenvalue, dt)
        transition = torch.as_tensor(np.eye(dim) - dt * potential.matrix, dtype=x.dtype)
        shift = torch.as_tensor(dt * potential.matrix @ potential.center, dtype=x.dtype)[:, None]

        def affine(state: torch.Tensor, out: torch.Tensor) -> None:
            torch.addmm(shift, transition, state, out=out)

        return affine

    evaluate = gradient if gradient is not None else _autograd_gradient(potential)
    probe = evaluate(x)
    if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != tuple(x.shape):
        shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ValueError(f"the gradient must map particles of shape {tuple(x.shape)} to the same shape, got {shape}")
    if not bool(torch.isfinite(probe).all()):
        raise ValueError("the gradient is NaN or infinite at the initial particles; check the potential there")

    def general(state: torch.Tensor, out: torch.Tensor) -> None:
        torch.add(state, evaluate(state.T).to(state.dtype).T, alpha=-dt, out=out)

    return general


def _autograd_gradient(potential: Potential) -> Gradient:
    def evaluate(points: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = points.detach().requires_grad_(True)
            energy = potential(leaf)
            if not isinstance(energy, torch.Tensor) or tuple(energy.shape) != (points.shape[0],):
                shape = tuple(energy.shape) if isinstance(energy, torch.Tensor) else type(energy).__name__
                raise ValueError(f"the potential must map shape {tuple(points.shape)} to ({points.shape[0]},), got {shape}")
            (grad,) = torch.autograd.grad(energy.sum(), leaf)
        return grad

    return evaluate


def _entropy_subset(count: int, entropy_samples: int) -> torch.Tensor:
    if count <= entropy_samples:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(_SUBSAMPLE_SEED)
    return torch.randperm(count, generator=generator)[:entropy_samples]


def _record(
    step: int,
    x: torch.Tensor,
    dt: float,
    potential: Potential,
    beta: float,
    subset: torch.Tensor | None,
    entropy_k: int,
) -> dict:
    points = x.double()
    mean = points.mean(dim=0)
    centered = points - mean
    covariance = centered.T @ centered / (points.shape[0] - 1)
    record = {"step": step, "mean": mean.numpy(), "covariance": covariance.numpy()}
    if subset is not None:
        with torch.no_grad():
            energy = potential(x)
        record["potential"] = float(energy.double().mean())
        record["entropy"] = float(knn_entropy(points[subset], k=entropy_k))
    values = [record["mean"], record["covariance"], record.get("potential", 0.0), record.get("entropy", 0.0)]
    if not all(np.all(np.isfinite(value)) for value in values):
        _raise_divergence(step, dt, "the recorded mean, covariance or free energy is not finite")
    return record


def _raise_divergence(step: int, dt: float, what: str) -> None:
    raise ValueError(
        f"Langevin run diverged at step {step} (t = {step * dt:g}) with dt = {dt:g}: {what}. "
        "The Euler–Maruyama scheme is unstable at this step size; reduce dt "
        "(for V = ½(x−m)ᵀA(x−m) keep dt·λ_max(A) < 2)"
    )


def _trajectory(records: list[dict], x: torch.Tensor, dt: float, beta: float, entropy_samples: int) -> LangevinTrajectory:
    steps = np.array([record["step"] for record in records], dtype=np.int64)
    potential = entropy = free = None
    if entropy_samples:
        potential = np.array([record["potential"] for record in records])
        entropy = np.array([record["entropy"] for record in records])
        free = potential - entropy / beta
    return LangevinTrajectory(
        steps=steps,
        times=steps * dt,
        means=np.stack([record["mean"] for record in records]),
        covariances=np.stack([record["covariance"] for record in records]),
        potential_energies=potential,
        entropies=entropy,
        free_energies=free,
        particles=x,
        dt=dt,
        beta=beta,
        entropy_samples=entropy_samples,
    )
