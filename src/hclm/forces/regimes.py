"""Window statistics of force measurements and the regime classification.

Regimes are checked in order: ``weak`` (median relative strength below ``r_min``), ``opposed``
(median alignment below ``c_min``), ``unstable`` (volatility above ``v_max`` or median persistence
below ``p_min``), otherwise ``effective``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

REGIMES = ("weak", "opposed", "unstable", "effective")


@dataclass(frozen=True)
class RegimeThresholds:
    """Thresholds of the regime classification.

    Attributes:
        r_min: relative strength ``‖F_H‖/‖F_L‖`` below which the force is ``weak`` (default 0.05).
        c_min: alignment ``cos(F_H, F_L)`` below which the forces are ``opposed`` (default −0.9).
        v_max: volatility (coefficient of variation of the strength) above which the force is
            ``unstable`` (default 1.0).
        p_min: persistence (cosine between consecutive information forces) below which the force
            is ``unstable`` (default 0.2).
    """

    r_min: float = 0.05
    c_min: float = -0.9
    v_max: float = 1.0
    p_min: float = 0.2

    def __post_init__(self) -> None:
        if not self.r_min >= 0:
            raise ValueError(f"r_min must be >= 0, got {self.r_min}")
        if not -1.0 <= self.c_min <= 1.0:
            raise ValueError(f"c_min must lie in [-1, 1], got {self.c_min}")
        if not self.v_max >= 0:
            raise ValueError(f"v_max must be >= 0, got {self.v_max}")
        if not -1.0 <= self.p_min <= 1.0:
            raise ValueError(f"p_min must lie in [-1, 1], got {self.p_min}")

    def as_dict(self) -> dict[str, float]:
        """Return the thresholds as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class ForceSummary:
    """Statistics of the force measurements in one window and the regime they imply.

    ``injection_total`` and ``dissipation_total`` are ``Σ I_t`` and ``Σ D_t`` over the measured
    steps; ``effective_entropy_share`` is ``φ = Σ I_t / Σ (I_t + |D_t|)``.
    """

    measurements: int
    strength_median: float
    relative_strength_median: float
    alignment_median: float
    novelty_median: float
    persistence_median: float
    volatility: float
    injection_total: float
    dissipation_total: float
    effective_entropy_share: float
    regime: str

    def as_dict(self) -> dict[str, float | int | str]:
        """Return the summary as a plain dict (NaN where a statistic is undefined)."""
        return asdict(self)


def volatility(strengths: Iterable[float]) -> float:
    """Return the coefficient of variation ``std/mean`` of the strengths (population std).

    NaN entries are ignored; the result is NaN for fewer than two values, 0 when all are zero.
    """
    values = _finite(strengths)
    if values.size < 2:
        return math.nan
    mean = float(values.mean())
    if mean == 0.0:
        return 0.0
    return float(values.std() / abs(mean))


def classify_regime(
    relative_strength_median: float,
    alignment_median: float,
    volatility_value: float,
    persistence_median: float,
    thresholds: RegimeThresholds = RegimeThresholds(),
) -> str:
    """Classify a window as ``weak``, ``opposed``, ``unstable`` or ``effective``.

    Undefined statistics (NaN) never trigger a regime on their own, except a NaN relative
    strength, which means no force was measured and counts as ``weak``.
    """
    if math.isnan(relative_strength_median) or relative_strength_median < thresholds.r_min:
        return "weak"
    if alignment_median < thresholds.c_min:
        return "opposed"
    if volatility_value > thresholds.v_max or persistence_median < thresholds.p_min:
        return "unstable"
    return "effective"


def summarize_records(
    records: Sequence[object],
    thresholds: RegimeThresholds = RegimeThresholds(),
) -> ForceSummary:
    """Summarize a window of force records (objects or dicts with the record fields)."""

    def column(name: str) -> np.ndarray:
        values = [_get(record, name) for record in records]
        return np.array([math.nan if value is None else float(value) for value in values], dtype=float)

    strength = column("strength")
    relative = column("relative_strength")
    alignment = column("alignment")
    novelty = column("novelty")
    persistence = column("persistence")
    injection = column("injection")
    dissipation = column("dissipation")

    relative_median = _nanmedian(relative)
    alignment_median = _nanmedian(alignment)
    persistence_median = _nanmedian(persistence)
    volatility_value = volatility(strength)
    injection_total = float(np.nansum(injection)) if np.isfinite(injection).any() else math.nan
    dissipation_total = float(np.nansum(dissipation)) if np.isfinite(dissipation).any() else math.nan
    share = _injection_share(injection, dissipation)

    regime = classify_regime(relative_median, alignment_median, volatility_value, persistence_median, thresholds)
    return ForceSummary(
        measurements=len(records),
        strength_median=_nanmedian(strength),
        relative_strength_median=relative_median,
        alignment_median=alignment_median,
        novelty_median=_nanmedian(novelty),
        persistence_median=persistence_median,
        volatility=volatility_value,
        injection_total=injection_total,
        dissipation_total=dissipation_total,
        effective_entropy_share=share,
        regime=regime,
    )


def _injection_share(injection: np.ndarray, dissipation: np.ndarray) -> float:
    mask = np.isfinite(injection) & np.isfinite(dissipation)
    if not mask.any():
        return math.nan
    denominator = float(np.sum(injection[mask] + np.abs(dissipation[mask])))
    return float(np.sum(injection[mask]) / denominator) if denominator > 0 else math.nan


def _get(record: object, name: str) -> object:
    if isinstance(record, dict):
        return record.get(name)
    return getattr(record, name, None)


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.array([math.nan if value is None else float(value) for value in values], dtype=float)
    return array[np.isfinite(array)]


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan
