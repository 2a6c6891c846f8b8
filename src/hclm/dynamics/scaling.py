"""Power-law fits of risk curves, the balance ODE behind them, and an injection–dissipation balance check.

The ODE gives a conditional reading: if the excess risk obeys ``dε/dt = −a·ε^{1+1/α}``, it decays as ``t^{−α}``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares

logger = logging.getLogger(__name__)

ROBUST_LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
PARAMETERS = ("r_inf", "amplitude", "alpha")
INTERVAL_METHODS = ("studentized", "percentile")

# Number of fitted parameters (R∞, A, α); the residual variance uses n − 3 degrees of freedom.
_N_PARAMETERS = 3
# The upper bound of R∞ sits this far (relative) below min R, so that R − R∞ > 0 at every point.
_R_INF_MARGIN = 1e-9
# Consistency factor of the median absolute deviation for a normal distribution.
_MAD_TO_SIGMA = 1.4826
_SOLVER_TOLERANCE = 1e-12


@dataclass(frozen=True)
class PowerLawFit:
    """Estimates and bootstrap intervals of ``R(x) = R∞ + A·x^{−α}``.

    Attributes:
        r_inf: asymptote ``R∞`` (units of ``r``).
        amplitude: ``A`` (units of ``r`` times units of ``x`` to the power ``α``).
        alpha: exponent ``α`` (dimensionless).
        residual_scale: robust scale of the log residuals, ``1.4826·MAD``; about the typical relative deviation.
        residual_rms: ``√(Σ e_i² / (n − 3))`` of the log residuals ``e_i``.
        cost: robust cost of the best start, as reported by ``least_squares``.
        n_points: number of points fitted.
        x_range: smallest and largest ``x``.
        loss: robust loss of ``least_squares``.
        f_scale: residual size in log units where the robust loss turns from quadratic to linear.
        level: coverage level of the intervals, e.g. 0.95.
        intervals: percentile interval ``(low, high)`` per parameter name; NaN without resamples.
        bootstrap_samples: successful resample estimates, shape (B, 3), columns ``PARAMETERS``.
        failed_resamples: resamples whose refit did not converge; they are left out of the intervals.
        alpha_bounds: search range of ``α``; an estimate on a bound is not a true optimum.
    """

    r_inf: float
    amplitude: float
    alpha: float
    residual_scale: float
    residual_rms: float
    cost: float
    n_points: int
    x_range: tuple[float, float]
    loss: str
    f_scale: float
    level: float
    intervals: dict[str, tuple[float, float]]
    bootstrap_samples: np.ndarray = field(repr=False)
    failed_resamples: int
    interval_method: str
    alpha_bounds: tuple[float, float]

    @property
    def alpha_at_bound(self) -> bool:
        """True when ``α`` lies within 0.1 % of either end of ``alpha_bounds``."""
        low, high = self.alpha_bounds
        return bool(self.alpha <= low * 1.001 or self.alpha >= high * 0.999)

    def predict(self, x: Sequence[float] | np.ndarray) -> np.ndarray:
        """Evaluate ``R∞ + A·x^{−α}`` at ``x > 0``."""
        points = np.asarray(x, dtype=float)
        return self.r_inf + self.amplitude * points ** (-self.alpha)

    def band(self, x: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Compute the pointwise percentile band of the fitted curve over the bootstrap resamples.

        Returns:
            ``(low, high)`` arrays shaped like ``x``; NaN when there are no resamples.
        """
        points = np.asarray(x, dtype=float)
        if len(self.bootstrap_samples) == 0:
            empty = np.full(points.shape, math.nan)
            return empty, empty.copy()
        samples = self.bootstrap_samples
        curves = samples[:, :1] + samples[:, 1:2] * points.reshape(1, -1) ** (-samples[:, 2:3])
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile(curves, [tail, 1.0 - tail], axis=0)
        return low.reshape(points.shape), high.reshape(points.shape)

    def relative_width(self, name: str) -> float:
        """Return the interval width of parameter ``name`` divided by the absolute estimate (inf at 0)."""
        low, high = self.intervals[name]
        estimate = abs(getattr(self, name))
        return float((high - low) / estimate) if estimate > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        """Return the estimates, intervals and diagnostics as JSON-ready values (no resamples)."""
        return {
            "r_inf": self.r_inf,
            "amplitude": self.amplitude,
            "alpha": self.alpha,
            "intervals": {name: list(bounds) for name, bounds in self.intervals.items()},
            "level": self.level,
            "residual_scale": self.residual_scale,
            "residual_rms": self.residual_rms,
            "cost": self.cost,
            "n_points": self.n_points,
            "x_range": list(self.x_range),
            "loss": self.loss,
            "f_scale": self.f_scale,
            "bootstrap_resamples": int(len(self.bootstrap_samples)),
            "failed_resamples": self.failed_resamples,
            "interval_method": self.interval_method,
            "alpha_bounds": list(self.alpha_bounds),
            "alpha_at_bound": self.alpha_at_bound,
        }


