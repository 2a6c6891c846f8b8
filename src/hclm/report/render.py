"""Load the output folder of a comparison run and write its plots, report.md and report.html."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hclm._io import atomic_write_text
from hclm.report import plots
from hclm.report._document import Block, Heading, Paragraph, to_html, to_markdown
from hclm.report._findings import build_findings
from hclm.dynamics.flow import FLOW_COLUMNS, plot_entropy_flow
from hclm.experiments.runner import STEP_COLUMNS
from hclm.report._sections import (
    build_environment,
    build_plots,
    build_results_table,
    build_scenario,
    build_setup,
    build_thresholds,
)
from hclm.report._values import BASELINE, format_value, ordered_rows, surrogate_order

logger = logging.getLogger(__name__)

REQUIRED_SUMMARY_KEYS = ("config", "thresholds", "results")
"""Keys that summary.json must contain. ``environment`` and ``runs`` are optional."""



def load_run_records(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read result.json and steps.csv of every folder in ``out_dir/runs``.

    A folder whose result.json is missing, is not valid JSON or is not a JSON object is
    skipped with a warning. A missing or unreadable steps.csv gives empty step columns and a
    warning. Empty cells and cells that are not numbers become NaN. A regularized run without
    a finite ``lam`` is kept but logged, because the plots group runs by λ and leave it out.

    Args:
        out_dir: output folder of a comparison run.

    Returns:
        Records keyed by run id (``run_id`` from result.json, else the folder name), in folder
        name order. Each record contains ``run_id``, ``folder`` (Path), ``result`` (the parsed
        result.json) and ``steps`` (column name to 1-D float array, all of one length).
    """
    runs_dir = Path(out_dir) / "runs"
    if not runs_dir.is_dir():
        logger.warning("no runs folder in %s, so the report has no per-run data", out_dir)
        return {}

    records: dict[str, dict[str, Any]] = {}
    for folder in sorted(path for path in runs_dir.iterdir() if path.is_dir()):
        result = _read_result(folder / "result.json")
        if result is None:
            continue
        run_id = result.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            run_id = folder.name
        if run_id in records:
            first = records[run_id]["folder"]
            logger.warning("skipped run folder %s because run id %s was already read from %s", folder, run_id, first)
            continue
        lam = result.get("lam")
        if result.get("surrogate") != BASELINE and not _is_finite_number(lam):
            logger.warning("run %s has lam %r in result.json, so the plots leave it out", run_id, lam)
        steps = _read_steps(folder / "steps.csv")
        records[run_id] = {"run_id": run_id, "folder": folder, "result": result, "steps": steps}
    logger.info("read %d run records from %s", len(records), runs_dir)
    return records


