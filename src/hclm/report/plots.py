"""Draw the comparison plots of an hclm output folder as PNG files.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, so no
display is needed and the pyplot backend of the calling program is left unchanged.
Missing values (null in JSON, empty cells in steps.csv) are read as NaN and left out of
every curve. A panel without any value shows a note in place of a curve.

Each function takes run records as returned by ``hclm.report.load_run_records``: dicts
with ``"result"`` (the parsed result.json) and ``"steps"`` (column name to float array).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hclm._io import atomic_write_bytes
from hclm.report._values import BASELINE
from hclm.report._values import as_float as _as_float

logger = logging.getLogger(__name__)

PLOT_FILES = {
    "relative_strength": "relative_strength.png",
    "volatility_persistence": "volatility_persistence.png",
    "accuracy_rank": "accuracy_rank.png",
    "injection_dissipation": "injection_dissipation.png",
    "control_timeline": "control_timeline.png",
}
"""PNG file name of each plot, keyed by plot name."""

_DPI = 110
_PANEL_INCHES = (5.4, 4.0)
# Minimum figure width in inches, so that a one-panel figure still fits its title.
_MIN_WIDTH_INCHES = 7.0
_MAX_COLUMNS = 3
_BAND_ALPHA = 0.18
_THRESHOLD_STYLE = {"color": "0.35", "linestyle": ":", "linewidth": 1.4}
# Horizontal offset between surrogates on a λ axis, in decades, so error bars at one λ do not overlap.
_DODGE_DECADES = 0.015

SeedCurve = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def plot_relative_strength(
    plot_dir: str | Path,
    records: Mapping[str, Mapping[str, Any]],
    thresholds: Mapping[str, Any],
    surrogate_order: Sequence[str] = (),
) -> Path:
    """Plot the relative strength r_t over training steps, one panel per λ and one line per surrogate.

    Lines are the mean over seeds at each measured step, and the band spans the minimum and
    maximum seed. The y axis is logarithmic, so values of zero or below are left out.

    Args:
        plot_dir: folder that receives ``relative_strength.png``.
        records: run records keyed by run id.
        thresholds: regime thresholds. ``r_min``, when present, is drawn as a horizontal line.
        surrogate_order: surrogates in the order of the legend. Others follow alphabetically.

    Returns:
        Path of the written PNG.
    """
    groups = _group_runs(records)
    lams = sorted({lam for _, lam in groups})
    surrogates = _ordered_surrogates({name for name, _ in groups}, surrogate_order)
    colors = _surrogate_colors(surrogates, surrogate_order)
    r_min = _as_float(thresholds.get("r_min"))

    figure, axes = _new_figure(max(len(lams), 1))
    if not lams:
        _mark_empty(axes[0], "no run with an entropy surrogate")
    for axis, lam in zip(axes, lams):
        drawn = False
        for surrogate in surrogates:
            runs = groups.get((surrogate, lam), [])
            curve = _seed_curve(_step_series(runs, "relative_strength"), positive_only=True)
            if curve is None:
                continue
            _draw_curve(axis, curve, color=colors[surrogate], label=surrogate)
            drawn = True
        if drawn:
            axis.set_yscale("log")
            if r_min > 0:
                axis.axhline(r_min, label=f"r_min = {r_min:g}", **_THRESHOLD_STYLE)
            axis.legend(fontsize="small")
            axis.set_ylabel("relative strength r_t (ratio, log scale)")
        else:
            _mark_empty(axis, "no positive relative strength measured")
            axis.set_ylabel("relative strength r_t (ratio)")
        axis.set_title(f"λ = {lam:.3g}")
        axis.set_xlabel("training step")

    figure.suptitle("Relative strength of the entropy force\n(mean over seeds, band: min–max)")
    return _save(figure, Path(plot_dir) / PLOT_FILES["relative_strength"])


def plot_volatility_persistence(
    plot_dir: str | Path,
    results: Sequence[Mapping[str, Any]],
    records: Mapping[str, Mapping[str, Any]],
    thresholds: Mapping[str, Any],
    surrogate_order: Sequence[str] = (),
) -> Path:
    """Plot volatility and median persistence against λ, one line per surrogate.

    Points are the mean of the per-seed values in each run's ``forces``, with error bars
    from the minimum to the maximum seed. A (surrogate, λ) row of ``results`` without
    per-seed values is drawn from its summary value, without error bars. Surrogates are
    offset slightly along λ so that their error bars stay apart.

    Args:
        plot_dir: folder that receives ``volatility_persistence.png``.
        results: rows of summary.json ``results``, one per (surrogate, λ).
        records: run records keyed by run id.
        thresholds: regime thresholds. ``v_max`` and ``p_min``, when present, are drawn as
            horizontal lines.
        surrogate_order: surrogates in the order of the legend. Others follow alphabetically.

    Returns:
        Path of the written PNG.
    """
    groups = _group_runs(records)
    row_values = _row_values(results, ("volatility", "persistence_median"))
    keys = {key for key in set(groups) | set(row_values) if key[0] != BASELINE}
    surrogates = _ordered_surrogates({name for name, _ in keys}, surrogate_order)
    colors = _surrogate_colors(surrogates, surrogate_order)

    panels = (
        ("volatility", "volatility", "v_max"),
        ("persistence_median", "median persistence", "p_min"),
    )
    figure, axes = _new_figure(len(panels))
    for axis, (field, label, threshold_name) in zip(axes, panels):
        drawn = False
        for index, surrogate in enumerate(surrogates):
            lams = sorted({lam for name, lam in keys if name == surrogate and lam > 0})
            points = []
            for lam in lams:
                seed_values = [_force_value(run, field) for run in groups.get((surrogate, lam), [])]
                summary_value = row_values.get((surrogate, lam), {}).get(field)
                points.append(_mean_and_range(seed_values, fallback=summary_value))
            dodge = _dodge(index, len(surrogates))
            drawn |= _draw_points(axis, lams, points, color=colors[surrogate], label=surrogate, dodge=dodge)
        threshold = _as_float(thresholds.get(threshold_name))
        if math.isfinite(threshold):
            axis.axhline(threshold, label=f"{threshold_name} = {threshold:g}", **_THRESHOLD_STYLE)
        if drawn:
            axis.set_xscale("log")
            axis.legend(fontsize="small")
            axis.set_xlabel("λ (regularizer weight, log scale)")
        else:
            _mark_empty(axis, f"no {label} measured")
            axis.set_xlabel("λ (regularizer weight)")
        axis.set_title(label.capitalize())
        axis.set_ylabel(label)

    figure.suptitle("Volatility and persistence against λ\n(mean over seeds, bars: min–max)")
    return _save(figure, Path(plot_dir) / PLOT_FILES["volatility_persistence"])


def plot_accuracy_rank(
    plot_dir: str | Path,
    results: Sequence[Mapping[str, Any]],
    surrogate_order: Sequence[str] = (),
) -> Path:
    """Plot test accuracy, linear-probe accuracy and effective rank against λ per surrogate.

    Points are the seed mean with ± one seed standard deviation as error bars, both taken from
    the summary rows. Surrogates are offset slightly along λ so that their error bars stay
    apart. The ``none`` baseline is a horizontal line with its ± std band.

    Args:
        plot_dir: folder that receives ``accuracy_rank.png``.
        results: rows of summary.json ``results``, one per (surrogate, λ).
        surrogate_order: surrogates in the order of the legend. Others follow alphabetically.

    Returns:
        Path of the written PNG.
    """
    panels = (
        ("test_accuracy", "test accuracy"),
        ("probe_accuracy", "linear-probe accuracy"),
        ("effective_rank", "effective rank"),
    )
    fields = tuple(f"{metric}_{statistic}" for metric, _ in panels for statistic in ("mean", "std"))
    row_values = _row_values(results, fields)
    baseline_rows = [row for row in results if row.get("surrogate") == BASELINE]
    baseline = baseline_rows[0] if baseline_rows else {}
    surrogates = _ordered_surrogates({name for name, _ in row_values if name != BASELINE}, surrogate_order)
    colors = _surrogate_colors(surrogates, surrogate_order)

    figure, axes = _new_figure(len(panels))
    for axis, (metric, label) in zip(axes, panels):
        drawn = False
        for index, surrogate in enumerate(surrogates):
            lams = sorted(lam for name, lam in row_values if name == surrogate and lam > 0)
            points = []
            for lam in lams:
                values = row_values[(surrogate, lam)]
                mean = values[f"{metric}_mean"]
                spread = values[f"{metric}_std"] if math.isfinite(values[f"{metric}_std"]) else 0.0
                points.append((mean, mean - spread, mean + spread))
            dodge = _dodge(index, len(surrogates))
            drawn |= _draw_points(axis, lams, points, color=colors[surrogate], label=surrogate, dodge=dodge)
        baseline_drawn = _draw_baseline(axis, baseline, metric)
        if drawn:
            axis.set_xscale("log")
            axis.set_xlabel("λ (regularizer weight, log scale)")
        else:
            axis.set_xlabel("λ (regularizer weight)")
        if drawn or baseline_drawn:
            axis.legend(fontsize="small")
        else:
            _mark_empty(axis, f"no {label} recorded")
        axis.set_title(label.capitalize())
        axis.set_ylabel(label)

    figure.suptitle("Accuracy and effective rank against λ\n(mean ± std over seeds)")
    return _save(figure, Path(plot_dir) / PLOT_FILES["accuracy_rank"])


def plot_injection_dissipation(
    plot_dir: str | Path,
    records: Mapping[str, Mapping[str, Any]],
    surrogate_order: Sequence[str] = (),
) -> Path:
    """Plot cumulative information injection Σ I_t and entropy dissipation Σ D_t over steps.

    Each surrogate gets a panel with one color per λ: solid lines are injection, dashed lines
    are dissipation. Sums run over the measured steps of each run, and lines are the mean
    over seeds with a min–max band. A diverged run stops early, so later steps average
    over fewer seeds.

    Args:
        plot_dir: folder that receives ``injection_dissipation.png``.
        records: run records keyed by run id.
        surrogate_order: surrogates in panel order. Others follow alphabetically.

    Returns:
        Path of the written PNG.
    """
    groups = _group_runs(records)
    surrogates = _ordered_surrogates({name for name, _ in groups}, surrogate_order)

    figure, axes = _new_figure(max(len(surrogates), 1))
    if not surrogates:
        _mark_empty(axes[0], "no run with an entropy surrogate")
    for axis, surrogate in zip(axes, surrogates):
        lams = sorted(lam for name, lam in groups if name == surrogate)
        palette = colormaps["viridis"](np.linspace(0.0, 0.85, max(len(lams), 1)))
        handles = []
        for lam, color in zip(lams, palette):
            runs = groups[(surrogate, lam)]
            injection = _seed_curve(_cumulative_series(runs, "injection"))
            dissipation = _seed_curve(_cumulative_series(runs, "dissipation"))
            if injection is not None:
                _draw_curve(axis, injection, color=color)
            if dissipation is not None:
                _draw_curve(axis, dissipation, color=color, linestyle="--")
            if injection is not None or dissipation is not None:
                handles.append(Line2D([], [], color=color, label=f"λ = {lam:.3g}"))
        if handles:
            handles.append(Line2D([], [], color="black", label="injection Σ I_t"))
            handles.append(Line2D([], [], color="black", linestyle="--", label="dissipation Σ D_t"))
            axis.legend(handles=handles, fontsize="small")
        else:
            _mark_empty(axis, "no injection or dissipation measured")
        axis.set_title(surrogate)
        axis.set_xlabel("training step")
        # Totals differ by orders of magnitude across λ; symlog keeps the small ones visible.
        axis.set_yscale("symlog", linthresh=1e-3)
        axis.set_ylabel("cumulative Σ over measured steps (nats, symlog)")

    figure.suptitle("Cumulative information injection and entropy dissipation\n(mean over seeds, band: min–max)")
    return _save(figure, Path(plot_dir) / PLOT_FILES["injection_dissipation"])


def has_control_activity(records: Mapping[str, Mapping[str, Any]]) -> bool:
    """Return True when some run changed λ during training or received live feedback."""
    for record in records.values():
        result = record.get("result") or {}
        if result.get("feedback_events") or result.get("control") not in (None, "constant"):
            return True
    return False


def plot_control_timeline(
    plot_dir: str | Path,
    records: Mapping[str, Mapping[str, Any]],
    band: Sequence[float] | None = None,
    surrogate_order: Sequence[str] = (),
) -> Path:
    """Plot λ_t and the relative strength r_t over steps, one panel per surrogate, with feedback marks.

    Each run of the first seed is one pair of lines: λ_t (solid, left axis) and r_t (dotted,
    right axis), colored by its starting λ. A PI controller's target band is shaded on the r_t
    axis. Accepted live-feedback changes are vertical dashed lines, rejected ones dotted grey.

    Args:
        plot_dir: folder that receives ``control_timeline.png``.
        records: run records keyed by run id.
        band: target band (low, high) of the relative strength, or None.
        surrogate_order: surrogates in panel order. Others follow alphabetically.

    Returns:
        Path of the written PNG.
    """
    groups = _group_runs(records)
    surrogates = _ordered_surrogates({name for name, _ in groups}, surrogate_order)
    figure, axes = _new_figure(max(len(surrogates), 1))
    if not surrogates:
        _mark_empty(axes[0], "no run with an entropy surrogate")
    for axis, surrogate in zip(axes, surrogates):
        lams = sorted(lam for name, lam in groups if name == surrogate)
        palette = colormaps["viridis"](np.linspace(0.0, 0.85, max(len(lams), 1)))
        strength_axis = axis.twinx()
        for lam, color in zip(lams, palette):
            runs = sorted(groups[(surrogate, lam)], key=lambda run: _as_float((run.get("result") or {}).get("seed")))
            run = runs[0]
            steps, lam_values = _step_values(run, "lam")
            _, strengths = _step_values(run, "relative_strength")
            keep = np.isfinite(steps) & np.isfinite(lam_values) & (lam_values > 0)
            axis.plot(steps[keep], lam_values[keep], color=color, label=f"λ₀ = {lam:.3g}")
            measured = np.isfinite(steps) & np.isfinite(strengths) & (strengths > 0)
            strength_axis.plot(steps[measured], strengths[measured], color=color, linestyle=":", linewidth=1.0)
            for event in (run.get("result") or {}).get("feedback_events") or []:
                step = _as_float(event.get("step"))
                if math.isfinite(step):
                    accepted = bool(event.get("accepted"))
                    axis.axvline(
                        step,
                        color=color if accepted else "0.6",
                        linestyle="--" if accepted else ":",
                        linewidth=1.2,
                    )
        if band is not None and len(band) == 2:
            strength_axis.axhspan(float(band[0]), float(band[1]), color="tab:green", alpha=0.1, linewidth=0)
        axis.set_yscale("log")
        strength_axis.set_yscale("log")
        axis.set_title(surrogate)
        axis.set_xlabel("training step")
        axis.set_ylabel("λ_t (solid, log scale)")
        strength_axis.set_ylabel("relative strength r_t (dotted, log scale)")
        axis.legend(fontsize="small", loc="upper right")

    figure.suptitle("Weight λ_t and relative strength r_t over training (first seed; dashed lines: live feedback)")
    return _save(figure, Path(plot_dir) / PLOT_FILES["control_timeline"])


def _lam_key(value: Any) -> float:
    """Round λ to 6 significant digits so that values read from JSON and CSV group together."""
    lam = _as_float(value)
    return float(f"{lam:.6g}") if math.isfinite(lam) else lam


def _ordered_surrogates(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    present = set(names)
    ordered = [name for name in dict.fromkeys(preferred) if name in present]
    return ordered + sorted(present - set(ordered))


def _surrogate_colors(surrogates: Sequence[str], preferred: Sequence[str]) -> dict[str, Any]:
    """Assign tab10 colors by position in ``preferred`` without the baseline, so colors match across plots."""
    palette = colormaps["tab10"]
    ranked = [name for name in dict.fromkeys(preferred) if name != BASELINE]
    ranked += sorted(set(surrogates) - set(ranked))
    position = {name: index for index, name in enumerate(ranked)}
    return {name: palette(position[name] % palette.N) for name in surrogates}


def _dodge(index: int, count: int) -> float:
    """Return the multiplicative λ offset of the ``index``-th of ``count`` surrogates."""
    return 10 ** (_DODGE_DECADES * (index - (count - 1) / 2))


def _group_runs(records: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, float], list[Mapping[str, Any]]]:
    """Group the records of regularized runs by (surrogate, λ). Baseline runs and non-finite λ are left out."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run_id, record in records.items():
        result = record.get("result") or {}
        surrogate = result.get("surrogate")
        if not isinstance(surrogate, str) or surrogate == BASELINE:
            continue
        lam = _lam_key(result.get("lam"))
        if not math.isfinite(lam):
            # load_run_records already logged a warning for this run.
            logger.debug("left run %s out of the plots because its lam is not finite", run_id)
            continue
        groups.setdefault((surrogate, lam), []).append(record)
    return groups


