"""Build the setup, thresholds, results table, plots and environment sections of the report."""

from __future__ import annotations

import math

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hclm.report._document import Block, BulletList, Heading, Image, Paragraph, Table
from hclm.report._values import (
    BASELINE,
    MISSING,
    accuracy_difference,
    find_baseline,
    flatten,
    format_mean_std,
    format_number,
    format_signed,
    format_value,
)

_THRESHOLD_QUANTITIES = {
    "r_min": "median relative strength",
    "c_min": "median alignment",
    "v_max": "volatility",
    "p_min": "median persistence",
}

RESULT_HEADERS = (
    "surrogate",
    "λ",
    "relative strength",
    "alignment",
    "persistence",
    "volatility",
    "regime (seeds)",
    "injection Σ I",
    "dissipation Σ D",
    "test acc",
    "Δ test acc vs none",
    "probe acc",
    "effective rank",
    "diverged runs",
)

PLOT_CAPTIONS = {
    "relative_strength": "Relative strength r_t over training steps, one panel per λ",
    "volatility_persistence": "Volatility and median persistence against λ",
    "accuracy_rank": "Test accuracy, linear-probe accuracy and effective rank against λ",
    "injection_dissipation": "Cumulative information injection and entropy dissipation over training steps",
    "control_timeline": "Weight λ_t set by the controller and the relative strength it produced, with live-feedback changes marked",
    "entropy_flow": "Entropy flow of one run per surrogate: realized ΔH against I + D, running sums, and the residual",
}


def build_setup(config: Mapping[str, Any]) -> list[Block]:
    """Describe data, model, sweep, training length and measurement schedule, then list the whole config.

    Args:
        config: resolved config from summary.json.

    Returns:
        The blocks of the Setup section, heading included.
    """
    pairs = flatten(config)
    items = [
        f"Data: {_section_text(config, 'data', lead_key='name')}",
        f"Model: {_section_text(config, 'model', lead_key='name')}",
        f"Sweep: {_sweep_text(config)}",
        f"Training: {_training_text(config)}",
        f"Probe: {_probe_text(config)}",
    ]
    blocks: list[Block] = [Heading("Setup", 2), BulletList(tuple(items)), Heading("Resolved configuration", 3)]
    if pairs:
        blocks.append(Table(("key", "value"), tuple((key, format_value(value)) for key, value in pairs)))
    else:
        blocks.append(Paragraph("The config in summary.json is empty."))
    return blocks


def build_thresholds(thresholds: Mapping[str, Any]) -> list[Block]:
    """List the regime thresholds with the quantity each one bounds.

    Args:
        thresholds: ``thresholds`` from summary.json.

    Returns:
        The blocks of the Regime thresholds section, heading included.
    """
    rows = tuple(
        (str(name), format_value(value), _THRESHOLD_QUANTITIES.get(str(name), MISSING))
        for name, value in thresholds.items()
    )
    blocks: list[Block] = [Heading("Regime thresholds", 2)]
    if rows:
        blocks.append(Table(("threshold", "value", "quantity"), rows))
    else:
        blocks.append(Paragraph("summary.json lists no regime thresholds."))
    return blocks


def build_results_table(rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    """Tabulate one line per (surrogate, λ) summary row.

    Args:
        rows: summary rows sorted for display.

    Returns:
        The blocks of the Results section, heading included.
    """
    baseline = find_baseline(rows)
    lines = []
    for row in rows:
        difference, _ = accuracy_difference(row, baseline)
        is_baseline = row.get("surrogate") == BASELINE
        lines.append(
            (
                str(row.get("surrogate")),
                format_number(row.get("lam")),
                format_number(row.get("relative_strength_median")),
                format_number(row.get("alignment_median")),
                format_number(row.get("persistence_median")),
                format_number(row.get("volatility")),
                _regime_text(row),
                format_number(row.get("injection_total")),
                format_number(row.get("dissipation_total")),
                format_mean_std(row.get("test_accuracy_mean"), row.get("test_accuracy_std")),
                MISSING if is_baseline else format_signed(difference),
                format_mean_std(row.get("probe_accuracy_mean"), row.get("probe_accuracy_std")),
                format_mean_std(row.get("effective_rank_mean"), row.get("effective_rank_std")),
                format_number(row.get("diverged_runs")),
            )
        )
    note = Paragraph(
        "Force columns are the summary values of summary.json (medians where the name says so). "
        "Accuracy and effective rank are mean ± std over seeds. Regime (seeds) gives the number of seeds "
        f"that reached the row's regime out of all seeds. {MISSING} marks a missing value."
    )
    return [Heading("Results", 2), note, Table(RESULT_HEADERS, tuple(lines))]


def build_plots(plot_paths: Mapping[str, Path], report_dir: Path) -> list[Block]:
    """Link each plot relative to the report folder.

    Args:
        plot_paths: PNG path per plot name.
        report_dir: folder of report.md and report.html.

    Returns:
        The blocks of the Plots section, heading included.
    """
    blocks: list[Block] = [Heading("Plots", 2)]
    for name, path in plot_paths.items():
        caption = PLOT_CAPTIONS.get(name, name)
        blocks.append(Image(caption, path.relative_to(report_dir).as_posix(), path))
    return blocks


def build_environment(environment: Mapping[str, Any]) -> list[Block]:
    """Tabulate the software and machine details recorded with the run.

    Args:
        environment: ``environment`` from summary.json.

    Returns:
        The blocks of the Environment section, heading included.
    """
    pairs = flatten(environment)
    blocks: list[Block] = [Heading("Environment", 2)]
    if pairs:
        blocks.append(Table(("key", "value"), tuple((key, format_value(value)) for key, value in pairs)))
    else:
        blocks.append(Paragraph("summary.json records no environment."))
    return blocks


def _regime_text(row: Mapping[str, Any]) -> str:
    regime = row.get("regime")
    if not isinstance(regime, str):
        return MISSING
    counts = row.get("regime_counts")
    seeds = row.get("seeds")
    if isinstance(counts, Mapping) and isinstance(seeds, list):
        return f"{regime} ({format_number(counts.get(regime, 0))}/{len(seeds)})"
    return regime


def _section_text(config: Mapping[str, Any], section: str, lead_key: str) -> str:
    """Describe a config section as its ``lead_key`` value followed by its other settings in parentheses."""
    values = config.get(section)
    if not isinstance(values, Mapping) or not values:
        return f"not recorded (the config has no {section} section)"
    lead = format_value(values[lead_key]) if lead_key in values else ""
    others = [
        f"{key}={format_value(value)}"
        for key, value in flatten(values)
        if key != lead_key and _applies(section, values, key)
    ]
    if lead and others:
        return f"{lead} ({', '.join(others)})"
    return lead or ", ".join(others)


def _sweep_text(config: Mapping[str, Any]) -> str:
    sweep = config.get("sweep")
    if not isinstance(sweep, Mapping):
        return "not recorded (the config has no sweep section)"
    parts = [
        f"surrogates {format_value(sweep.get('surrogates', MISSING))}",
        f"λ {format_value(sweep.get('lams', MISSING))}",
        f"seeds {format_value(sweep.get('seeds', MISSING))}",
    ]
    return "; ".join(parts)


def _training_text(config: Mapping[str, Any]) -> str:
    train = config.get("train")
    if not isinstance(train, Mapping):
        return "not recorded (the config has no train section)"
    text = (
        f"{format_value(train.get('optimizer', MISSING))} at learning rate {format_value(train.get('lr', MISSING))}, "
        f"{format_value(train.get('steps', MISSING))} steps of batch {format_value(train.get('batch_size', MISSING))}"
    )
    if train.get("optimizer") not in (None, "sgd"):
        # I_t and D_t use the SGD step η·(F_L + F_H); an adaptive optimizer moves the parameters differently.
        text += (
            "; injection and dissipation are those of an SGD step at this learning rate, "
            "because the forces are measured before the optimizer transforms them"
        )
    return text


def _probe_text(config: Mapping[str, Any]) -> str:
    probe = config.get("probe")
    if not isinstance(probe, Mapping):
        return "not recorded (the config has no probe section)"
    every = probe.get("every", MISSING)
    realized = "with" if probe.get("realized") else "without"
    return f"forces measured every {format_value(every)} step(s), {realized} the realized entropy change"


def _applies(section: str, values: Mapping[str, Any], key: str) -> bool:
    """Return False for data settings that the chosen data source ignores."""
    if section != "data":
        return True
    name = values.get("name")
    if key.startswith("mixture."):
        return name == "mixture"
    if key in ("path", "label_column"):
        return name in ("npz", "csv") and not (key == "label_column" and name == "npz")
    return True


def build_scenario(config: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[Block]:
    """Tabulate the open-system scenario per (surrogate, λ): shift accuracy, recovery, what stopped runs.

    Args:
        config: resolved config from summary.json.
        runs: per-run results from summary.json ``runs``.

    Returns:
        The blocks of the Scenario section, or nothing when the sweep had no scenario.
    """
    scenario = config.get("scenario") if isinstance(config.get("scenario"), Mapping) else {}
    kind = scenario.get("kind")
    if kind in (None, "none"):
        return []
    control = config.get("control") if isinstance(config.get("control"), Mapping) else {}
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        if isinstance(run, Mapping) and isinstance(run.get("scenario"), Mapping):
            groups.setdefault((str(run.get("surrogate")), float(run.get("lam") or 0.0)), []).append(run)

    lines = []
    for (surrogate, lam), members in groups.items():
        details = [run["scenario"] for run in members]
        shift_accuracy = [float(d["shift_test_accuracy"]) for d in details if d.get("shift_test_accuracy") is not None]
        recovery = [d.get("recovery_steps") for d in details if "recovery_steps" in d]
        recovered = [float(value) for value in recovery if value is not None]
        stopped: dict[str, int] = {}
        for d in details:
            stopped[str(d.get("stopped_by"))] = stopped.get(str(d.get("stopped_by")), 0) + 1
        before = [float(d["relative_strength_before"]) for d in details if d.get("relative_strength_before") is not None]
        after = [float(d["relative_strength_after"]) for d in details if d.get("relative_strength_after") is not None]
        lines.append(
            (
                surrogate,
                format_number(lam),
                f"{format_number(_median(before))} → {format_number(_median(after))}" if before or after else MISSING,
                format_mean_std(_mean(shift_accuracy), _std(shift_accuracy)),
                f"{format_number(_median(recovered))} ({len(recovered)}/{len(recovery)} seeds)" if recovery else MISSING,
                ", ".join(f"{name} ×{count}" for name, count in sorted(stopped.items())),
            )
        )
    description = f"Scenario: {kind}"
    if kind == "shift":
        description += (
            f" ({scenario.get('shift')} at step {scenario.get('at')}). Shift accuracy is the test accuracy on the "
            "shifted test set; recovery is the median number of steps after the shift until the smoothed training "
            "loss returns within the tolerance of its level before the shift, over the seeds that recovered"
        )
    description += f". λ control: {control.get('kind', 'constant')}."
    headers = ("surrogate", "λ", "rel. strength before → after", "shift test acc", "recovery steps", "stopped by")
    return [Heading("Scenario", 2), Paragraph(description), Table(headers, tuple(lines))]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def _median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
