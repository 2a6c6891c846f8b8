"""Linear convergence of ``J = L − λH`` for a linear encoder ``Z = XW``, with constants from the data.

Two cases have rate constants that can be computed: a μ-strongly convex one, where a ridge term
dominates the curvature of the log-det entropy, and a Polyak–Łojasiewicz (PL) one, over-parameterized
least squares. Gradient descent and minibatch SGD are run on digits and compared with the predicted rates.
"""

from __future__ import annotations

import io
import logging
import math
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from hclm._io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while the cases run."""

# Relative rounding floor of a gap J(W) − J*. Each value of J sums about n·d float64 terms, so its
# rounding error is near n·d·2⁻⁵²·|J| ≈ 3e-12·|J| for the digits problems, and 1e-10 leaves margin.
GAP_RTOL = 1e-10

_DPI = 110


class LinearEntropyProblem:
    """The objective ``J(W) = ‖XW − Y‖²_F/(2n) + (ρ/2)‖W‖²_F − λ·½ log det(WᵀΣ_X W + εI_d)``.

    ``W`` has shape (p, d) and ``Σ_X = X_cᵀX_c/(n−1)`` is the covariance of the centered rows of
    ``X``, so the entropy term equals ``hclm.surrogates.logdet_entropy(X @ W, eps)``. It depends on
    the data only through ``Σ_X`` and is evaluated exactly, also in minibatch gradients.

    Args:
        x: inputs, shape (n, p).
        y: targets, shape (n, d).
        lam: weight ``λ ≥ 0`` of the entropy term.
        ridge: ridge weight ``ρ ≥ 0``.
        eps: ridge ``ε > 0`` inside the log-determinant.

    Raises:
        ValueError: shapes that do not match, non-finite values, or a negative weight.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, *, lam: float = 0.0, ridge: float = 0.0, eps: float = 0.1) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x must have shape (n, p) and y shape (n, d) with the same n, got {x.shape} and {y.shape}")
        if x.shape[0] < 2:
            raise ValueError(f"x needs at least 2 rows for a covariance, got {x.shape[0]}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("x and y must contain only finite values; drop or impute the other rows")
        for name, value in (("lam", lam), ("ridge", ridge)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        self.x, self.y = x, y
        self.lam, self.ridge, self.eps = float(lam), float(ridge), float(eps)
        self.n, self.p = x.shape
        self.d = y.shape[1]
        self.gram = x.T @ x / self.n
        self._cross = x.T @ y / self.n
        centered = x - x.mean(axis=0)
        self.covariance = centered.T @ centered / (self.n - 1)
        self._row_norms_sq = np.einsum("ij,ij->i", x, x)

    def objective(self, w: np.ndarray) -> float:
        """Return ``J(W)``."""
        residual = self.x @ w - self.y
        value = 0.5 * float(np.sum(residual**2)) / self.n + 0.5 * self.ridge * float(np.sum(w**2))
        if self.lam > 0:
            value -= self.lam * self.entropy(w)
        return value

    def entropy(self, w: np.ndarray) -> float:
        """Return ``H(W) = ½ log det(WᵀΣ_X W + εI)``."""
        sign, logdet = np.linalg.slogdet(self._entropy_matrix(w))
        return 0.5 * float(logdet)

    def gradient(self, w: np.ndarray) -> np.ndarray:
        """Return ``∇J(W) = Xᵀ(XW − Y)/n + ρW − λ·Σ_X W M⁻¹`` with ``M = WᵀΣ_X W + εI``, shape (p, d)."""
        # XᵀX/n and XᵀY/n are precomputed, so a full gradient costs O(p²d) instead of O(npd).
        return self.gram @ w - self._cross + self._regularizer_gradient(w)

    def minibatch_gradient(self, w: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Return the gradient with the data term on ``rows`` only: an unbiased estimate of ``∇J`` for uniform rows."""
        x = self.x[rows]
        return x.T @ (x @ w - self.y[rows]) / len(rows) + self._regularizer_gradient(w)

    def gradient_variance(self, w: np.ndarray, batch_size: int) -> float:
        """Return ``E‖g_B − ∇J‖²`` for ``B`` a uniform draw of ``batch_size`` distinct rows.

        The per-row gradients of the data term are ``g_i = x_i r_iᵀ`` with ``r_i = Wᵀx_i − y_i``, so
        ``‖g_i‖² = ‖x_i‖²‖r_i‖²``. Sampling ``b`` of ``n`` rows without replacement divides their
        population variance by ``b`` and multiplies it by ``(n − b)/(n − 1)``.
        """
        residual = self.x @ w - self.y
        mean_gradient = self.gram @ w - self._cross
        population = float(np.mean(self._row_norms_sq * np.einsum("ij,ij->i", residual, residual)))
        population -= float(np.sum(mean_gradient**2))
        return max(population, 0.0) * (self.n - batch_size) / (batch_size * (self.n - 1))

    def hessian(self, w: np.ndarray) -> np.ndarray:
        """Return ``∇²J(W)`` as a (p·d, p·d) matrix in the row-major order of ``W.ravel()``.

        With ``N = M⁻¹``, ``Q = Σ_X W`` and ``P = QN`` the entropy term has
        ``d²H[V, V] = tr(N VᵀΣ_X V) − tr(N VᵀQ N QᵀV) − tr(N QᵀV N QᵀV)``, which is
        ``kron(Σ_X, N) − kron(Q N Qᵀ, N) − T`` with ``T[(a,k),(b,i)] = P_ai·P_bk``.
        """
        size = self.p * self.d
        hessian = np.kron(self.gram, np.eye(self.d)) + self.ridge * np.eye(size)
        if self.lam > 0:
            inverse = np.linalg.inv(self._entropy_matrix(w))
            q = self.covariance @ w
            p_matrix = q @ inverse
            entropy_hessian = np.kron(self.covariance, inverse) - np.kron(q @ inverse @ q.T, inverse)
            entropy_hessian -= np.einsum("ai,bk->akbi", p_matrix, p_matrix).reshape(size, size)
            hessian -= self.lam * entropy_hessian
        return 0.5 * (hessian + hessian.T)

    def curvature_bounds(self) -> tuple[float, float]:
        """Return global bounds ``(m, M)`` with ``m·I ⪯ ∇²J(W) ⪯ M·I`` for every ``W``.

        The data term has Hessian ``kron(XᵀX/n, I) + ρI``. In the entropy term's second derivative
        (see :meth:`hessian`) the first term ``tr(N VᵀΣ_X V)`` is non-negative, and the other two are
        ``‖C‖²_F`` and ``tr(C²)`` with ``C = M^{-1/2}QᵀV M^{-1/2}``, whose sum lies in
        ``[0, 2‖C‖²_F]``. Since ``WᵀΣ_X W ⪯ M``, ``‖C‖²_F ≤ tr(N VᵀΣ_X V)``, so
        ``|d²H[V, V]| ≤ tr(N VᵀΣ_X V) ≤ β‖V‖²`` with ``β = λ_max(Σ_X)/ε`` because ``N ⪯ I/ε``.
        So ``m = λ_min(XᵀX/n) + ρ − λβ`` and ``M = λ_max(XᵀX/n) + ρ + λβ``.
        """
        gram_eigenvalues = np.linalg.eigvalsh(self.gram)
        entropy_curvature = float(np.linalg.eigvalsh(self.covariance)[-1]) / self.eps if self.lam > 0 else 0.0
        lower = max(float(gram_eigenvalues[0]), 0.0) + self.ridge - self.lam * entropy_curvature
        upper = float(gram_eigenvalues[-1]) + self.ridge + self.lam * entropy_curvature
        return lower, upper

    def _entropy_matrix(self, w: np.ndarray) -> np.ndarray:
        return w.T @ self.covariance @ w + self.eps * np.eye(self.d)

    def _regularizer_gradient(self, w: np.ndarray) -> np.ndarray:
        gradient = self.ridge * w
        if self.lam > 0:
            # Σ_X W M⁻¹ = (M⁻¹ WᵀΣ_X)ᵀ because M and Σ_X are symmetric.
            gradient = gradient - self.lam * np.linalg.solve(self._entropy_matrix(w), (self.covariance @ w).T).T
        return gradient


@dataclass(frozen=True)
class RateConstants:
    """Constants of a linear-rate guarantee.

    Attributes:
        kind: "strongly convex" or "PL".
        mu: strong convexity or PL constant ``μ``: ``‖∇J‖² ≥ 2μ(J − J*)`` everywhere.
        smoothness: ``L`` with ``∇²J ⪯ L·I`` everywhere.
        optimum: ``J*``.
        optimum_error: bound on ``J(Ŵ) − J*`` for the computed minimizer ``Ŵ`` (0 when exact).
        derivation: how the constants were obtained, for the report.
    """

    kind: str
    mu: float
    smoothness: float
    optimum: float
    optimum_error: float
    derivation: str


def strongly_convex_constants(problem: LinearEntropyProblem, start: np.ndarray) -> tuple[RateConstants, np.ndarray]:
    """Compute ``μ``, ``L`` and ``J*`` of a strongly convex problem and return them with the minimizer.

    ``μ`` and ``L`` are the global bounds of :meth:`LinearEntropyProblem.curvature_bounds`. A
    μ-strongly convex function satisfies the PL inequality ``‖∇J‖² ≥ 2μ(J − J*)``, so
    ``J(Ŵ) − J* ≤ ‖∇J(Ŵ)‖²/(2μ)`` certifies the computed optimum. ``Ŵ`` comes from damped Newton
    steps from ``start`` until ``‖∇J‖`` stops decreasing.

    Raises:
        ValueError: ``μ ≤ 0``, so strong convexity is not proven. The message names the fix.
    """
    mu, smoothness = problem.curvature_bounds()
    if mu <= 0:
        raise ValueError(
            f"the curvature bound is mu = {mu:.4g} <= 0, so J is not provably strongly convex; "
            f"raise ridge above {problem.ridge - mu:.4g}, raise eps, or lower lam"
        )
    w = _newton_minimize(problem, start)
    gradient_norm_sq = float(np.sum(problem.gradient(w) ** 2))
    constants = RateConstants(
        kind="strongly convex",
        mu=mu,
        smoothness=smoothness,
        optimum=problem.objective(w),
        optimum_error=gradient_norm_sq / (2 * mu),
        derivation=(
            "mu = λ_min(XᵀX/n) + ρ − λ·λ_max(Σ_X)/ε and L = λ_max(XᵀX/n) + ρ + λ·λ_max(Σ_X)/ε "
            "(global Hessian bounds); J* from damped Newton steps, certified by ‖∇J‖²/(2μ)"
        ),
    )
    return constants, w


def pl_constants(problem: LinearEntropyProblem) -> RateConstants:
    """Compute the PL constant of over-parameterized least squares ``J(W) = ‖XW − Y‖²/(2n)``.

    With ``n < p`` and ``X`` of full row rank, ``XW = Y`` has solutions, so ``J* = 0``, and
    ``‖∇J‖² = ‖Xᵀ R‖²/n² ≥ λ_min(XXᵀ)·‖R‖²/n² = 2·(λ_min(XXᵀ)/n)·J`` for ``R = XW − Y``. So
    ``μ = λ_min(XXᵀ)/n`` and ``L = λ_max(XXᵀ)/n``. ``J`` is not strongly convex, because its Hessian
    ``kron(XᵀX/n, I)`` is singular along the null space of ``X``.

    Raises:
        ValueError: ``lam`` or ``ridge`` is not 0, ``n ≥ p``, or ``X`` is rank-deficient.
    """
    if problem.lam != 0 or problem.ridge != 0:
        raise ValueError(
            f"the PL case needs lam = 0 and ridge = 0, got lam = {problem.lam} and ridge = {problem.ridge}; "
            "use strongly_convex_constants for the regularized objective"
        )
    if problem.n >= problem.p:
        raise ValueError(f"the PL case needs fewer rows than features, got n = {problem.n} >= p = {problem.p}; use fewer rows")
    eigenvalues = np.linalg.eigvalsh(problem.x @ problem.x.T / problem.n)
    if eigenvalues[0] <= 1e-12 * eigenvalues[-1]:
        raise ValueError(
            f"X (shape {problem.x.shape}) is numerically rank-deficient (λ_min(XXᵀ)/n = {eigenvalues[0]:.3g}); "
            "drop duplicate or collinear rows"
        )
    return RateConstants(
        kind="PL",
        mu=float(eigenvalues[0]),
        smoothness=float(eigenvalues[-1]),
        optimum=0.0,
        optimum_error=0.0,
        derivation="mu = λ_min(XXᵀ)/n and L = λ_max(XXᵀ)/n; J* = 0 because XW = Y is solvable",
    )


def contraction_factor(mu: float, smoothness: float, step_size: float) -> float:
    """Return the per-step factor ``q = 1 − 2μη(1 − Lη/2)`` of gradient descent under PL.

    L-smoothness gives ``J(W − η∇J) ≤ J(W) − η(1 − Lη/2)‖∇J‖²`` and PL gives
    ``‖∇J‖² ≥ 2μ(J − J*)``, so ``J_{k+1} − J* ≤ q·(J_k − J*)`` (Karimi, Nutini & Schmidt 2016,
    "Linear convergence of gradient and proximal-gradient methods under the
    Polyak-Łojasiewicz condition", Theorem 1, stated there for ``η = 1/L``, where ``q = 1 − μ/L``).
    For ``η ≤ 1/L`` this is at most ``1 − ημ``, and as ``η → 0`` it matches the gradient flow
    ``J(t) − J* ≤ e^{−2μt}(J(0) − J*)`` at ``t = ηk``.

    Raises:
        ValueError: ``η`` outside ``(0, 2/L)``, where the factor is not below 1.
    """
    if not (0 < step_size < 2 / smoothness):
        raise ValueError(f"step_size must be in (0, 2/L) = (0, {2 / smoothness:.4g}), got {step_size}; use 1/L or less")
    return 1.0 - 2.0 * mu * step_size * (1.0 - smoothness * step_size / 2.0)


def gradient_descent(
    problem: LinearEntropyProblem, start: np.ndarray, step_size: float, steps: int, keep_every: int = 0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run full-batch gradient descent ``W ← W − η∇J(W)``.

    Returns:
        ``J(W_k)`` for ``k = 0 … steps``, shape (steps + 1,), and the iterates at every
        ``keep_every``-th step (none when ``keep_every`` is 0).
    """
    w = np.array(start, dtype=np.float64)
    values = np.empty(steps + 1)
    saved_iterates = []
    values[0] = problem.objective(w)
    for step in range(1, steps + 1):
        w = w - step_size * problem.gradient(w)
        values[step] = problem.objective(w)
        if keep_every and step % keep_every == 0:
            saved_iterates.append(w.copy())
    return values, saved_iterates


def stochastic_gradient_descent(
    problem: LinearEntropyProblem, start: np.ndarray, step_size: float, steps: int, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run minibatch SGD with a fresh uniform draw of ``batch_size`` distinct rows per step.

    Returns:
        ``J(W_k)`` for ``k = 0 … steps`` and the exact gradient variance
        ``E‖g_B(W_k) − ∇J(W_k)‖²`` at ``k = 0 … steps − 1``.

    Raises:
        ValueError: an invalid ``batch_size``, or the iterates overflow (the step is too large
            for the minibatch curvature).
    """
    if not 1 <= batch_size <= problem.n:
        raise ValueError(f"batch_size must be between 1 and n = {problem.n}, got {batch_size}")
    rng = np.random.default_rng(seed)
    w = np.array(start, dtype=np.float64)
    values = np.empty(steps + 1)
    variances = np.empty(steps)
    values[0] = problem.objective(w)
    with np.errstate(over="raise", invalid="raise"):
        try:
            for step in range(steps):
                variances[step] = problem.gradient_variance(w, batch_size)
                rows = rng.choice(problem.n, size=batch_size, replace=False)
                w = w - step_size * problem.minibatch_gradient(w, rows)
                values[step + 1] = problem.objective(w)
        except (FloatingPointError, np.linalg.LinAlgError):
            raise ValueError(
                f"SGD with step size {step_size:.4g} and batch size {batch_size} diverged at step {step} (seed {seed}); "
                "use a smaller step size or a larger batch"
            ) from None
    return values, variances


def sgd_bound(
    initial_gap: float, mean_variances: np.ndarray, mu: float, smoothness: float, step_size: float
) -> np.ndarray:
    """Return the bound ``B_k`` on ``E[J(W_k) − J*]`` of SGD with constant step ``η < 2/L``.

    For an unbiased gradient ``g`` with ``E‖g − ∇J‖² = V(W)``, L-smoothness and PL give
    ``E[e_{k+1} | W_k] ≤ q·e_k + (Lη²/2)·V(W_k)`` with ``q`` from :func:`contraction_factor`, so
    ``B_{k+1} = q·B_k + (Lη²/2)·E[V(W_k)]``. This is the argument of Karimi, Nutini & Schmidt
    (2016, Theorem 4) with the variance in place of a bound on ``E‖g‖²``. With ``V ≤ V_max`` it
    settles at the neighbourhood ``LηV_max/(4μ(1 − Lη/2))``.

    NOTE: ``E[V(W_k)]`` is estimated by ``mean_variances``, the average over the SGD seeds of the
    exact variance at their iterates, so the result is an estimate of the bound.

    Args:
        initial_gap: ``J(W_0) − J*``.
        mean_variances: ``E[V(W_k)]`` for ``k = 0 … K − 1``.
        mu: PL constant ``μ``.
        smoothness: smoothness constant ``L``.
        step_size: ``η``.

    Returns:
        ``B_k`` for ``k = 0 … K``.
    """
    q = contraction_factor(mu, smoothness, step_size)
    bound = np.empty(len(mean_variances) + 1)
    bound[0] = initial_gap
    noise = 0.5 * smoothness * step_size**2
    for step, variance in enumerate(mean_variances):
        bound[step + 1] = q * bound[step] + noise * variance
    return bound


def sgd_neighbourhood(variance: float, mu: float, smoothness: float, step_size: float) -> float:
    """Return the limit ``LηV/(4μ(1 − Lη/2))`` of :func:`sgd_bound` for a constant variance ``V``."""
    contraction_factor(mu, smoothness, step_size)
    return smoothness * step_size * variance / (4.0 * mu * (1.0 - smoothness * step_size / 2.0))


def fitted_contraction(gaps: np.ndarray, floor: float) -> float:
    """Fit the asymptotic per-step factor of a linearly decaying gap sequence.

    The fit is a least-squares line through ``log gap_k`` over the second half of the steps
    before the gap first drops to ``floor``, so the fast start does not count.

    Returns:
        ``exp(slope)``, or NaN when fewer than 4 steps are above the floor.
    """
    below = np.flatnonzero(~(gaps > floor))
    end = int(below[0]) if below.size else len(gaps)
    start = end // 2
    if end - start < 4:
        return math.nan
    slope, _ = np.polyfit(np.arange(start, end), np.log(gaps[start:end]), 1)
    return float(math.exp(slope))


@dataclass
class GradientDescentRun:
    """Gradient descent with one step size, against its bound.

    Attributes:
        step_size: ``η``.
        gap: ``J(W_k) − J*`` for ``k = 0 … K``.
        bound: ``q^k·(J(W_0) − J*)``.
        predicted_contraction: ``q = 1 − 2μη(1 − Lη/2)``.
        measured_contraction: asymptotic factor fitted by :func:`fitted_contraction`.
    """

    step_size: float
    gap: np.ndarray
    bound: np.ndarray
    predicted_contraction: float
    measured_contraction: float

    def bound_holds(self, floor: float) -> bool:
        """Return True when ``gap ≤ bound`` at every step, up to the rounding ``floor``."""
        return bool(np.all(self.gap <= self.bound * (1 + GAP_RTOL) + floor))


@dataclass
class SGDMeasurement:
    """SGD gaps over seeds and the bound they are compared with.

    Attributes:
        step_size: ``η``.
        batch_size: rows per step.
        seeds: seeds of the batch draws.
        mean_gap: mean over seeds of ``J(W_k) − J*``, shape (K + 1,).
        std_gap: standard deviation over seeds of ``J(W_k) − J*``.
        bound: :func:`sgd_bound` with the seed-averaged variance, shape (K + 1,).
        variance_max: largest exact gradient variance met at any iterate of any seed.
        variance_at_optimum: exact gradient variance at the minimizer.
        neighbourhood: :func:`sgd_neighbourhood` with ``variance_at_optimum``, the level that
            the bound approaches once the iterates are near the minimizer.
    """

    step_size: float
    batch_size: int
    seeds: list[int]
    mean_gap: np.ndarray
    std_gap: np.ndarray
    bound: np.ndarray
    variance_max: float
    variance_at_optimum: float
    neighbourhood: float

    def bound_holds(self, standard_errors: float = 3.0) -> bool:
        """Return True when the mean gap is below the bound plus ``standard_errors`` standard errors of the mean."""
        margin = standard_errors * self.std_gap / math.sqrt(len(self.seeds))
        return bool(np.all(self.mean_gap <= self.bound * (1 + GAP_RTOL) + margin))


@dataclass
class ConvergenceCase:
    """Measured and predicted decay of ``J − J*`` for one problem.

    Attributes:
        name: short name used in file names.
        title: description for plots and reports.
        constants: ``μ``, ``L``, ``J*`` and how they were obtained.
        settings: the problem's ``n``, ``p``, ``d``, ``λ``, ``ρ`` and ``ε``.
        gradient_descent: one run per step size, the first with ``η = 1/L``.
        gap_floor: rounding floor below which gaps are not compared.
        hessian_range: smallest and largest Hessian eigenvalue met at the checked iterates.
        sgd: the SGD measurement.
    """

    name: str
    title: str
    constants: RateConstants
    settings: dict[str, Any]
    gradient_descent: list[GradientDescentRun]
    gap_floor: float
    hessian_range: tuple[float, float]
    sgd: SGDMeasurement

    def as_dict(self) -> dict[str, Any]:
        """Return the scalars and curves as plain JSON types."""
        return {
            "name": self.name,
            "title": self.title,
            "constants": asdict(self.constants),
            "settings": self.settings,
            "gap_floor": self.gap_floor,
            "hessian_range": list(self.hessian_range),
            "gradient_descent": [
                {**_plain(asdict(run)), "bound_holds": run.bound_holds(self.gap_floor)} for run in self.gradient_descent
            ],
            "sgd": {**_plain(asdict(self.sgd)), "bound_holds": self.sgd.bound_holds()},
        }


@dataclass
class ConvergenceSettings:
    """Sizes of the two convergence cases on digits.

    Attributes:
        lam: ``λ`` of the strongly convex case.
        ridge: ``ρ`` of the strongly convex case.
        eps: ``ε`` of the strongly convex case.
        pl_rows: rows of the over-parameterized case (fewer than the 64 digit features).
        strongly_convex_steps: gradient-descent steps at ``η = 1/L`` in the strongly convex case.
        pl_steps: gradient-descent steps at ``η = 1/L`` in the PL case.
        gd_step_fractions: gradient-descent step sizes as fractions of ``1/L``. A run with
            fraction ``f`` takes ``steps/f`` steps, so every run covers the same time ``t = ηk``.
        sgd_steps_strongly_convex: SGD steps in the strongly convex case.
        sgd_steps_pl: SGD steps in the PL case.
        sgd_batch_strongly_convex: rows per SGD step in the strongly convex case.
        sgd_batch_pl: rows per SGD step in the PL case.
        sgd_fraction_strongly_convex: SGD step size as a fraction of ``1/L`` in the strongly convex case.
        sgd_fraction_pl: SGD step size as a fraction of ``1/L`` in the PL case.
        seeds: SGD seeds. The initial ``W`` is drawn from seed 0 for every run.
        hessian_checks: gradient-descent iterates, besides the start, whose Hessian spectrum is computed.
    """

    lam: float = 0.01
    ridge: float = 1.0
    eps: float = 0.1
    pl_rows: int = 24
    strongly_convex_steps: int = 300
    pl_steps: int = 4000
    gd_step_fractions: list[float] = field(default_factory=lambda: [1.0, 0.1])
    sgd_steps_strongly_convex: int = 1200
    sgd_steps_pl: int = 3000
    sgd_batch_strongly_convex: int = 64
    sgd_batch_pl: int = 6
    sgd_fraction_strongly_convex: float = 0.1
    sgd_fraction_pl: float = 0.5
    seeds: list[int] = field(default_factory=lambda: list(range(12)))
    hessian_checks: int = 4

    def __post_init__(self) -> None:
        counts = {
            "strongly_convex_steps": self.strongly_convex_steps,
            "pl_steps": self.pl_steps,
            "sgd_steps_strongly_convex": self.sgd_steps_strongly_convex,
            "sgd_steps_pl": self.sgd_steps_pl,
            "sgd_batch_strongly_convex": self.sgd_batch_strongly_convex,
            "sgd_batch_pl": self.sgd_batch_pl,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, fractions in (
            ("gd_step_fractions", self.gd_step_fractions),
            ("sgd_fraction_strongly_convex", [self.sgd_fraction_strongly_convex]),
            ("sgd_fraction_pl", [self.sgd_fraction_pl]),
        ):
            if not fractions or not all(0 < fraction < 2 for fraction in fractions):
                raise ValueError(f"{name} must contain fractions of 1/L in (0, 2), got {fractions}; 1.0 is η = 1/L")
        if not self.seeds:
            raise ValueError("seeds must contain at least one SGD seed")
        if self.hessian_checks < 0:
            raise ValueError(f"hessian_checks must be >= 0, got {self.hessian_checks}")

    @classmethod
    def quick(cls) -> "ConvergenceSettings":
        """Return smaller settings for a smoke run: fewer steps and seeds."""
        return cls(
            pl_steps=2500,
            sgd_steps_strongly_convex=500,
            sgd_steps_pl=1500,
            seeds=list(range(6)),
            hessian_checks=2,
        )


def digits_regression_data() -> tuple[np.ndarray, np.ndarray]:
    """Return the standardized digits train split in float64 and one-hot targets, shapes (n, 64) and (n, 10)."""
    from hclm.experiments.config import DataConfig
    from hclm.experiments.data import load_dataset

    dataset = load_dataset(DataConfig())
    x = dataset.x_train.astype(np.float64)
    y = np.eye(dataset.classes)[dataset.y_train]
    return x, y


def run_strongly_convex_case(
    x: np.ndarray, y: np.ndarray, settings: ConvergenceSettings, progress: ProgressCallback | None = None
) -> ConvergenceCase:
    """Run gradient descent and SGD on the strongly convex problem and compare them with the rates."""
    problem = LinearEntropyProblem(x, y, lam=settings.lam, ridge=settings.ridge, eps=settings.eps)
    start = _initial_w(problem)
    with _one_blas_thread():
        constants, w_star = strongly_convex_constants(problem, start)
        return _measure_case(
            problem,
            constants,
            w_star,
            start,
            name="strongly-convex",
            title=(
                f"Strongly convex: least squares + ridge ρ={settings.ridge:g} − λ={settings.lam:g}·logdet "
                f"(ε={settings.eps:g}), n={problem.n}"
            ),
            steps=settings.strongly_convex_steps,
            sgd_steps=settings.sgd_steps_strongly_convex,
            batch_size=settings.sgd_batch_strongly_convex,
            sgd_fraction=settings.sgd_fraction_strongly_convex,
            settings=settings,
            progress=progress,
        )


def run_pl_case(
    x: np.ndarray, y: np.ndarray, settings: ConvergenceSettings, progress: ProgressCallback | None = None
) -> ConvergenceCase:
    """Run gradient descent and SGD on over-parameterized least squares (the first ``pl_rows`` rows)."""
    if not 2 <= settings.pl_rows < x.shape[1]:
        raise ValueError(f"pl_rows must be between 2 and {x.shape[1] - 1} (fewer than the features), got {settings.pl_rows}")
    problem = LinearEntropyProblem(x[: settings.pl_rows], y[: settings.pl_rows])
    constants = pl_constants(problem)
    start = _initial_w(problem)
    # The minimizer closest to W_0 (gradient steps never leave W_0 + row space of X): W_0 − X⁺(XW_0 − Y).
    w_star = start - np.linalg.pinv(problem.x) @ (problem.x @ start - problem.y)
    with _one_blas_thread():
        return _measure_case(
            problem,
            constants,
            w_star,
            start,
            name="pl",
            title=f"PL: over-parameterized least squares (n={problem.n} < p={problem.p}), λ=0",
            steps=settings.pl_steps,
            sgd_steps=settings.sgd_steps_pl,
            batch_size=settings.sgd_batch_pl,
            sgd_fraction=settings.sgd_fraction_pl,
            settings=settings,
            progress=progress,
        )


def run_convergence(
    out_dir: str | os.PathLike,
    settings: ConvergenceSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run both cases, write ``summary.json`` and one PNG per case into ``out_dir``.

    Returns:
        The summary written to ``summary.json``: ``config``, ``environment``, and under ``cases``
        per case the constants, the predicted and
        fitted factors, whether each bound held at every step, and the curves.
    """
    settings = settings or ConvergenceSettings()
    out = Path(out_dir)
    x, y = digits_regression_data()
    cases = [run_strongly_convex_case(x, y, settings, progress), run_pl_case(x, y, settings, progress)]
    summary: dict[str, Any] = {
        "config": asdict(settings),
        "environment": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}",
        "cases": [case.as_dict() for case in cases],
        "plots": {},
    }
    for case in cases:
        path = plot_convergence_case(case, out / f"convergence-{case.name}.png")
        summary["plots"][case.name] = path.name
    atomic_write_json(out / "summary.json", summary)
    logger.info("wrote convergence results to %s", out)
    return summary


def plot_convergence_case(case: ConvergenceCase, path: str | os.PathLike) -> Path:
    """Plot measured gaps against the predicted bounds of one case into a PNG with two panels.

    The left panel shows each gradient-descent run and its bound ``q^k·e_0`` over the time
    ``t = ηk``, with the gradient-flow bound ``e^{−2μt}·e_0``. The right panel shows the SGD mean
    gap over seeds with a ±1 std band, the bound of :func:`sgd_bound`, and the neighbourhood at
    the minimizer. Both y axes are logarithmic, and gaps at or below the rounding floor are left out.

    Returns:
        The path of the written PNG.
    """
    figure = Figure(figsize=(12.0, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    gd_axis, sgd_axis = figure.subplots(1, 2)
    mu, smoothness = case.constants.mu, case.constants.smoothness
    colors = ("tab:blue", "tab:green", "tab:purple", "tab:brown")

    longest = 0.0
    for index, run in enumerate(case.gradient_descent):
        color = colors[index % len(colors)]
        time = run.step_size * np.arange(run.gap.size)
        longest = max(longest, float(time[-1]))
        above_floor = run.gap > case.gap_floor
        fraction = run.step_size * smoothness
        gd_axis.plot(time[above_floor], run.gap[above_floor], color=color, label=f"GD η = {fraction:g}/L: measured")
        gd_axis.plot(time, run.bound, color=color, linestyle="--", label=f"bound q^k·e₀, q = {run.predicted_contraction:.5f}")
    time = np.linspace(0.0, longest, 200)
    initial = case.gradient_descent[0].bound[0]
    gd_axis.plot(time, initial * np.exp(-2 * mu * time), color="0.3", linestyle=":", label="gradient flow e^(−2μt)·e₀")
    gd_axis.axhline(case.gap_floor, color="0.6", linewidth=0.8, label="rounding floor")
    gd_axis.set_yscale("log")
    gd_axis.set_ylim(bottom=case.gap_floor / 10, top=initial * 3)
    gd_axis.set_xlabel("time t = η·k")
    gd_axis.set_ylabel("J(W_k) − J* (log scale)")
    gd_axis.set_title(f"Gradient descent (μ = {mu:.3g}, L = {smoothness:.3g})")
    gd_axis.legend(fontsize="x-small")

    sgd = case.sgd
    steps = np.arange(sgd.mean_gap.size)
    lower = np.maximum(sgd.mean_gap - sgd.std_gap, case.gap_floor)
    sgd_axis.fill_between(steps, lower, sgd.mean_gap + sgd.std_gap, color="tab:blue", alpha=0.2, label="± 1 std over seeds")
    sgd_axis.plot(steps, np.maximum(sgd.mean_gap, case.gap_floor), color="tab:blue", label="SGD: mean J − J*")
    sgd_axis.plot(steps, sgd.bound, color="tab:red", linestyle="--", label="bound on E[J − J*]")
    if sgd.neighbourhood > case.gap_floor:
        sgd_axis.axhline(sgd.neighbourhood, color="tab:orange", linestyle=":", label="neighbourhood at the minimizer")
    sgd_axis.set_yscale("log")
    sgd_axis.set_xlabel("SGD step k")
    sgd_axis.set_ylabel("J(W_k) − J* (log scale)")
    fraction = sgd.step_size * smoothness
    sgd_axis.set_title(f"SGD: η = {fraction:g}/L, batch {sgd.batch_size}, {len(sgd.seeds)} seeds")
    sgd_axis.legend(fontsize="x-small")
    for axis in (gd_axis, sgd_axis):
        axis.grid(True, which="major", alpha=0.3)

    figure.suptitle(case.title)
    return _save_png(figure, Path(path))


def _measure_case(
    problem: LinearEntropyProblem,
    constants: RateConstants,
    w_star: np.ndarray,
    start: np.ndarray,
    *,
    name: str,
    title: str,
    steps: int,
    sgd_steps: int,
    batch_size: int,
    sgd_fraction: float,
    settings: ConvergenceSettings,
    progress: ProgressCallback | None,
) -> ConvergenceCase:
    mu, smoothness, optimum = constants.mu, constants.smoothness, constants.optimum
    floor = GAP_RTOL * max(1.0, abs(optimum))
    total = len(settings.gd_step_fractions) + len(settings.seeds)
    runs, checked = [], [start]
    for index, fraction in enumerate(settings.gd_step_fractions):
        step_size = fraction / smoothness
        run_steps = int(math.ceil(steps / fraction))
        keep_every = max(1, run_steps // settings.hessian_checks) if index == 0 and settings.hessian_checks else 0
        values, saved_iterates = gradient_descent(problem, start, step_size, run_steps, keep_every)
        checked += saved_iterates
        gaps = values - optimum
        q = contraction_factor(mu, smoothness, step_size)
        # J(Ŵ) ≥ J*, so the computed gaps undercount the true ones by at most optimum_error.
        bound = (gaps[0] + constants.optimum_error) * q ** np.arange(run_steps + 1)
        runs.append(GradientDescentRun(step_size, gaps, bound, q, fitted_contraction(gaps, floor)))
        if progress is not None:
            progress(name, index + 1, total)

    eigenvalues = [np.linalg.eigvalsh(problem.hessian(w)) for w in checked]
    hessian_range = (float(min(e[0] for e in eigenvalues)), float(max(e[-1] for e in eigenvalues)))

    sgd_step = sgd_fraction / smoothness
    gap_runs, variance_runs = [], []
    for index, seed in enumerate(settings.seeds):
        values, variances = stochastic_gradient_descent(problem, start, sgd_step, sgd_steps, batch_size, seed)
        gap_runs.append(values - optimum)
        variance_runs.append(variances)
        if progress is not None:
            progress(name, len(settings.gd_step_fractions) + index + 1, total)
    gap_array, variance_array = np.array(gap_runs), np.array(variance_runs)
    variance_at_optimum = problem.gradient_variance(w_star, batch_size)
    sgd = SGDMeasurement(
        step_size=sgd_step,
        batch_size=batch_size,
        seeds=list(settings.seeds),
        mean_gap=gap_array.mean(axis=0),
        std_gap=gap_array.std(axis=0),
        bound=sgd_bound(gap_array[0, 0] + constants.optimum_error, variance_array.mean(axis=0), mu, smoothness, sgd_step),
        variance_max=float(variance_array.max()),
        variance_at_optimum=variance_at_optimum,
        neighbourhood=sgd_neighbourhood(variance_at_optimum, mu, smoothness, sgd_step),
    )
    case = ConvergenceCase(
        name=name,
        title=title,
        constants=constants,
        settings={"n": problem.n, "p": problem.p, "d": problem.d, "lam": problem.lam, "ridge": problem.ridge, "eps": problem.eps},
        gradient_descent=runs,
        gap_floor=floor,
        hessian_range=hessian_range,
        sgd=sgd,
    )
    logger.info(
        "%s: mu %.4g, L %.4g, factor at 1/L predicted %.6f, fitted %.6f",
        name,
        mu,
        smoothness,
        runs[0].predicted_contraction,
        runs[0].measured_contraction,
    )
    return case


def _plain(value: Any) -> Any:
    """Convert numpy arrays and scalars inside dicts and lists to plain Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _one_blas_thread() -> threadpool_limits:
    """Limit BLAS to one thread, because the products here are small.

    A second thread only adds synchronization. With other processes on a 2-core machine it made
    these products more than 10 times slower.
    """
    return threadpool_limits(limits=1, user_api="blas")


def _initial_w(problem: LinearEntropyProblem) -> np.ndarray:
    """Draw the common starting point ``W_0`` with entries ``N(0, 1/p)`` from seed 0."""
    return np.random.default_rng(0).standard_normal((problem.p, problem.d)) / math.sqrt(problem.p)


def _newton_minimize(problem: LinearEntropyProblem, start: np.ndarray, max_steps: int = 50) -> np.ndarray:
    """Minimize a strongly convex ``J`` by Newton steps with backtracking, until ``‖∇J‖`` stops falling."""
    w = np.array(start, dtype=np.float64)
    gradient = problem.gradient(w)
    for _ in range(max_steps):
        direction = np.linalg.solve(problem.hessian(w), gradient.ravel()).reshape(w.shape)
        value = problem.objective(w)
        decrease = float(np.sum(gradient * direction))
        step = 1.0
        # Backtracking (Armijo) keeps each step a descent step, and near the minimizer it accepts step 1.
        while step > 1e-8 and problem.objective(w - step * direction) > value - 0.25 * step * decrease:
            step /= 2
        candidate = w - step * direction
        candidate_gradient = problem.gradient(candidate)
        if np.sum(candidate_gradient**2) >= np.sum(gradient**2):
            break
        w, gradient = candidate, candidate_gradient
    logger.debug("Newton stopped at ‖∇J‖ = %.3g", float(np.linalg.norm(gradient)))
    return w


def _save_png(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    # Dropping the Software entry keeps the PNG free of the matplotlib version.
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote plot %s", path)
    return path
