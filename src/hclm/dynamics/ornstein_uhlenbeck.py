"""Closed-form moments of the Ornstein–Uhlenbeck process, the Langevin flow of a quadratic potential.

Also the exact moments of its Euler–Maruyama discretization and the free energy of a Gaussian.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

# A matrix counts as symmetric when ‖A − Aᵀ‖ ≤ _SYMMETRY_RTOL·‖A‖ (Frobenius norms).
_SYMMETRY_RTOL = 1e-10


def check_spd_matrix(matrix: ArrayLike, name: str = "matrix") -> np.ndarray:
    """Validate a symmetric positive definite matrix and return it as a symmetrized float64 array.

    Args:
        matrix: shape (d, d); a scalar is read as a 1×1 matrix.
        name: name of the argument in error messages.

    Returns:
        ``(A + Aᵀ)/2`` as float64, shape (d, d).

    Raises:
        ValueError: the matrix is not square, not finite, not symmetric to a relative
            ``1e-10``, or has an eigenvalue ``≤ 0``.
    """
    array = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ValueError(f"{name} must be a square matrix of shape (d, d), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has NaN or infinite entries; pass a finite symmetric positive definite matrix")
    scale = float(np.linalg.norm(array))
    if float(np.linalg.norm(array - array.T)) > _SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} is not symmetric; pass (A + A.T) / 2 if the asymmetry is rounding")
    symmetric = 0.5 * (array + array.T)
    smallest = float(np.linalg.eigvalsh(symmetric)[0])
    if smallest <= 0:
        raise ValueError(
            f"{name} must be positive definite, but its smallest eigenvalue is {smallest:.3g}; "
            "use a matrix with positive eigenvalues"
        )
    return symmetric


def check_covariance(cov: ArrayLike, dim: int, name: str = "cov0") -> np.ndarray:
    """Validate a symmetric positive semidefinite covariance of shape (dim, dim) and return it as float64.

    Eigenvalues down to ``−1e-12·‖Σ‖`` are accepted as rounding of a singular covariance.

    Raises:
        ValueError: wrong shape, non-finite entries, asymmetry or a clearly negative eigenvalue.
    """
    array = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    if array.shape != (dim, dim):
        raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the dimension, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has NaN or infinite entries; pass a finite covariance matrix")
    scale = float(np.linalg.norm(array))
    if float(np.linalg.norm(array - array.T)) > _SYMMETRY_RTOL * max(scale, 1e-300):
        raise ValueError(f"{name} is not symmetric; a covariance matrix must equal its transpose")
    symmetric = 0.5 * (array + array.T)
    smallest = float(np.linalg.eigvalsh(symmetric)[0])
    if smallest < -1e-12 * scale:
        raise ValueError(f"{name} has the negative eigenvalue {smallest:.3g}; a covariance must be positive semidefinite")
    return symmetric


def check_vector(vector: ArrayLike, dim: int, name: str) -> np.ndarray:
    """Validate a finite vector of length ``dim`` (a scalar is broadcast) and return it as float64."""
    array = np.asarray(vector, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(dim, float(array))
    if array.shape != (dim,):
        raise ValueError(f"{name} must have shape ({dim},) to match the dimension, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has NaN or infinite entries; pass finite values")
    return array


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and ``> 0``."""
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_times(times: ArrayLike) -> np.ndarray:
    """Validate finite times ``≥ 0`` and return them as a 1-D float64 array."""
    array = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if array.ndim != 1:
        raise ValueError(f"times must be a 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError("times must be finite and >= 0; the closed form runs forward in time from t = 0")
    return array


def ou_mean(times: ArrayLike, matrix: ArrayLike, center: ArrayLike, mean0: ArrayLike) -> np.ndarray:
    """Compute the mean ``m(t) = m* + e^{−At}(μ0 − m*)`` of the OU process for ``V(x) = ½(x−m*)ᵀA(x−m*)``.

    The mean does not depend on the temperature: ``ṁ = −A(m − m*)`` is the same for every β.

    Args:
        times: times ``t ≥ 0``, shape (T,).
        matrix: ``A``, symmetric positive definite, shape (d, d).
        center: ``m*``, the minimum of ``V``, shape (d,).
        mean0: initial mean ``μ0``, shape (d,).

    Returns:
        Means, shape (T, d).
    """
    t = check_times(times)
    a = check_spd_matrix(matrix, "matrix")
    dim = a.shape[0]
    m_star = check_vector(center, dim, "center")
    mu0 = check_vector(mean0, dim, "mean0")

    eigenvalues, basis = np.linalg.eigh(a)
    offset = basis.T @ (mu0 - m_star)
    decay = np.exp(-np.outer(t, eigenvalues))
    return m_star + (decay * offset) @ basis.T


def ou_covariance(times: ArrayLike, matrix: ArrayLike, cov0: ArrayLike, beta: float) -> np.ndarray:
    """Compute ``Σ(t) = e^{−At}Σ0e^{−At} + β⁻¹A⁻¹(I − e^{−2At})``, the OU covariance for symmetric ``A``.

    Derivation: the moment equation is ``Σ̇ = −AΣ − ΣA + 2β⁻¹I`` with the fixed point
    ``Σ∞ = β⁻¹A⁻¹``. The difference ``D = Σ − Σ∞`` solves ``Ḋ = −AD − DA``, so
    ``D(t) = e^{−At}D(0)e^{−At}``. Because ``A⁻¹`` commutes with ``e^{−At}`` when ``A`` is
    symmetric, ``e^{−At}Σ∞e^{−At} = β⁻¹A⁻¹e^{−2At}``, which gives the formula. It is evaluated
    in the eigenbasis ``A = QΛQᵀ``, where entry ``(i, j)`` of ``QᵀΣQ`` decays as ``e^{−(λ_i+λ_j)t}``.

    Args:
        times: times ``t ≥ 0``, shape (T,).
        matrix: ``A``, symmetric positive definite, shape (d, d).
        cov0: initial covariance ``Σ0``, symmetric positive semidefinite, shape (d, d).
        beta: inverse temperature ``β > 0``.

    Returns:
        Covariances, shape (T, d, d), symmetric.
    """
    t = check_times(times)
    a = check_spd_matrix(matrix, "matrix")
    dim = a.shape[0]
    sigma0 = check_covariance(cov0, dim)
    inverse_temperature = check_positive("beta", beta)

    eigenvalues, basis = np.linalg.eigh(a)
    rotated = basis.T @ sigma0 @ basis
    pair_rates = eigenvalues[:, None] + eigenvalues[None, :]
    transient = np.exp(-t[:, None, None] * pair_rates) * rotated
    # −expm1 keeps 1 − e^{−2λt} accurate for small λt, where the subtraction would cancel.
    stationary = -np.expm1(-2.0 * np.outer(t, eigenvalues)) / (inverse_temperature * eigenvalues)
    transient[:, np.arange(dim), np.arange(dim)] += stationary
    covariance = basis @ transient @ basis.T
    return 0.5 * (covariance + np.swapaxes(covariance, 1, 2))


def ou_stationary_covariance(matrix: ArrayLike, beta: float) -> np.ndarray:
    """Return ``Σ∞ = β⁻¹A⁻¹``, the covariance of the Gibbs density ``∝ exp(−βV)``, shape (d, d)."""
    a = check_spd_matrix(matrix, "matrix")
    inverse_temperature = check_positive("beta", beta)
    eigenvalues, basis = np.linalg.eigh(a)
    return (basis / (inverse_temperature * eigenvalues)) @ basis.T


def em_stationary_covariance(matrix: ArrayLike, beta: float, dt: float) -> np.ndarray:
    """Compute the stationary covariance of the Euler–Maruyama chain for the OU process.

    The chain ``X_{k+1} = (I − dt·A)X_k + dt·A m* + √(2dt/β)·ξ_k`` has the stationary covariance
    ``Σ_EM = (2dt/β)(I − (I − dt·A)²)⁻¹ = β⁻¹A⁻¹(I − dt·A/2)⁻¹``. In 1-D this is
    ``(2/β)dt/(1 − (1 − a·dt)²)``, which exceeds ``1/(βa)`` by the factor ``1/(1 − a·dt/2)``, an
    ``O(dt)`` bias.

    Args:
        matrix: ``A``, symmetric positive definite, shape (d, d).
        beta: inverse temperature ``β > 0``.
        dt: time step, ``0 < dt·λ_max(A) < 2`` (the chain has no stationary law otherwise).

    Returns:
        Covariance, shape (d, d).

    Raises:
        ValueError: ``dt·λ_max(A) ≥ 2``.
    """
    a = check_spd_matrix(matrix, "matrix")
    inverse_temperature = check_positive("beta", beta)
    step = check_positive("dt", dt)
    eigenvalues, basis = np.linalg.eigh(a)
    check_em_stability(float(eigenvalues[-1]), step)
    variances = 1.0 / (inverse_temperature * eigenvalues * (1.0 - 0.5 * step * eigenvalues))
    return (basis * variances) @ basis.T


def em_moments(
    steps: ArrayLike,
    matrix: ArrayLike,
    center: ArrayLike,
    mean0: ArrayLike,
    cov0: ArrayLike,
    beta: float,
    dt: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Compute the exact mean and covariance of the Euler–Maruyama chain after ``k`` steps.

    With ``B = I − dt·A``: ``m_k = m* + B^k(μ0 − m*)`` and
    ``Σ_k = B^kΣ0B^k + (I − B^{2k})Σ_EM``, where ``Σ_EM`` is :func:`em_stationary_covariance`.
    Both follow from the recursion ``Σ_{k+1} = BΣ_kB + (2dt/β)I`` because every matrix except
    ``Σ0`` is a function of ``A`` and so commutes with ``B``. This is the law the Langevin
    particles follow exactly when they start from a Gaussian, so it separates sampling error from
    the time-step bias.

    Args:
        steps: step counts ``k ≥ 0``, shape (K,), integers.
        matrix: ``A``, symmetric positive definite, shape (d, d).
        center: ``m*``, shape (d,).
        mean0: ``μ0``, shape (d,).
        cov0: ``Σ0``, shape (d, d).
        beta: inverse temperature ``β > 0``.
        dt: time step with ``dt·λ_max(A) < 2``.

    Returns:
        ``(means, covariances)`` of shapes (K, d) and (K, d, d).
    """
    counts = np.atleast_1d(np.asarray(steps))
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ValueError(f"steps must be a 1-D array of integers >= 0, got {np.asarray(steps)!r}")
    a = check_spd_matrix(matrix, "matrix")
    dim = a.shape[0]
    m_star = check_vector(center, dim, "center")
    mu0 = check_vector(mean0, dim, "mean0")
    sigma0 = check_covariance(cov0, dim)
    inverse_temperature = check_positive("beta", beta)
    step = check_positive("dt", dt)

    eigenvalues, basis = np.linalg.eigh(a)
    check_em_stability(float(eigenvalues[-1]), step)
    factors = 1.0 - step * eigenvalues
    powers = factors[None, :] ** counts[:, None].astype(np.float64)
    means = m_star + (powers * (basis.T @ (mu0 - m_star))) @ basis.T

    rotated = basis.T @ sigma0 @ basis
    transient = powers[:, :, None] * rotated * powers[:, None, :]
    stationary = 1.0 / (inverse_temperature * eigenvalues * (1.0 - 0.5 * step * eigenvalues))
    transient[:, np.arange(dim), np.arange(dim)] += (1.0 - powers**2) * stationary
    covariances = basis @ transient @ basis.T
    return means, 0.5 * (covariances + np.swapaxes(covariances, 1, 2))


def check_em_stability(max_eigenvalue: float, dt: float) -> None:
    """Raise ValueError unless ``dt·λ_max < 2``, the stability limit of Euler–Maruyama for a quadratic potential.

    The drift step multiplies the component along the top eigenvector by ``1 − dt·λ_max``, which
    grows without bound when its modulus is 1 or more.
    """
    if not dt * max_eigenvalue < 2.0:
        raise ValueError(
            f"dt = {dt:g} is unstable for this quadratic potential: dt·λ_max(A) = {dt * max_eigenvalue:.4g} >= 2, "
            f"so Euler–Maruyama diverges; use dt < {2.0 / max_eigenvalue:.4g}, and well below it because the stationary "
            "variance along that eigenvector is biased by the factor 1/(1 − dt·λ_max/2)"
        )


def gaussian_entropy(cov: ArrayLike) -> np.ndarray:
    """Compute the differential entropy ``H = ½ log det(2πeΣ)`` of ``N(m, Σ)`` in nats.

    Args:
        cov: covariance, shape (d, d) or a batch (..., d, d), positive definite.

    Returns:
        Entropy, shape (...) (a 0-d array for one matrix).

    Raises:
        ValueError: a covariance is not positive definite, so the entropy is ``−inf``.
    """
    array = np.asarray(cov, dtype=np.float64)
    dim = array.shape[-1]
    sign, log_det = np.linalg.slogdet(array)
    if np.any(sign <= 0):
        raise ValueError("covariance is singular or not positive definite, so the Gaussian entropy is -inf")
    return 0.5 * (dim * math.log(2.0 * math.pi * math.e) + log_det)


def gaussian_free_energy(
    mean: ArrayLike, cov: ArrayLike, matrix: ArrayLike, center: ArrayLike, beta: float
) -> np.ndarray:
    """Compute ``F = E[V] − β⁻¹H`` of ``N(μ, Σ)`` for ``V(x) = ½(x−m*)ᵀA(x−m*)``.

    ``E[V] = ½tr(AΣ) + ½(μ−m*)ᵀA(μ−m*)`` and ``H = ½ log det(2πeΣ)``, both exact for a Gaussian.
    ``F − F∞ = β⁻¹·KL(N(μ, Σ) ‖ Gibbs) ≥ 0`` with ``F∞`` from :func:`gibbs_free_energy`.

    Args:
        mean: shape (d,) or a batch (T, d).
        cov: shape (d, d) or a batch (T, d, d), positive definite.
        matrix: ``A``, symmetric positive definite, shape (d, d).
        center: ``m*``, shape (d,).
        beta: inverse temperature ``β > 0``.

    Returns:
        Free energy in the units of ``V``, shape () or (T,).
    """
    a = check_spd_matrix(matrix, "matrix")
    dim = a.shape[0]
    m_star = check_vector(center, dim, "center")
    inverse_temperature = check_positive("beta", beta)
    means = np.asarray(mean, dtype=np.float64)
    covariances = np.asarray(cov, dtype=np.float64)
    if means.shape[-1:] != (dim,) or covariances.shape[-2:] != (dim, dim):
        raise ValueError(
            f"mean and cov must end in ({dim},) and ({dim}, {dim}) to match matrix, "
            f"got shapes {means.shape} and {covariances.shape}"
        )
    offset = means - m_star
    quadratic = 0.5 * np.einsum("...i,ij,...j->...", offset, a, offset)
    trace = 0.5 * np.einsum("ij,...ji->...", a, covariances)
    return quadratic + trace - gaussian_entropy(covariances) / inverse_temperature


def gibbs_free_energy(matrix: ArrayLike, beta: float) -> float:
    """Compute ``F∞ = −β⁻¹ log Z`` with ``Z = ∫exp(−βV) = (2π/β)^{d/2} det(A)^{−1/2}``, the minimum of F.

    Args:
        matrix: ``A``, symmetric positive definite, shape (d, d).
        beta: inverse temperature ``β > 0``.

    Returns:
        Free energy of the Gibbs density ``N(m*, β⁻¹A⁻¹)`` in the units of ``V``.
    """
    a = check_spd_matrix(matrix, "matrix")
    inverse_temperature = check_positive("beta", beta)
    dim = a.shape[0]
    _, log_det = np.linalg.slogdet(a)
    log_partition = 0.5 * dim * math.log(2.0 * math.pi / inverse_temperature) - 0.5 * log_det
    return -log_partition / inverse_temperature