def render_report(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the plots to ``out_dir/plots`` and the report to ``out_dir/report.md`` and ``out_dir/report.html``.

    Args:
        out_dir: output folder of a comparison run, containing summary.json and runs/.

    Returns:
        Paths keyed by ``relative_strength``, ``volatility_persistence``, ``accuracy_rank``,
        ``injection_dissipation`` (the PNG plots), ``markdown`` and ``html``.

    Raises:
        FileNotFoundError: ``out_dir/summary.json`` does not exist.
        ValueError: summary.json is not a valid JSON object, a required key is missing or has the wrong
            type, or a row of ``results`` has no string ``surrogate``.
    """
    folder = Path(out_dir)
    summary = _read_summary(folder)
    config = summary["config"]
    thresholds = summary["thresholds"]
    environment = summary.get("environment") if isinstance(summary.get("environment"), Mapping) else {}
    order = surrogate_order(config, summary["results"])
    rows = ordered_rows(summary["results"], order)
    records = _merge_summary_runs(load_run_records(folder), summary.get("runs"))

    plot_dir = folder / "plots"
    paths: dict[str, Path] = {
        "relative_strength": plots.plot_relative_strength(plot_dir, records, thresholds, order),
        "volatility_persistence": plots.plot_volatility_persistence(plot_dir, rows, records, thresholds, order),
        "accuracy_rank": plots.plot_accuracy_rank(plot_dir, rows, order),
        "injection_dissipation": plots.plot_injection_dissipation(plot_dir, records, order),
    }
    if plots.has_control_activity(records):
        control = config.get("control") if isinstance(config.get("control"), Mapping) else {}
        band = control.get("band") if control.get("kind") == "pi" and control.get("floor") is None else None
        paths["control_timeline"] = plots.plot_control_timeline(plot_dir, records, band, order)
    flow_sources = _entropy_flow_sources(records, order)
    if flow_sources:
        paths["entropy_flow"] = plot_entropy_flow(flow_sources, plot_dir / "entropy_flow.png")

    title = _title(config)
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(f"Generated from {folder / 'summary.json'} and {len(records)} run records."),
        *build_setup(config),
        *build_thresholds(thresholds),
        *build_findings(rows),
        *build_results_table(rows),
        *build_scenario(config, summary.get("runs") or []),
        *build_plots(paths, folder),
        *build_environment(environment),
    ]
    paths["markdown"] = folder / "report.md"
    paths["html"] = folder / "report.html"
    atomic_write_text(paths["markdown"], to_markdown(blocks))
    atomic_write_text(paths["html"], to_html(blocks, title))
    logger.info("wrote report %s and %s", paths["markdown"], paths["html"])
    return paths


def _entropy_flow_sources(records: Mapping[str, Mapping[str, Any]], order: Sequence[str]) -> dict[str, Any]:
    """Pick one run per surrogate for the entropy-flow plot: the lowest seed at the largest λ that
    has realized entropy changes recorded."""
    chosen: dict[str, tuple[float, int, Mapping[str, Any]]] = {}
    for record in records.values():
        result = record.get("result") or {}
        steps = record.get("steps") or {}
        surrogate = result.get("surrogate")
        delta_h = np.asarray(steps.get("delta_h", []), dtype=float)
        if not isinstance(surrogate, str) or surrogate == BASELINE or not np.isfinite(delta_h).any():
            continue
        key = (float(result.get("lam") or 0.0), -int(result.get("seed") or 0))
        if surrogate not in chosen or key > chosen[surrogate][:2]:
            chosen[surrogate] = (*key, record)
    sources = {}
    for surrogate in [name for name in order if name in chosen] + sorted(set(chosen) - set(order)):
        lam, negative_seed, record = chosen[surrogate]
        label = f"{surrogate} λ={lam:g} seed {-negative_seed}"
        sources[label] = {column: record["steps"][column] for column in FLOW_COLUMNS if column in record["steps"]}
    return sources


def _read_summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"summary.json not found in {folder}. Run `hclm run --out {folder}` first, "
            "or pass the output folder of a finished run."
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(summary, dict):
        raise ValueError(f"{path} must contain a JSON object, got {type(summary).__name__}")

    for key in REQUIRED_SUMMARY_KEYS:
        if key not in summary:
            raise ValueError(
                f"{path} is missing the required key {key!r}. Rerun `hclm run --out {folder}` to rebuild it."
            )
    for key in ("config", "thresholds"):
        if not isinstance(summary[key], dict):
            raise ValueError(f"{path}: key {key!r} must be a JSON object, got {type(summary[key]).__name__}")
    if not isinstance(summary["results"], list):
        raise ValueError(f"{path}: key 'results' must be a list, got {type(summary['results']).__name__}")
    for index, row in enumerate(summary["results"]):
        if not isinstance(row, dict) or not isinstance(row.get("surrogate"), str):
            raise ValueError(f"{path}: results[{index}] must be an object with a string 'surrogate', got {row!r}")
    return summary


def _read_result(path: Path) -> dict[str, Any] | None:
    """Parse a result.json. Return None and log a warning when it is missing or invalid."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        logger.warning("skipped run folder %s because result.json is missing", path.parent)
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("skipped run folder %s because its result.json is invalid: %s", path.parent, error)
        return None
    if not isinstance(result, dict):
        kind = type(result).__name__
        logger.warning("skipped run folder %s because its result.json is a JSON %s, not an object", path.parent, kind)
        return None
    return result


def _read_steps(path: Path) -> dict[str, np.ndarray]:
    """Read steps.csv into float columns. Return empty columns and log a warning when it is missing or unreadable."""
    empty = {column: np.empty(0) for column in STEP_COLUMNS}
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            columns = list(dict.fromkeys([*STEP_COLUMNS, *(reader.fieldnames or [])]))
            cells: dict[str, list[float]] = {column: [] for column in columns}
            invalid = 0
            for line in reader:
                for column in columns:
                    value, valid = _parse_cell(line.get(column))
                    cells[column].append(value)
                    invalid += not valid
    except FileNotFoundError:
        logger.warning("run folder %s has no steps.csv, so its step curves are empty", path.parent)
        return empty
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        logger.warning("failed to read %s, so its step curves are empty: %s", path, error)
        return empty

    if invalid:
        logger.warning("%s: %d cells are not numbers and were read as NaN", path, invalid)
    return {column: np.asarray(values, dtype=float) for column, values in cells.items()}


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_cell(text: str | None) -> tuple[float, bool]:
    """Parse one CSV cell. Return (value, valid): an empty or absent cell is a valid NaN."""
    if text is None or not text.strip():
        return math.nan, True
    try:
        return float(text), True
    except ValueError:
        return math.nan, False


def _merge_summary_runs(records: dict[str, dict[str, Any]], runs: Any) -> dict[str, dict[str, Any]]:
    """Add the runs of summary.json that have no run folder, with empty step columns."""
    if not isinstance(runs, list):
        return records
    merged = dict(records)
    for result in runs:
        if not isinstance(result, dict):
            continue
        run_id = result.get("run_id")
        if isinstance(run_id, str) and run_id not in merged:
            merged[run_id] = {"run_id": run_id, "folder": None, "result": result, "steps": {}}
    if len(merged) > len(records):
        added = len(merged) - len(records)
        logger.info("%d runs of summary.json have no run folder, so only their result values are used", added)
    return merged


def _title(config: Mapping[str, Any]) -> str:
    data = config.get("data")
    if isinstance(data, Mapping) and data.get("name") in ("npz", "csv") and data.get("path"):
        return f"hclm entropy surrogate comparison: {Path(str(data['path'])).name}"
    if isinstance(data, Mapping) and "name" in data:
        return f"hclm entropy surrogate comparison: {format_value(data['name'])}"
    return "hclm entropy surrogate comparison"