def fit_power_law(
    x: Sequence[float] | np.ndarray,
    r: Sequence[float] | np.ndarray,
    *,
    loss: str = "soft_l1",
    f_scale: float = 0.1,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    interval: str = "studentized",
    alpha_bounds: tuple[float, float] = (1e-3, 10.0),
) -> PowerLawFit:
    """Fit ``R(x) = R∞ + A·x^{−α}`` by robust least squares in log space, with bootstrap intervals.

    The residuals are ``e_i = log r_i − log(R∞ + A·x_i^{−α})`` under ``A > 0``, ``α`` within
    ``alpha_bounds`` and ``0 ≤ R∞ < min r``. Working in log space gives each point the same weight
    per decade, which suits curves that span several decades and noise that is multiplicative.
    ``scipy.optimize.least_squares`` starts from several points (R∞ at 0, ½ and 0.9 of ``min r``
    with a log-log line through the rest, and a grid of α), and the start with the lowest cost wins.

    The intervals come from a residual bootstrap. Each resample keeps ``x`` and adds to the fitted
    log curve residuals drawn with replacement. The residuals are leverage-corrected,
    ``e_i/√(1 − h_i)``, and centred at their median. Each resample is refitted from the estimate.
    Residual resampling fits this use better than case resampling because the ``x`` values are a
    design chosen in advance (sizes or step counts). With 5 to 20 points, a case resample often
    drops the smallest or largest ``x``, and those ends are what determine ``α`` and ``R∞``. The
    price is the assumption that the log residuals are exchangeable, i.e. the same relative noise
    at every ``x`` and independent points.

    ``interval="studentized"`` (default) gives symmetric bootstrap-t intervals on the scale
    ``(R∞, log A, α)``: ``φ̂ ± q·se(φ̂)``, where ``se`` is the linearised standard error
    ``√diag(s²(JᵀJ)⁻¹)`` and ``q`` the ``level`` quantile of ``|φ* − φ̂|/se*`` over the
    resamples. ``"percentile"`` gives the plain percentile intervals of the refits. A simulation
    used the default loss, 16 log-spaced ``x`` over three decades, 5 % log-normal noise, 300
    resamples and 250 repeats. There the nominal 95 % intervals covered the truth in 93–96 % of
    repeats when studentized and in 90–92 % as percentile intervals, depending on the parameter.
    Intervals are cut to ``R∞ ≥ 0`` and to ``alpha_bounds``.

    Args:
        x: positive abscissae, e.g. training-set sizes or step counts, shape (n,). Repeats are allowed.
        r: positive risks at ``x``, e.g. test errors, shape (n,).
        loss: robust loss of ``least_squares``: ``soft_l1`` (default), ``huber``, ``cauchy``,
            ``arctan`` or ``linear`` (plain least squares).
        f_scale: log residual at which the robust loss turns from quadratic to about linear; 0.1
            means that points more than about 10 % off the curve count less than quadratically.
        n_bootstrap: number of bootstrap resamples; 0 skips the intervals (they are NaN).
        level: nominal coverage of the intervals, in (0, 1).
        seed: seed of the resampling.
        interval: ``"studentized"`` (symmetric bootstrap-t) or ``"percentile"``.
        alpha_bounds: ``(low, high)`` search range of ``α`` with ``0 < low < high``.

    Returns:
        The estimates, residual scales and intervals.

    Raises:
        ValueError: ``x`` or ``r`` is not 1-D, the lengths differ or are below 4, ``x`` has fewer
            than 3 distinct values, a value is non-finite, ``x ≤ 0`` or ``r ≤ 0``, or an option is
            invalid.
    """
    x_values, r_values = _validated_curve(x, r)
    _check_options(loss, f_scale, n_bootstrap, level, interval, alpha_bounds)

    log_ref = float(np.mean(np.log(x_values)))
    u = np.log(x_values) - log_ref
    y = np.log(r_values)
    solution = _best_fit(u, y, loss, f_scale, alpha_bounds)
    fitted = _log_model(solution.x, u)
    residuals = y - fitted

    thetas, errors, failed = _residual_bootstrap(
        solution.x, u, fitted, residuals, log_ref, n_bootstrap, seed, loss, f_scale, alpha_bounds
    )
    if n_bootstrap and failed > 0.1 * n_bootstrap:
        logger.warning("power-law fit: %d of %d bootstrap refits did not converge; the intervals use the rest", failed, n_bootstrap)
    estimate = _pivot_parameters(solution.x.reshape(1, -1), log_ref)[0]
    if interval == "studentized":
        bounds = _studentized_intervals(estimate, _standard_errors(solution.x, u, y, log_ref), thetas, errors, log_ref, level)
    else:
        bounds = _percentile_intervals(thetas, log_ref, level)
    # Intervals are cut to the parameter space (R∞ ≥ 0, α within alpha_bounds). A cut interval
    # still covers the truth whenever the uncut one does.
    intervals = {
        "r_inf": (max(bounds[0][0], 0.0), bounds[0][1]),
        "amplitude": (math.exp(bounds[1][0]), math.exp(bounds[1][1])),
        "alpha": (max(bounds[2][0], alpha_bounds[0]), min(bounds[2][1], alpha_bounds[1])),
    }

    r_inf, amplitude, alpha = _natural_parameters(solution.x.reshape(1, -1), log_ref)[0]
    degrees_of_freedom = max(len(y) - _N_PARAMETERS, 1)
    return PowerLawFit(
        r_inf=float(r_inf),
        amplitude=float(amplitude),
        alpha=float(alpha),
        residual_scale=float(_MAD_TO_SIGMA * np.median(np.abs(residuals - np.median(residuals)))),
        residual_rms=float(np.sqrt(np.sum(residuals**2) / degrees_of_freedom)),
        cost=float(solution.cost),
        n_points=int(len(y)),
        x_range=(float(x_values.min()), float(x_values.max())),
        loss=loss,
        f_scale=float(f_scale),
        level=float(level),
        intervals=intervals,
        bootstrap_samples=_natural_parameters(thetas, log_ref),
        failed_resamples=int(failed),
        interval_method=interval,
        alpha_bounds=(float(alpha_bounds[0]), float(alpha_bounds[1])),
    )


