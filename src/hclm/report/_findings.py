"""Write the Findings section from the summary rows. Every statement is computed from the numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hclm.report._document import Block, BulletList, Heading, Paragraph
from hclm.report._values import (
    BASELINE,
    accuracy_difference,
    as_float,
    find_baseline,
    format_lams,
    format_mean_std,
    format_number,
    format_signed,
    seed_count,
)

EFFECTIVE = "effective"
OTHER_REGIMES = ("weak", "opposed", "unstable")


def build_findings(rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    """Describe which surrogates were effective, the other regimes, accuracy against ``none`` and divergence.

    Args:
        rows: summary rows sorted for display, the ``none`` baseline included.

    Returns:
        The blocks of the Findings section, heading included.
    """
    baseline = find_baseline(rows)
    candidates = [row for row in rows if row.get("surrogate") != BASELINE]
    blocks: list[Block] = [Heading("Findings", 2)]
    if not rows:
        blocks.append(Paragraph("summary.json lists no results, so there is nothing to report."))
        return blocks
    if not candidates:
        text = 'The results contain no entropy surrogate besides the "none" baseline, so there is nothing to compare.'
        blocks.append(Paragraph(text))
        blocks.extend(_baseline_blocks(baseline))
        return blocks

    blocks.extend(_effective_blocks(candidates, baseline))
    blocks.extend(_other_regime_blocks(candidates))
    blocks.extend(_baseline_blocks(baseline))
    blocks.extend(_accuracy_blocks(candidates, baseline))
    blocks.extend(_divergence_blocks(rows))
    return blocks


def _effective_blocks(candidates: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None) -> list[Block]:
    effective = [row for row in candidates if row.get("regime") == EFFECTIVE]
    if not effective:
        return [Paragraph("No surrogate was effective at any λ.")]

    names = list(dict.fromkeys(str(row["surrogate"]) for row in effective))
    items = []
    for row in effective:
        item = (
            f"{row['surrogate']} at λ = {format_number(row.get('lam'))}: "
            f"test accuracy {format_mean_std(row.get('test_accuracy_mean'), row.get('test_accuracy_std'))} "
            f"(mean ± std over seeds), {_agreement(row)}"
        )
        difference, spread = accuracy_difference(row, baseline)
        if not math.isnan(difference):
            item += f"; difference from none {_difference_text(difference, spread)}"
        items.append(item + ".")
    lead = f"Effective: {', '.join(names)}. Rows whose regime in summary.json is effective:"
    return [Paragraph(lead), BulletList(tuple(items))]


def _other_regime_blocks(candidates: Sequence[Mapping[str, Any]]) -> list[Block]:
    """List, per surrogate, the λ values of each regime other than effective, and the λ values without a regime."""
    by_surrogate: dict[str, dict[str, list[float]]] = {}
    for row in candidates:
        regime = row.get("regime")
        if regime == EFFECTIVE:
            continue
        label = regime if isinstance(regime, str) else "no regime (not determined)"
        lams = by_surrogate.setdefault(str(row.get("surrogate")), {}).setdefault(label, [])
        lams.append(as_float(row.get("lam")))
    if not by_surrogate:
        return [Paragraph("Every surrogate was effective at every λ in the sweep.")]

    known_order = {regime: index for index, regime in enumerate(OTHER_REGIMES)}
    items = []
    for surrogate, regimes in by_surrogate.items():
        parts = [
            f"{regime} at λ = {format_lams(lams)}"
            for regime, lams in sorted(regimes.items(), key=lambda entry: known_order.get(entry[0], len(known_order)))
        ]
        items.append(f"{surrogate}: {'; '.join(parts)}.")
    return [Paragraph("Not effective (weak, opposed or unstable):"), BulletList(tuple(items))]


def _baseline_blocks(baseline: Mapping[str, Any] | None) -> list[Block]:
    if baseline is None or math.isnan(as_float(baseline.get("test_accuracy_mean"))):
        text = 'The results contain no "none" baseline with a test accuracy, so accuracy is not compared.'
        return [Paragraph(text)]
    count = seed_count(baseline)
    seeds = f" over {_seeds(count)}" if count is not None else ""
    accuracy = format_mean_std(baseline.get("test_accuracy_mean"), baseline.get("test_accuracy_std"))
    return [
        Paragraph(
            f'Baseline "none" (no entropy regularizer): test accuracy {accuracy}{seeds}. '
            "Each difference from the baseline in this section is surrogate minus baseline, ± the two "
            "seed standard deviations combined in quadrature."
        )
    ]


def _accuracy_blocks(candidates: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None) -> list[Block]:
    """State, per surrogate, the λ of highest and lowest mean test accuracy and their difference from ``none``."""
    by_surrogate: dict[str, list[Mapping[str, Any]]] = {}
    for row in candidates:
        if not math.isnan(as_float(row.get("test_accuracy_mean"))):
            by_surrogate.setdefault(str(row.get("surrogate")), []).append(row)
    if not by_surrogate:
        return [Paragraph("No surrogate run has a test accuracy.")]

    items = []
    for surrogate, surrogate_rows in by_surrogate.items():
        ranked = sorted(surrogate_rows, key=lambda row: as_float(row.get("test_accuracy_mean")), reverse=True)
        text = f"{surrogate}: highest test accuracy at {_accuracy_text(ranked[0], baseline)}"
        if len(ranked) > 1:
            text += f"; lowest at {_accuracy_text(ranked[-1], baseline)}"
        items.append(text + ".")
    return [Paragraph("Test accuracy per surrogate:"), BulletList(tuple(items))]


def _divergence_blocks(rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    items = []
    for row in rows:
        diverged = row.get("diverged_runs")
        if isinstance(diverged, int) and not isinstance(diverged, bool) and diverged > 0:
            count = seed_count(row)
            lam = format_number(row.get("lam"))
            runs = f"{diverged} of {_seeds(count)}" if count is not None else _seeds(diverged)
            items.append(f"{row.get('surrogate')} at λ = {lam}: {runs} diverged.")
    if not items:
        return [Paragraph("No run diverged.")]
    return [Paragraph("Diverged runs:"), BulletList(tuple(items))]


def _agreement(row: Mapping[str, Any]) -> str:
    """Describe how many seeds reached the row's regime, from ``regime_counts``."""
    counts = row.get("regime_counts")
    total = seed_count(row)
    if not isinstance(counts, Mapping) or total is None:
        return "seed agreement not recorded"
    agreeing = counts.get(row.get("regime"), 0)
    return f"{agreeing} of {_seeds(total)} {row.get('regime')}"


def _seeds(count: int) -> str:
    """Return "1 seed" or "N seeds"."""
    return f"{count} seed" if count == 1 else f"{count} seeds"


def _accuracy_text(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    accuracy = format_mean_std(row.get("test_accuracy_mean"), row.get("test_accuracy_std"))
    text = f"λ = {format_number(row.get('lam'))} with {accuracy}"
    difference, spread = accuracy_difference(row, baseline)
    if not math.isnan(difference):
        text += f", difference {_difference_text(difference, spread)}"
    return text


def _difference_text(difference: float, spread: float) -> str:
    """Format a difference from the baseline and state whether it exceeds the combined seed spread."""
    if math.isnan(spread):
        return format_signed(difference)
    verdict = "larger than" if abs(difference) > spread else "within"
    return f"{format_signed(difference)} ± {format_number(spread)} ({verdict} the seed spread)"
