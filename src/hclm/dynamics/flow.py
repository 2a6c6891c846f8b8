"""Entropy flow of real runs: injection, dissipation, realized change and their balance.

The force probe writes, per measured step, ``I_t = η·λ‖∇_θH‖²``, ``D_t = η·⟨∇_θH, F_L⟩`` and the
realized ``ΔH_t``. This module sums them over a run, plots them, and measures how the residual
``ΔH_t − (I_t + D_t)`` scales with the step size ``η``.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from hclm._io import atomic_write_bytes
from hclm.forces.probe import ForceProbe, ForceRecord
from hclm.surrogates import get_surrogate

logger = logging.getLogger(__name__)

FLOW_COLUMNS = ("step", "injection", "dissipation", "delta_h")
"""Columns that a flow source must provide; ``residual`` is recomputed from them."""

FlowSource = Union[str, os.PathLike, Sequence[Union[ForceRecord, Mapping[str, Any]]], Mapping[str, Sequence[float]]]
"""A steps.csv path, a sequence of records (``ForceRecord`` or dicts), or a dict of columns."""

_DPI = 110


@dataclass(frozen=True)
class EntropyFlow:
    """Per-step and cumulative entropy flow over the measured steps of one run.

    Only steps with a finite injection and dissipation are kept (the probe leaves the other
    steps empty). ``delta_h`` and ``residual`` are NaN on steps whose realized change was not
    recorded. The running sums of ``delta_h`` and ``residual`` skip those steps, so the running
    sums of injection and dissipation can cover more steps than the running sum of ``delta_h``.

    Attributes:
        steps: training step of each kept row, shape (m,).
        injection: ``I_t`` per step, in nats.
        dissipation: ``D_t`` per step, in nats.
        delta_h: realized ``ΔH_t`` per step, in nats.
        residual: ``ΔH_t − (I_t + D_t)`` per step, in nats.
        cumulative_injection: running sum of ``I_t``.
        cumulative_dissipation: running sum of ``D_t``.
        cumulative_delta_h: running sum of the recorded ``ΔH_t``.
        cumulative_residual: running sum of the recorded residuals.
    """

    steps: np.ndarray
    injection: np.ndarray
    dissipation: np.ndarray
    delta_h: np.ndarray
    residual: np.ndarray
    cumulative_injection: np.ndarray
    cumulative_dissipation: np.ndarray
    cumulative_delta_h: np.ndarray
    cumulative_residual: np.ndarray

    def balance(self) -> dict[str, float | int]:
        """Sum the flow over the steps whose realized change was recorded.

        On those steps ``delta_h = injection + dissipation + residual`` is exact up to rounding, so
        the totals show which share of the entropy change the first-order terms explain.

        Returns:
            ``measured_steps``, ``realized_steps``, the totals ``injection``, ``dissipation``,
            ``predicted`` (``I + D``), ``delta_h`` and ``residual``, and
            ``relative_residual = Σ|residual_t| / Σ|ΔH_t|`` (NaN when no step was recorded or
            every ``ΔH_t`` is zero).
        """
        realized = np.isfinite(self.delta_h)
        injection = float(self.injection[realized].sum())
        dissipation = float(self.dissipation[realized].sum())
        delta_h = float(self.delta_h[realized].sum())
        residual = float(self.residual[realized].sum())
        change = float(np.abs(self.delta_h[realized]).sum())
        relative = float(np.abs(self.residual[realized]).sum()) / change if change > 0 else math.nan
        return {
            "measured_steps": int(self.steps.size),
            "realized_steps": int(realized.sum()),
            "injection": injection,
            "dissipation": dissipation,
            "predicted": injection + dissipation,
            "delta_h": delta_h,
            "residual": residual,
            "relative_residual": relative,
        }


@dataclass(frozen=True)
class ResidualScaling:
    """Residual of one plain-SGD step against the step size, with a log-log fit.

    Attributes:
        etas: step sizes ``η``, shape (k,).
        injection: ``I`` of the step at each ``η``.
        dissipation: ``D`` of the step at each ``η``.
        delta_h: realized ``ΔH`` at each ``η``.
        residual: ``ΔH − (I + D)`` at each ``η`` (signed).
        slope: slope of ``log|residual|`` against ``log η``; 2 for a smooth surrogate.
        intercept: intercept of that fit, so ``|residual| ≈ exp(intercept)·η^slope``.
    """

    etas: np.ndarray
    injection: np.ndarray
    dissipation: np.ndarray
    delta_h: np.ndarray
    residual: np.ndarray
    slope: float
    intercept: float

    def as_dict(self) -> dict[str, Any]:
        """Return the arrays as lists and the fit as floats, ready for JSON."""
        return {
            "etas": self.etas.tolist(),
            "injection": self.injection.tolist(),
            "dissipation": self.dissipation.tolist(),
            "delta_h": self.delta_h.tolist(),
            "residual": self.residual.tolist(),
            "slope": self.slope,
            "intercept": self.intercept,
        }


def entropy_flow(source: FlowSource) -> EntropyFlow:
    """Compute the per-step and cumulative entropy flow of one run.

    The residual is recomputed as ``ΔH_t − (I_t + D_t)`` from the other three columns, so a
    stored residual column is not needed.

    NOTE: with a probe schedule that skips steps, the sums cover the measured steps only, and
    ``cumulative_delta_h`` is then not the entropy change of the whole run.

    Args:
        source: a ``steps.csv`` path (as written by ``hclm.experiments.runner.write_run``), a
            sequence of ``ForceRecord`` or dicts with the keys of :data:`FLOW_COLUMNS`, or a dict
            mapping those column names to equally long sequences.

    Returns:
        The flow over the measured steps, in step order.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: a column is missing, a value is not a number, the columns differ in length,
            or no step has a finite injection and dissipation.
    """
    columns = _read_columns(source)
    measured = np.isfinite(columns["injection"]) & np.isfinite(columns["dissipation"]) & np.isfinite(columns["step"])
    if not measured.any():
        raise ValueError(
            f"{_describe(source)} has no step with a finite injection and dissipation; "
            "record the run with a ForceProbe on an entropy surrogate (lam > 0)"
        )
    order = np.argsort(columns["step"][measured], kind="stable")
    steps = columns["step"][measured][order]
    injection = columns["injection"][measured][order]
    dissipation = columns["dissipation"][measured][order]
    delta_h = columns["delta_h"][measured][order]
    residual = delta_h - (injection + dissipation)

    return EntropyFlow(
        steps=steps,
        injection=injection,
        dissipation=dissipation,
        delta_h=delta_h,
        residual=residual,
        cumulative_injection=np.cumsum(injection),
        cumulative_dissipation=np.cumsum(dissipation),
        cumulative_delta_h=np.nancumsum(delta_h),
        cumulative_residual=np.nancumsum(residual),
    )


def plot_entropy_flow(records_by_label: Mapping[str, FlowSource | EntropyFlow], path: str | os.PathLike) -> Path:
    """Plot the entropy flow of one or more runs into a PNG with three panels.

    The panels are the realized ``ΔH_t`` against the first-order prediction ``I_t + D_t`` per
    step (with the line ``ΔH = I + D``), the running sums of ``I``, ``D`` and ``ΔH`` over steps,
    and ``|ΔH_t − (I_t + D_t)|`` per step on a log scale, next to ``|ΔH_t|`` for scale.

    Args:
        records_by_label: one flow source (see :func:`entropy_flow`) or ``EntropyFlow`` per
            legend label.
        path: PNG file to write; its folder is created if needed.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: ``records_by_label`` is empty or a source is invalid.
    """
    if not records_by_label:
        raise ValueError("records_by_label is empty; pass at least one run, e.g. {'logdet': 'runs/x/steps.csv'}")
    flows = {
        label: source if isinstance(source, EntropyFlow) else entropy_flow(source)
        for label, source in records_by_label.items()
    }
    palette = colormaps["tab10"]
    figure = Figure(figsize=(16.2, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    scatter_axis, cumulative_axis, residual_axis = figure.subplots(1, 3)
    for axis in (scatter_axis, cumulative_axis, residual_axis):
        axis.grid(True, alpha=0.3)

    bounds: list[float] = []
    for index, (label, flow) in enumerate(flows.items()):
        color = palette(index % 10)
        predicted = flow.injection + flow.dissipation
        realized = np.isfinite(flow.delta_h)
        scatter_axis.scatter(predicted[realized], flow.delta_h[realized], s=9, color=color, alpha=0.7, label=label)
        bounds += [float(np.min(predicted[realized], initial=0.0)), float(np.max(predicted[realized], initial=0.0))]

        cumulative_axis.plot(flow.steps, flow.cumulative_injection, color=color, linestyle="-", label=f"{label}: Σ I")
        cumulative_axis.plot(flow.steps, flow.cumulative_dissipation, color=color, linestyle="--", label=f"{label}: Σ D")
        if realized.any():
            cumulative_axis.plot(flow.steps, flow.cumulative_delta_h, color=color, linestyle=":", label=f"{label}: Σ ΔH")

        positive = realized & (np.abs(flow.residual) > 0)
        residual_axis.plot(
            flow.steps[positive], np.abs(flow.residual[positive]), color=color, linewidth=1.0, label=f"{label}: |ΔH − (I+D)|"
        )
        change = realized & (np.abs(flow.delta_h) > 0)
        residual_axis.plot(
            flow.steps[change], np.abs(flow.delta_h[change]), color=color, linewidth=0.8, alpha=0.45, linestyle=":",
            label=f"{label}: |ΔH|",
        )

    low, high = min(bounds, default=0.0), max(bounds, default=0.0)
    scatter_axis.plot([low, high], [low, high], color="0.3", linestyle=":", linewidth=1.2, label="ΔH = I + D")
    scatter_axis.set_xlabel("first-order prediction I_t + D_t (nats)")
    scatter_axis.set_ylabel("realized ΔH_t (nats)")
    scatter_axis.set_title("Per step: realized vs predicted")
    scatter_axis.legend(fontsize="small")

    cumulative_axis.axhline(0.0, color="0.5", linewidth=0.8)
    cumulative_axis.set_xlabel("training step")
    cumulative_axis.set_ylabel("running sum (nats)")
    cumulative_axis.set_title("Cumulative injection, dissipation, ΔH")
    cumulative_axis.legend(fontsize="x-small", ncol=max(1, len(flows) // 3))

    if residual_axis.lines:
        residual_axis.set_yscale("log")
        residual_axis.legend(fontsize="x-small")
    else:
        residual_axis.text(0.5, 0.5, "no realized ΔH recorded", ha="center", va="center", transform=residual_axis.transAxes)
    residual_axis.set_xlabel("training step")
    residual_axis.set_ylabel("nats (log scale)")
    residual_axis.set_title("Second-order residual per step")

    figure.suptitle("Entropy flow: ΔH = I + D + O(η²)")
    return _save_png(figure, Path(path))


def residual_scaling(
    model_factory: Callable[[], nn.Module],
    batch: tuple[torch.Tensor, torch.Tensor],
    lam: float,
    etas: Sequence[float],
    surrogate: str | Callable[[torch.Tensor], torch.Tensor],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> ResidualScaling:
    """Measure ``|ΔH − (I + D)|`` of one plain-SGD step for each step size ``η`` and fit its power.

    Each step starts from a copy of the same model, takes ``θ ← θ − η∇(L − λH)`` on ``batch``,
    and records ``I``, ``D`` and the realized ``ΔH`` with a :class:`ForceProbe`. By Taylor's
    theorem ``ΔH = η⟨∇H, −∇J⟩ + ½η²·∇Jᵀ∇²H∇J + O(η³)`` and ``I + D`` is the first term, so the
    fitted slope of ``log|residual|`` against ``log η`` is 2 when ``H`` is twice differentiable
    and ``η`` is small enough that the ``O(η³)`` term is negligible.

    The residual must stay well above the rounding error of ``ΔH`` (about ``|H|`` times the
    unit roundoff of the model's dtype), so use float64 models for small ``η``.

    Args:
        model_factory: builds the model once. Calling the model on the inputs must return
            ``(z, output)``: the representations passed to the surrogate and the output passed
            to ``loss_fn``.
        batch: ``(inputs, targets)``.
        lam: weight ``λ ≥ 0`` of the entropy term.
        etas: at least two distinct step sizes ``η > 0``.
        surrogate: a registered surrogate name (with default parameters) or a callable
            ``z -> scalar``.
        loss_fn: ``loss_fn(output, targets) -> scalar``; cross-entropy by default.

    Returns:
        The per-``η`` flow terms and the least-squares fit of ``log|residual|`` on ``log η``.

    Raises:
        ValueError: fewer than two distinct step sizes, a step size that is not a finite
            positive number, an invalid ``lam``, or a residual that is exactly zero. That happens when
            ``H`` does not change with the step or is linear along it, and then ``log|residual|``
            is undefined.
    """
    rates = np.asarray(etas, dtype=np.float64)
    if rates.ndim != 1 or rates.size < 2 or np.unique(rates).size != rates.size:
        raise ValueError(f"etas must contain at least two distinct step sizes, got {list(etas)}")
    if not np.all(np.isfinite(rates) & (rates > 0)):
        raise ValueError(f"every step size in etas must be a finite number > 0, got {list(etas)}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    entropy_of = get_surrogate(surrogate) if isinstance(surrogate, str) else surrogate
    inputs, targets = batch
    initial = model_factory()

    rows = []
    for eta in rates:
        model = copy.deepcopy(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=float(eta))
        probe = ForceProbe(optimizer=optimizer, schedule=1)
        optimizer.zero_grad(set_to_none=True)
        z, output = model(inputs)
        probe.backward(loss_fn(output, targets), entropy_of(z), lam=lam, step=0)
        optimizer.step()
        with torch.no_grad():
            z_after, _ = model(inputs)
            record = probe.record_realized(entropy_of(z_after))
        rows.append((record.injection, record.dissipation, record.delta_h, record.residual))
        logger.debug("eta %.3g: I %.3g, D %.3g, dH %.3g, residual %.3g", eta, *rows[-1])

    injection, dissipation, delta_h, residual = (np.array(column, dtype=np.float64) for column in zip(*rows))
    magnitude = np.abs(residual)
    if not np.all(magnitude > 0):
        zero = float(rates[int(np.argmin(magnitude))])
        raise ValueError(
            f"the residual is exactly 0 at eta = {zero:g}, so log|residual| is undefined; "
            "check that the surrogate depends on the parameters and that lam > 0 or the loss moves z"
        )
    slope, intercept = np.polyfit(np.log(rates), np.log(magnitude), 1)
    logger.info("residual scaling over %d step sizes: slope %.3f", rates.size, slope)
    return ResidualScaling(
        etas=rates,
        injection=injection,
        dissipation=dissipation,
        delta_h=delta_h,
        residual=residual,
        slope=float(slope),
        intercept=float(intercept),
    )


class EncoderWithHead(nn.Module):
    """An encoder and a head whose ``forward(x)`` returns ``(z, head(z))``, as :func:`residual_scaling` expects."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the representations and the head output."""
        z = self.encoder(x)
        return z, self.head(z)


def _read_columns(source: FlowSource) -> dict[str, np.ndarray]:
    if isinstance(source, (str, os.PathLike)):
        return _read_csv(Path(source))
    if isinstance(source, Mapping):
        return _columns_from_mapping(source, _describe(source))
    rows = [record.as_dict() if isinstance(record, ForceRecord) else record for record in source]
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"record {index} is a {type(row).__name__}; pass ForceRecord objects or dicts")
    columns: dict[str, list[Any]] = {}
    for name in FLOW_COLUMNS:
        missing = [index for index, row in enumerate(rows) if name not in row]
        if missing:
            raise ValueError(f"record {missing[0]} has no key {name!r}; each record needs {', '.join(FLOW_COLUMNS)}")
        columns[name] = [row[name] for row in rows]
    return _columns_from_mapping(columns, "records")


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"steps file not found: {path}; pass the steps.csv of a finished run")
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        missing = [name for name in FLOW_COLUMNS if name not in header]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}; columns are {header}")
        columns: dict[str, list[Any]] = {name: [] for name in FLOW_COLUMNS}
        for row in reader:
            for name in FLOW_COLUMNS:
                columns[name].append(row[name])
    return _columns_from_mapping(columns, str(path))


def _columns_from_mapping(columns: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
    arrays = {}
    for name in FLOW_COLUMNS:
        if name not in columns:
            raise ValueError(f"{source} has no column {name!r}; it needs {', '.join(FLOW_COLUMNS)}")
        arrays[name] = np.array([_as_number(value, name, source) for value in columns[name]], dtype=np.float64)
    lengths = {name: array.size for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{source} has columns of different lengths: {lengths}")
    return arrays


def _as_number(value: Any, column: str, source: str) -> float:
    """Convert a cell to float. None and empty strings, which mark unmeasured steps, become NaN."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: column {column!r} has {value!r}, which is not a number") from None


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Mapping):
        return "the columns"
    return "the records"


def _save_png(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    # Dropping the Software entry keeps the PNG free of the matplotlib version.
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())
    logger.debug("wrote plot %s", path)
    return path