def balance_ode_solution(t: Sequence[float] | np.ndarray | float, eps0: float, a: float, alpha: float) -> np.ndarray:
    """Evaluate the closed-form solution of ``dε/dt = −a·ε^{1+1/α}`` with ``ε(0) = eps0``.

    ``ε(t) = (eps0^{−1/α} + (a/α)·t)^{−α}``, so ``ε(t) ≈ (a·t/α)^{−α}`` once ``(a/α)·t ≫ eps0^{−1/α}``.

    Args:
        t: times ``≥ 0`` (steps or sizes read as time), any shape.
        eps0: initial excess risk ``> 0``.
        a: rate ``≥ 0``; 0 keeps ``ε`` constant.
        alpha: exponent ``> 0``.

    Returns:
        ``ε(t)`` with the shape of ``t``.

    Raises:
        ValueError: negative or non-finite ``t``, or an invalid ``eps0``, ``a`` or ``alpha``.
    """
    times = _validated_times(t)
    _check_ode_parameters(eps0, a, alpha)
    # Computed in log space so that eps0^(−1/α) does not overflow for small eps0 and small α.
    base = np.exp(-math.log(eps0) / alpha) + (a / alpha) * times
    return np.exp(-alpha * np.log(base))


def integrate_balance_ode(
    t: Sequence[float] | np.ndarray,
    eps0: float,
    a: float,
    alpha: float,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> np.ndarray:
    """Integrate ``dε/dt = −a·ε^{1+1/α}`` numerically from ``ε(0) = eps0``, to check the closed form.

    ``solve_ivp`` (LSODA) integrates ``y = log ε`` with ``dy/dt = −a·exp(y/α)``, which stays well
    scaled while ``ε`` falls over many decades; ``atol`` therefore bounds the error of ``log ε``.

    Args:
        t: non-decreasing times ``≥ 0``, shape (m,).
        eps0: initial excess risk ``> 0``.
        a: rate ``≥ 0``.
        alpha: exponent ``> 0``.
        rtol: relative tolerance of ``solve_ivp``.
        atol: absolute tolerance of ``solve_ivp`` on ``log ε``.

    Returns:
        ``ε`` at ``t``, shape (m,).

    Raises:
        ValueError: ``t`` not 1-D, empty, decreasing, negative or non-finite, or invalid parameters.
        RuntimeError: the integrator failed; its message is included.
    """
    times = _validated_times(t)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"t must be a non-empty 1-D array, got shape {times.shape}")
    if np.any(np.diff(times) < 0):
        raise ValueError("t must be non-decreasing; sort the times before integrating")
    _check_ode_parameters(eps0, a, alpha)

    def slope(_time: float, state: np.ndarray) -> np.ndarray:
        return -a * np.exp(state / alpha)

    end = float(times[-1])
    if end == 0.0:
        return np.full(times.shape, float(eps0))
    solution = solve_ivp(
        slope, (0.0, end), [math.log(eps0)], method="LSODA", t_eval=times, rtol=rtol, atol=atol
    )
    if not solution.success:
        raise RuntimeError(f"solve_ivp failed on the balance ODE: {solution.message}")
    return np.exp(solution.y[0])