def _row_values(
    results: Sequence[Mapping[str, Any]],
    fields: Sequence[str],
) -> dict[tuple[str, float], dict[str, float]]:
    """Return the named fields of each summary row as floats, keyed by (surrogate, λ)."""
    values: dict[tuple[str, float], dict[str, float]] = {}
    for row in results:
        surrogate = row.get("surrogate")
        lam = _lam_key(row.get("lam"))
        if not isinstance(surrogate, str) or not math.isfinite(lam):
            continue
        values[(surrogate, lam)] = {field: _as_float(row.get(field)) for field in fields}
    return values


def _force_value(record: Mapping[str, Any], field: str) -> float:
    forces = (record.get("result") or {}).get("forces")
    return _as_float(forces.get(field)) if isinstance(forces, Mapping) else math.nan


def _step_values(record: Mapping[str, Any], column: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (step, value) arrays of one steps.csv column. The row index replaces a missing step column."""
    steps = record.get("steps") or {}
    values = np.asarray(steps.get(column, np.empty(0)), dtype=float)
    x = steps.get("step")
    x = np.arange(values.size, dtype=float) if x is None else np.asarray(x, dtype=float)
    if x.size != values.size:
        size = min(x.size, values.size)
        x, values = x[:size], values[:size]
    return x, values


def _step_series(runs: Iterable[Mapping[str, Any]], column: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_step_values(run, column) for run in runs]


def _cumulative_series(runs: Iterable[Mapping[str, Any]], column: str) -> list[tuple[np.ndarray, np.ndarray]]:
    series = []
    for run in runs:
        x, values = _step_values(run, column)
        measured = np.isfinite(x) & np.isfinite(values)
        series.append((x[measured], np.cumsum(values[measured])))
    return series


def _seed_curve(series: Sequence[tuple[np.ndarray, np.ndarray]], positive_only: bool = False) -> SeedCurve | None:
    """Align per-seed (step, value) series on their union of steps.

    Returns:
        (steps, mean, minimum, maximum) over the seeds measured at each step, or None when
        no series has a usable value. Every returned step has at least one seed, so the
        NaN-aware reductions never see an all-NaN column.
    """
    cleaned = []
    for x, y in series:
        keep = np.isfinite(x) & np.isfinite(y)
        if positive_only:
            keep &= y > 0
        if keep.any():
            cleaned.append((x[keep], y[keep]))
    if not cleaned:
        return None

    steps = np.unique(np.concatenate([x for x, _ in cleaned]))
    table = np.full((len(cleaned), steps.size), np.nan)
    for row, (x, y) in enumerate(cleaned):
        table[row, np.searchsorted(steps, x)] = y
    return steps, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def _mean_and_range(values: Sequence[float], fallback: Any = None) -> tuple[float, float, float]:
    """Return (mean, minimum, maximum) of the finite values, or the fallback three times when there are none."""
    finite = np.asarray([value for value in values if math.isfinite(value)], dtype=float)
    if finite.size == 0:
        value = _as_float(fallback)
        return value, value, value
    return float(finite.mean()), float(finite.min()), float(finite.max())


def _draw_curve(axis: Axes, curve: SeedCurve, color: Any, label: str | None = None, linestyle: str = "-") -> None:
    steps, mean, low, high = curve
    axis.plot(steps, mean, color=color, linestyle=linestyle, linewidth=1.6, label=label)
    if steps.size > 1:
        axis.fill_between(steps, low, high, color=color, alpha=_BAND_ALPHA, linewidth=0)
    else:
        axis.errorbar(steps, mean, yerr=[mean - low, high - mean], color=color, fmt="o", capsize=3)


def _draw_points(
    axis: Axes,
    lams: Sequence[float],
    points: Sequence[tuple[float, float, float]],
    color: Any,
    label: str,
    dodge: float = 1.0,
) -> bool:
    """Draw (mean, low, high) points against λ × ``dodge`` with error bars. Return whether any point was finite."""
    data = [(lam * dodge, *point) for lam, point in zip(lams, points) if all(math.isfinite(value) for value in point)]
    if not data:
        return False
    x, mean, low, high = (np.asarray(column, dtype=float) for column in zip(*data))
    axis.errorbar(x, mean, yerr=[mean - low, high - mean], color=color, marker="o", capsize=3, label=label)
    return True


def _draw_baseline(axis: Axes, baseline: Mapping[str, Any], metric: str) -> bool:
    mean = _as_float(baseline.get(f"{metric}_mean"))
    if not math.isfinite(mean):
        return False
    spread = _as_float(baseline.get(f"{metric}_std"))
    axis.axhline(mean, color="black", linestyle="--", linewidth=1.2, label=f"{BASELINE} (mean ± std)")
    if math.isfinite(spread) and spread > 0:
        axis.axhspan(mean - spread, mean + spread, color="black", alpha=0.08, linewidth=0)
    return True


def _mark_empty(axis: Axes, message: str) -> None:
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes, color="0.4")


def _new_figure(panels: int) -> tuple[Figure, list[Axes]]:
    columns = min(panels, _MAX_COLUMNS)
    rows = math.ceil(panels / columns)
    width = max(_PANEL_INCHES[0] * columns, _MIN_WIDTH_INCHES)
    figure = Figure(figsize=(width, _PANEL_INCHES[1] * rows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    axes = [axis for row in grid for axis in row]
    for axis in axes[panels:]:
        axis.set_visible(False)
    for axis in axes[:panels]:
        axis.grid(True, which="major", alpha=0.3)
    return figure, axes[:panels]


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    # Dropping the Software entry keeps the PNG free of the matplotlib URL and version.
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote plot %s", path)
    return path
