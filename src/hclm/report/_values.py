"""Number formatting and summary-row helpers shared by the report sections."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BASELINE = "none"
MISSING = "—"
SIGNIFICANT_DIGITS = 3


def as_float(value: Any) -> float:
    """Convert a JSON number to float. None, booleans, strings and other types become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def format_number(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """Format a number with ``digits`` significant digits.

    Args:
        value: int, float or anything else. Null and NaN count as missing.
        digits: significant digits of a float.

    Returns:
        The formatted number, ``—`` for a missing value, or ``str(value)`` for a non-number.
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        return f"{value:.{digits}g}"
    return str(value)


def format_signed(value: float) -> str:
    """Format a difference with an explicit sign and 3 significant digits, or ``—`` when it is NaN."""
    return MISSING if math.isnan(value) else f"{value:+.{SIGNIFICANT_DIGITS}g}"


def format_mean_std(mean: Any, std: Any) -> str:
    """Format ``mean ± std``. A missing std leaves only the mean, and a missing mean gives ``—``."""
    mean_value = as_float(mean)
    if math.isnan(mean_value):
        return MISSING
    std_value = as_float(std)
    if math.isnan(std_value):
        return format_number(mean_value)
    return f"{format_number(mean_value)} ± {format_number(std_value)}"


def format_value(value: Any) -> str:
    """Format a config or environment value: lists as comma-separated items, numbers as in ``format_number``."""
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value) if value else "(empty)"
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else format_number(value)
    return format_number(value)


def format_lams(lams: Iterable[float]) -> str:
    """Join λ values as ``0.01, 0.1, 1``."""
    return ", ".join(format_number(lam) for lam in lams)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten nested dicts into (dotted key, value) pairs in insertion order. Lists stay values."""
    pairs: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs.extend(flatten(value, prefix=f"{name}."))
        else:
            pairs.append((name, value))
    return pairs


def surrogate_order(config: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Order surrogates as ``none``, then ``config.sweep.surrogates``, then the rest of ``rows`` alphabetically."""
    sweep = config.get("sweep") if isinstance(config.get("sweep"), Mapping) else {}
    configured = sweep.get("surrogates") if isinstance(sweep.get("surrogates"), list) else []
    present = [row.get("surrogate") for row in rows if isinstance(row.get("surrogate"), str)]
    order = [BASELINE] + [name for name in configured if isinstance(name, str)]
    order += sorted(set(present) - set(order))
    return list(dict.fromkeys(order))


def ordered_rows(rows: Sequence[Mapping[str, Any]], order: Sequence[str]) -> list[Mapping[str, Any]]:
    """Sort summary rows by the position of their surrogate in ``order``, then by λ. Rows with a null λ go last."""
    position = {name: index for index, name in enumerate(order)}

    def key(row: Mapping[str, Any]) -> tuple[int, float]:
        lam = as_float(row.get("lam"))
        return position.get(row.get("surrogate"), len(position)), lam if not math.isnan(lam) else math.inf

    return sorted(rows, key=key)


def find_baseline(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Return the first summary row of the ``none`` surrogate, or None."""
    for row in rows:
        if row.get("surrogate") == BASELINE:
            return row
    return None


def seed_count(row: Mapping[str, Any]) -> int | None:
    """Return the number of seeds of a summary row from ``seeds``, else from the sum of ``regime_counts``."""
    seeds = row.get("seeds")
    if isinstance(seeds, list):
        return len(seeds)
    counts = row.get("regime_counts")
    if isinstance(counts, Mapping):
        return sum(count for count in counts.values() if isinstance(count, int))
    return None


def accuracy_difference(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> tuple[float, float]:
    """Return the test accuracy difference of ``row`` minus the baseline and its seed spread.

    The spread combines the two seed standard deviations in quadrature, sqrt(std_row² + std_base²).

    Args:
        row: summary row of a surrogate and λ.
        baseline: summary row of ``none``, or None.

    Returns:
        (difference, spread). Each is NaN when an input it needs is missing.
    """
    if baseline is None:
        return math.nan, math.nan
    difference = as_float(row.get("test_accuracy_mean")) - as_float(baseline.get("test_accuracy_mean"))
    # Means of the same accuracies can differ by rounding alone; show those as exactly 0.
    if abs(difference) < 1e-12:
        difference = 0.0
    spread = math.hypot(as_float(row.get("test_accuracy_std")), as_float(baseline.get("test_accuracy_std")))
    return difference, spread