@dataclass(frozen=True)
class BalanceWindow:
    """Sums of the entropy flows over one window of steps ``[start, end]`` (both measured steps)."""

    start: int
    end: int
    steps: int
    injection: float
    dissipation: float
    ratio: float
    net_share: float


@dataclass(frozen=True)
class BalanceCheck:
    """Outcome of :func:`balance_check`.

    Attributes:
        start_step, end_step: the power-law range that was checked (measured steps).
        tolerance: largest ``|ν_w|`` that counts as balanced.
        windows: per-window sums, ratios ``ρ_w`` and net shares ``ν_w``.
        ratio_median: median of ``ρ_w = ΣI / |ΣD|`` over the windows; 1 means exact balance.
        ratio_spread: ``log10(max ρ_w / min ρ_w)``; small means the ratio is stable over the range.
        net_share: ``ν`` of the whole range.
        net_share_max: largest ``|ν_w|`` over the windows.
        balanced_fraction: share of windows with ``|ν_w| ≤ tolerance``.
        balanced: every window is within the tolerance.
        loss_fit: power-law fit of the window-mean loss against ``step + 1`` in the range, or None.
        loss_fit_error: why ``loss_fit`` is None (no loss given, or the fit rejected the data).
        ode_rate: rate ``a = α·A^{−1/α}`` of the balance ODE implied by ``loss_fit``, or NaN.
    """

    start_step: int
    end_step: int
    tolerance: float
    windows: list[BalanceWindow]
    ratio_median: float
    ratio_spread: float
    net_share: float
    net_share_max: float
    balanced_fraction: float
    balanced: bool
    loss_fit: PowerLawFit | None
    loss_fit_error: str | None
    ode_rate: float

    def as_dict(self) -> dict[str, Any]:
        """Return the check as JSON-ready values."""
        return {
            "start_step": self.start_step,
            "end_step": self.end_step,
            "tolerance": self.tolerance,
            "windows": [vars(window).copy() for window in self.windows],
            "ratio_median": self.ratio_median,
            "ratio_spread": self.ratio_spread,
            "net_share": self.net_share,
            "net_share_max": self.net_share_max,
            "balanced_fraction": self.balanced_fraction,
            "balanced": self.balanced,
            "loss_fit": None if self.loss_fit is None else self.loss_fit.as_dict(),
            "loss_fit_error": self.loss_fit_error,
            "ode_rate": self.ode_rate,
        }


def balance_check(
    step: Sequence[float] | np.ndarray,
    injection: Sequence[float] | np.ndarray,
    dissipation: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray | None = None,
    *,
    start_fraction: float = 0.1,
    power_law_range: tuple[int, int] | None = None,
    windows: int = 4,
    tolerance: float = 0.2,
    loss_bins: int = 12,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> BalanceCheck:
    """Test whether information injection and entropy dissipation balance in the power-law range.

    Definition: the range ``[t0, t1]`` is split into ``windows`` consecutive windows of equal width
    in ``log(step + 1)``. In window ``w`` with sums ``I_w = Σ I_t`` and ``D_w = Σ D_t``, the net
    share is ``ν_w = (I_w + D_w) / (I_w + |D_w|)`` in [−1, 1] and the ratio is ``ρ_w = I_w / |D_w|``.
    Injection and dissipation balance in a window when ``|ν_w| ≤ tolerance``, i.e. the net entropy
    flow is small next to the two flows; with ``D_w < 0`` this is ``ρ_w`` within
    ``[(1−τ)/(1+τ), (1+τ)/(1−τ)]``. ``balanced`` requires it in every window, and ``ratio_spread``
    measures how stable ``ρ_w`` is across them. When ``D_w > 0`` both flows raise the entropy and
    ``ν_w = 1``.

    Without ``power_law_range`` the range runs from ``start_fraction`` of the last step to the
    last step, which skips the initial transient. The loss curve, when given, is averaged over
    ``loss_bins`` log-spaced bins of the range and fitted with :func:`fit_power_law` against
    ``step + 1``. A small residual scale of that fit means a power law describes the loss there.

    Args:
        step: step indices ``≥ 0``, shape (n,), increasing.
        injection: ``I_t ≥ 0`` per step, shape (n,); NaN marks an unmeasured step.
        dissipation: ``D_t`` per step, shape (n,); NaN marks an unmeasured step.
        loss: training loss per step, shape (n,), or None to skip the loss fit.
        start_fraction: start of the default range as a share of the last step, in [0, 1).
        power_law_range: explicit ``(t0, t1)`` in steps; overrides ``start_fraction``.
        windows: number of windows, ``≥ 1``.
        tolerance: largest ``|ν_w|`` that counts as balanced, in (0, 1).
        loss_bins: number of log-spaced loss bins for the fit, ``≥ 4``.
        n_bootstrap: bootstrap resamples of the loss fit.
        seed: seed of the loss-fit bootstrap.

    Returns:
        The windows, ratios, net shares and the loss fit.

    Raises:
        ValueError: arrays of different lengths, decreasing or negative steps, an invalid option,
            or fewer measured steps in the range than windows.
    """
    steps = np.asarray(step, dtype=float)
    flows_in = np.asarray(injection, dtype=float)
    flows_out = np.asarray(dissipation, dtype=float)
    losses = None if loss is None else np.asarray(loss, dtype=float)
    for name, values in (("injection", flows_in), ("dissipation", flows_out), ("loss", losses)):
        if values is not None and values.shape != steps.shape:
            raise ValueError(f"{name} has shape {values.shape} but step has shape {steps.shape}; pass one value per step")
    if steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"step must be a non-empty 1-D array, got shape {steps.shape}")
    if not np.all(np.isfinite(steps)) or np.any(steps < 0) or np.any(np.diff(steps) <= 0):
        raise ValueError("step must contain finite, increasing values >= 0")
    if not 0.0 <= start_fraction < 1.0:
        raise ValueError(f"start_fraction must lie in [0, 1), got {start_fraction}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must lie in (0, 1), got {tolerance}")
    if loss_bins < 4:
        raise ValueError(f"loss_bins must be >= 4 (the power-law fit needs 4 points), got {loss_bins}")

    if power_law_range is None:
        first, last = start_fraction * steps[-1], steps[-1]
    else:
        first, last = float(power_law_range[0]), float(power_law_range[1])
        if not 0 <= first < last:
            raise ValueError(f"power_law_range must be (t0, t1) with 0 <= t0 < t1, got {power_law_range}")
    in_range = (steps >= first) & (steps <= last)
    measured = in_range & np.isfinite(flows_in) & np.isfinite(flows_out)
    if int(measured.sum()) < windows:
        raise ValueError(
            f"only {int(measured.sum())} measured steps lie in the range [{first:g}, {last:g}], fewer than "
            f"windows={windows}; lower windows or widen the range"
        )

    edges = np.exp(np.linspace(math.log(first + 1.0), math.log(last + 1.0), windows + 1)) - 1.0
    window_rows = []
    for index in range(windows):
        upper_closed = index == windows - 1
        inside = measured & (steps >= edges[index]) & ((steps <= edges[index + 1]) if upper_closed else (steps < edges[index + 1]))
        if not inside.any():
            continue
        injected = float(flows_in[inside].sum())
        dissipated = float(flows_out[inside].sum())
        window_rows.append(
            BalanceWindow(
                start=int(steps[inside][0]),
                end=int(steps[inside][-1]),
                steps=int(inside.sum()),
                injection=injected,
                dissipation=dissipated,
                ratio=_ratio(injected, dissipated),
                net_share=_net_share(injected, dissipated),
            )
        )

    ratios = np.array([row.ratio for row in window_rows])
    shares = np.array([row.net_share for row in window_rows])
    finite_ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
    spread = float(np.log10(finite_ratios.max() / finite_ratios.min())) if len(finite_ratios) == len(ratios) else math.inf
    within = np.abs(shares) <= tolerance
    loss_fit, loss_fit_error = _fit_loss_curve(steps, losses, in_range, first, last, loss_bins, n_bootstrap, seed)
    ode_rate = math.nan
    if loss_fit is not None and loss_fit.amplitude > 0:
        ode_rate = loss_fit.alpha * loss_fit.amplitude ** (-1.0 / loss_fit.alpha)

    return BalanceCheck(
        start_step=int(steps[measured][0]),
        end_step=int(steps[measured][-1]),
        tolerance=float(tolerance),
        windows=window_rows,
        ratio_median=float(np.median(ratios)),
        ratio_spread=spread,
        net_share=_net_share(float(flows_in[measured].sum()), float(flows_out[measured].sum())),
        net_share_max=float(np.max(np.abs(shares))),
        balanced_fraction=float(np.mean(within)),
        balanced=bool(np.all(within)),
        loss_fit=loss_fit,
        loss_fit_error=loss_fit_error,
        ode_rate=float(ode_rate),
    )


def _ratio(injected: float, dissipated: float) -> float:
    if dissipated == 0.0:
        return math.inf if injected > 0 else math.nan
    return injected / abs(dissipated)


def _net_share(injected: float, dissipated: float) -> float:
    total = abs(injected) + abs(dissipated)
    return (injected + dissipated) / total if total > 0 else math.nan


def _fit_loss_curve(
    steps: np.ndarray,
    losses: np.ndarray | None,
    in_range: np.ndarray,
    first: float,
    last: float,
    bins: int,
    n_bootstrap: int,
    seed: int,
) -> tuple[PowerLawFit | None, str | None]:
    if losses is None:
        return None, "no loss curve given"
    usable = in_range & np.isfinite(losses)
    edges = np.exp(np.linspace(math.log(first + 1.0), math.log(last + 1.0), bins + 1))
    times, means = [], []
    for index in range(bins):
        inside = usable & (steps + 1.0 >= edges[index]) & (steps + 1.0 <= edges[index + 1])
        if inside.any():
            times.append(float(np.mean(steps[inside] + 1.0)))
            means.append(float(np.mean(losses[inside])))
    try:
        return fit_power_law(times, means, n_bootstrap=n_bootstrap, seed=seed), None
    except ValueError as error:
        return None, str(error)


def _validated_curve(x: Any, r: Any) -> tuple[np.ndarray, np.ndarray]:
    x_values = np.asarray(x, dtype=float)
    r_values = np.asarray(r, dtype=float)
    if x_values.ndim != 1 or r_values.ndim != 1:
        raise ValueError(f"x and r must be 1-D arrays, got shapes {x_values.shape} and {r_values.shape}")
    if len(x_values) != len(r_values):
        raise ValueError(f"x and r must have the same length, got {len(x_values)} and {len(r_values)}")
    if len(x_values) < 4:
        raise ValueError(f"the fit needs at least 4 points for 3 parameters, got {len(x_values)}; add sizes or step counts")
    for name, values in (("x", x_values), ("r", r_values)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"{name} must be finite, but {name}[{bad[0]}] = {values[bad[0]]}; drop that point")
    bad_x = np.flatnonzero(x_values <= 0)
    if bad_x.size:
        raise ValueError(f"x must be > 0 (a power of x is fitted), but x[{bad_x[0]}] = {x_values[bad_x[0]]}; drop that point")
    bad_r = np.flatnonzero(r_values <= 0)
    if bad_r.size:
        raise ValueError(
            f"r must be > 0 (the fit is in log space), but r[{bad_r[0]}] = {r_values[bad_r[0]]}; "
            "replace a zero error by a floor such as 0.5/n_test or drop that point"
        )
    if len(np.unique(x_values)) < 3:
        raise ValueError(f"x needs at least 3 distinct values for 3 parameters, got {sorted(set(x_values.tolist()))}")
    return x_values, r_values


def _check_options(
    loss: str, f_scale: float, n_bootstrap: int, level: float, interval: str, alpha_bounds: tuple[float, float]
) -> None:
    if loss not in ROBUST_LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed values: {', '.join(ROBUST_LOSSES)}")
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {interval!r}; allowed values: {', '.join(INTERVAL_METHODS)}")
    if not (math.isfinite(f_scale) and f_scale > 0):
        raise ValueError(f"f_scale must be a finite number > 0 (log units), got {f_scale}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level}")
    low, high = alpha_bounds
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise ValueError(f"alpha_bounds must be (low, high) with 0 < low < high, got {alpha_bounds}")


def _validated_times(t: Any) -> np.ndarray:
    times = np.asarray(t, dtype=float)
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError("t must contain finite values >= 0")
    return times


def _check_ode_parameters(eps0: float, a: float, alpha: float) -> None:
    if not (math.isfinite(eps0) and eps0 > 0):
        raise ValueError(f"eps0 must be a finite number > 0, got {eps0}")
    if not (math.isfinite(a) and a >= 0):
        raise ValueError(f"a must be a finite number >= 0, got {a}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")


# The solver works with θ = (R∞, log B, α) and u = log(x / x_ref), where x_ref is the geometric
# mean of x, so that B = A·x_ref^{−α} is of the order of the data and the Jacobian is well scaled.


def _log_model(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    r_inf, log_b, alpha = theta
    with np.errstate(divide="ignore"):
        log_r_inf = math.log(r_inf) if r_inf > 0 else -math.inf
    return np.logaddexp(log_r_inf, log_b - alpha * u)


def _residuals(theta: np.ndarray, u: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y - _log_model(theta, u)


def _jacobian(theta: np.ndarray, u: np.ndarray, y: np.ndarray) -> np.ndarray:
    r_inf, log_b, alpha = theta
    log_model = _log_model(theta, u)
    power_share = np.exp(log_b - alpha * u - log_model)
    jacobian = np.empty((len(u), _N_PARAMETERS))
    jacobian[:, 0] = -np.exp(-log_model)
    jacobian[:, 1] = -power_share
    jacobian[:, 2] = u * power_share
    return jacobian


def _bounds(y: np.ndarray, alpha_bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    upper_r_inf = math.exp(float(y.min())) * (1.0 - _R_INF_MARGIN)
    lower = np.array([0.0, -np.inf, alpha_bounds[0]])
    upper = np.array([upper_r_inf, np.inf, alpha_bounds[1]])
    return lower, upper


def _starts(u: np.ndarray, y: np.ndarray, alpha_bounds: tuple[float, float]) -> list[np.ndarray]:
    low, high = alpha_bounds
    r_min = math.exp(float(y.min()))
    starts = []
    for share in (0.0, 0.5, 0.9):
        r_inf = share * r_min
        excess = np.log(np.exp(y) - r_inf)
        slope, intercept = np.polyfit(u, excess, 1)
        alpha = float(np.clip(-slope, low, high)) if slope < 0 else float(np.clip(0.5, low, high))
        starts.append(np.array([r_inf, float(intercept), alpha]))
    for alpha in (0.1, 0.5, 1.0, 2.0):
        alpha = float(np.clip(alpha, low, high))
        starts.append(np.array([0.0, float(np.mean(y + alpha * u)), alpha]))
    return starts


def _solve(start: np.ndarray, u: np.ndarray, y: np.ndarray, loss: str, f_scale: float, alpha_bounds: tuple[float, float]) -> Any:
    lower, upper = _bounds(y, alpha_bounds)
    start = np.clip(start, lower, upper)
    return least_squares(
        _residuals,
        start,
        jac=_jacobian,
        bounds=(lower, upper),
        loss=loss,
        f_scale=f_scale,
        x_scale="jac",
        ftol=_SOLVER_TOLERANCE,
        xtol=_SOLVER_TOLERANCE,
        gtol=_SOLVER_TOLERANCE,
        max_nfev=200,
        args=(u, y),
    )


def _best_fit(u: np.ndarray, y: np.ndarray, loss: str, f_scale: float, alpha_bounds: tuple[float, float]) -> Any:
    best = None
    for start in _starts(u, y, alpha_bounds):
        solution = _solve(start, u, y, loss, f_scale, alpha_bounds)
        if best is None or solution.cost < best.cost:
            best = solution
    return best


def _residual_bootstrap(
    theta: np.ndarray,
    u: np.ndarray,
    fitted: np.ndarray,
    residuals: np.ndarray,
    log_ref: float,
    n_bootstrap: int,
    seed: int,
    loss: str,
    f_scale: float,
    alpha_bounds: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Refit resampled curves; return solver parameters (B, 3), standard errors of ``(R∞, log A, α)`` and failures."""
    # Modified residuals e_i/√(1 − h_i) undo the shrinkage by fitting. The leverage h_i of point i
    # comes from the least-squares fit linearised at the estimate and is largest at the ends of x.
    jacobian = _jacobian(theta, u, fitted)
    leverage = np.clip(np.sum(jacobian * np.linalg.pinv(jacobian).T, axis=1), 0.0, 0.99)
    modified = residuals / np.sqrt(1.0 - leverage)
    # Centred at the median, which is what a robust fit aims at, so one outlier does not shift
    # every resampled point.
    pool = modified - np.median(modified)
    rng = np.random.default_rng(seed)
    thetas, errors, failed = [], [], 0
    for _ in range(int(n_bootstrap)):
        y_star = fitted + rng.choice(pool, size=len(pool), replace=True)
        solution = _solve(theta, u, y_star, loss, f_scale, alpha_bounds)
        if solution.status > 0 and np.all(np.isfinite(solution.x)):
            thetas.append(solution.x)
            errors.append(_standard_errors(solution.x, u, y_star, log_ref))
        else:
            failed += 1
    return np.array(thetas).reshape(-1, _N_PARAMETERS), np.array(errors).reshape(-1, _N_PARAMETERS), failed


def _pivot_parameters(theta: np.ndarray, log_ref: float) -> np.ndarray:
    """Convert rows ``(R∞, log B, α)`` to ``(R∞, log A, α)``, the scale on which intervals are formed."""
    pivot = np.array(theta, dtype=float, copy=True).reshape(-1, _N_PARAMETERS)
    pivot[:, 1] = theta[:, 1] + theta[:, 2] * log_ref
    return pivot


def _standard_errors(theta: np.ndarray, u: np.ndarray, y: np.ndarray, log_ref: float) -> np.ndarray:
    """Return the linearised standard errors of ``(R∞, log A, α)``: ``s²(JᵀJ)⁻¹`` with ``s² = Σe²/(n − 3)``."""
    residuals = _residuals(theta, u, y)
    variance = float(np.sum(residuals**2)) / max(len(y) - _N_PARAMETERS, 1)
    jacobian = _jacobian(theta, u, y)
    covariance = variance * np.linalg.pinv(jacobian.T @ jacobian)
    # log A = log B + α·log x_ref is linear in θ, so its covariance follows by the same matrix.
    transform = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, log_ref], [0.0, 0.0, 1.0]])
    covariance = transform @ covariance @ transform.T
    return np.sqrt(np.clip(np.diag(covariance), 0.0, None))


def _studentized_intervals(
    estimate: np.ndarray,
    standard_error: np.ndarray,
    thetas: np.ndarray,
    errors: np.ndarray,
    log_ref: float,
    level: float,
) -> list[tuple[float, float]]:
    """Return symmetric bootstrap-t intervals ``φ̂ ± q·se`` of ``(R∞, log A, α)``.

    ``q`` is the ``level`` quantile of ``|φ* − φ̂|/se*`` over the resamples.
    """
    if len(thetas) == 0:
        return [(math.nan, math.nan)] * _N_PARAMETERS
    pivots = _pivot_parameters(thetas, log_ref)
    bounds = []
    for column in range(_N_PARAMETERS):
        usable = errors[:, column] > 0
        if not usable.any() or standard_error[column] == 0:
            bounds.append((float(estimate[column]), float(estimate[column])))
            continue
        t_values = np.abs(pivots[usable, column] - estimate[column]) / errors[usable, column]
        half_width = float(np.quantile(t_values, level)) * standard_error[column]
        bounds.append((float(estimate[column] - half_width), float(estimate[column] + half_width)))
    return bounds


def _percentile_intervals(thetas: np.ndarray, log_ref: float, level: float) -> list[tuple[float, float]]:
    """Return percentile intervals of ``(R∞, log A, α)`` over the resamples."""
    if len(thetas) == 0:
        return [(math.nan, math.nan)] * _N_PARAMETERS
    tail = (1.0 - level) / 2.0
    pivots = _pivot_parameters(thetas, log_ref)
    low, high = np.quantile(pivots, [tail, 1.0 - tail], axis=0)
    return [(float(a), float(b)) for a, b in zip(low, high)]


def _natural_parameters(theta: np.ndarray, log_ref: float) -> np.ndarray:
    """Convert rows ``(R∞, log B, α)`` to ``(R∞, A, α)`` with ``A = B·x_ref^{α}``."""
    natural = np.array(theta, dtype=float, copy=True).reshape(-1, _N_PARAMETERS)
    natural[:, 1] = np.exp(natural[:, 1] + natural[:, 2] * log_ref)
    return natural
