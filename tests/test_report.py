"""Tests for hclm.report on a small synthetic output folder."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hclm.report import load_run_records, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_NAMES = ("relative_strength", "volatility_persistence", "accuracy_rank", "injection_dissipation", "entropy_flow")
STEP_COLUMNS = (
    "step",
    "loss",
    "entropy",
    "lam",
    "strength",
    "relative_strength",
    "alignment",
    "novelty",
    "persistence",
    "injection",
    "dissipation",
    "delta_h",
    "residual",
)
FORCE_COLUMNS = STEP_COLUMNS[4:]
STEPS = 40
MEASURE_EVERY = 5
SEEDS = (0, 1)

# (surrogate, lam, regime, test accuracy mean, test accuracy std, diverged runs)
ROWS = (
    ("none", 0.0, None, 0.85, 0.02, 0),
    ("logdet", 0.01, "weak", 0.86, 0.01, 0),
    ("logdet", 0.1, "effective", 0.9, 0.01, 0),
    ("softmax", 0.01, "weak", 0.84, 0.03, 0),
    ("softmax", 0.1, "unstable", 0.5, 0.2, 1),
    ("variance", 0.01, None, None, None, 0),
)
DIVERGED_RUN = "softmax-lam0.1-seed1"
EMPTY_FORCES_RUN = "variance-lam0.01-seed0"


def _run_id(surrogate: str, lam: float, seed: int) -> str:
    return f"none-seed{seed}" if surrogate == "none" else f"{surrogate}-lam{lam:g}-seed{seed}"


def _write_steps(path: Path, surrogate: str, lam: float, steps: int, forces: bool, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(STEP_COLUMNS)
        for step in range(steps):
            measured = forces and step % MEASURE_EVERY == 0
            row: dict[str, Any] = {column: "" for column in STEP_COLUMNS}
            row.update(step=step, loss=f"{2.0 * math.exp(-step / 20):.5f}", lam=lam)
            if surrogate != "none":
                row["entropy"] = f"{1.0 + 0.01 * step:.5f}"
            if measured:
                row.update(
                    strength=f"{lam * rng.uniform(0.5, 1.5):.6f}",
                    relative_strength=f"{lam * rng.uniform(0.2, 2.0):.6f}",
                    alignment=f"{rng.uniform(-1, 1):.4f}",
                    novelty=f"{rng.uniform(0, 1):.4f}",
                    persistence=f"{rng.uniform(0, 1):.4f}",
                    injection=f"{rng.uniform(0, 0.1):.6f}",
                    dissipation=f"{rng.uniform(0, 0.05):.6f}",
                    delta_h=f"{rng.normal(0, 0.01):.6f}",
                    residual=f"{rng.normal(0, 0.001):.6f}",
                )
            writer.writerow([row[column] for column in STEP_COLUMNS])


def _forces(regime: str | None, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "relative_strength_median": float(rng.uniform(0.01, 1)),
        "alignment_median": float(rng.uniform(-1, 1)),
        "novelty_median": float(rng.uniform(0, 1)),
        "persistence_median": float(rng.uniform(0, 1)),
        "strength_median": float(rng.uniform(0, 1)),
        "volatility": float(rng.uniform(0, 2)),
        "regime": regime,
        "injection_total": float(rng.uniform(0, 1)),
        "dissipation_total": float(rng.uniform(0, 1)),
        "effective_entropy_share": float(rng.uniform(0, 1)),
        "measurements": STEPS // MEASURE_EVERY,
    }


def _summary_row(
    surrogate: str,
    lam: float,
    regime: str | None,
    mean: float | None,
    std: float | None,
    diverged: int,
) -> dict[str, Any]:
    has_forces = surrogate != "none" and regime is not None
    force_value = 0.3 if has_forces else None
    return {
        "surrogate": surrogate,
        "lam": lam,
        "seeds": list(SEEDS),
        "relative_strength_median": force_value,
        "alignment_median": force_value,
        "novelty_median": force_value,
        "persistence_median": force_value,
        "volatility": force_value,
        "strength_median": force_value,
        "regime": regime,
        "regime_counts": {regime: len(SEEDS)} if regime else {},
        "injection_total": force_value,
        "dissipation_total": force_value,
        "effective_entropy_share": force_value,
        "test_accuracy_mean": mean,
        "test_accuracy_std": std,
        "probe_accuracy_mean": None if mean is None else mean - 0.05,
        "probe_accuracy_std": std,
        "effective_rank_mean": None if mean is None else 10.0 + 20 * lam,
        "effective_rank_std": None if mean is None else 1.5,
        "diverged_runs": diverged,
    }


def _make_output(folder: Path, rows: tuple[tuple[Any, ...], ...] = ROWS) -> dict[str, Any]:
    """Write summary.json and one run folder per (row, seed) into ``folder``. Return the summary."""
    rng = np.random.default_rng(7)
    results = []
    runs = []
    for surrogate, lam, regime, mean, std, diverged in rows:
        results.append(_summary_row(surrogate, lam, regime, mean, std, diverged))
        for seed in SEEDS:
            run_id = _run_id(surrogate, lam, seed)
            is_diverged = run_id == DIVERGED_RUN
            has_forces = surrogate != "none" and run_id != EMPTY_FORCES_RUN
            steps = STEPS // 3 if is_diverged else STEPS
            _write_steps(folder / "runs" / run_id / "steps.csv", surrogate, lam, steps, has_forces, rng)
            test_accuracy = None
            if mean is not None:
                test_accuracy = mean + 0.01 if seed else mean - 0.01
            result = {
                "run_id": run_id,
                "surrogate": surrogate,
                "lam": lam,
                "seed": seed,
                "test_accuracy": test_accuracy,
                "probe_accuracy": None if mean is None else mean - 0.05,
                "effective_rank": 12.0,
                "diverged": is_diverged,
                "steps": steps,
                "train_seconds": 1.5,
                "forces": _forces(regime, rng) if has_forces else None,
            }
            (folder / "runs" / run_id / "result.json").write_text(json.dumps(result))
            runs.append(result)
    summary = {
        "config": {
            "data": {"name": "blobs", "n_train": 512},
            "model": {"name": "mlp", "hidden": 64},
            "train": {"optimizer": "adam", "steps": STEPS, "lr": 0.01, "batch_size": 32},
            "probe": {"every": MEASURE_EVERY, "realized": True},
            "sweep": {
                "surrogates": ["none", "logdet", "softmax", "variance"],
                "lams": [0.01, 0.1],
                "seeds": list(SEEDS),
            },
        },
        "environment": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "platform": "Linux",
            "cpu_count": 2,
            "seeds": list(SEEDS),
        },
        "thresholds": {"r_min": 0.05, "c_min": -0.9, "v_max": 1.0, "p_min": 0.2},
        "results": results,
        "runs": runs,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


def _section(markdown: str, heading: str) -> str:
    """Return the text of a ``## heading`` section up to the next ``## `` heading."""
    start = markdown.index(f"## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:] if end < 0 else markdown[start:end]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], str, str]:
    """Render the synthetic folder once per module, because one render takes a few seconds."""
    folder = tmp_path_factory.mktemp("output")
    _make_output(folder)
    paths = render_report(folder)
    return paths, paths["markdown"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")


def test_render_writes_png_plots(rendered):
    paths, _, _ = rendered
    folder = paths["markdown"].parent
    for name in PLOT_NAMES:
        assert paths[name] == folder / "plots" / f"{name}.png"
        assert paths[name].is_file(), name
        assert paths[name].read_bytes()[:8] == PNG_SIGNATURE, name


def test_render_writes_reports(rendered):
    paths, markdown, html_text = rendered
    assert paths["markdown"].name == "report.md"
    assert paths["html"] == paths["markdown"].parent / "report.html"
    assert markdown.startswith("# hclm entropy surrogate comparison: blobs")
    assert html_text.startswith("<!DOCTYPE html>")


def test_html_has_no_external_links(rendered):
    _, _, html_text = rendered
    assert re.search(r"""(?:src|href)\s*=\s*["']?\s*https?://""", html_text, re.IGNORECASE) is None
    assert "http://" not in html_text
    assert "https://" not in html_text
    assert "<script" not in html_text
    assert "<link" not in html_text


def test_html_embeds_every_plot(rendered):
    _, _, html_text = rendered
    assert html_text.count('<img src="data:image/png;base64,') == len(PLOT_NAMES)


def test_markdown_links_every_plot(rendered):
    _, markdown, _ = rendered
    for name in PLOT_NAMES:
        assert f"(plots/{name}.png)" in markdown, name


def test_results_table_has_every_row(rendered):
    _, markdown, html_text = rendered
    table_lines = [line for line in _section(markdown, "Results").splitlines() if line.startswith("| ")]
    assert len(table_lines) == len(ROWS) + 1
    for surrogate, lam, *_ in ROWS:
        prefix = f"| {surrogate} | {lam:.3g} |"
        assert sum(line.startswith(prefix) for line in table_lines) == 1, prefix

    html_table = html_text[html_text.index("<h2>Results</h2>") :]
    html_table = html_table[: html_table.index("</table>")]
    assert html_table.count("<tr>") == len(ROWS) + 1


def test_results_table_formats_values(rendered):
    _, markdown, _ = rendered
    table = _section(markdown, "Results")
    assert "| logdet | 0.1 | 0.3 | 0.3 | 0.3 | 0.3 | effective (2/2) |" in table
    assert "0.9 ± 0.01 | +0.05 |" in table
    assert "| variance | 0.01 | — | — | — | — | — |" in table


def test_findings_name_effective_surrogate(rendered):
    _, markdown, _ = rendered
    findings = _section(markdown, "Findings")
    assert "Effective: logdet." in findings
    assert "logdet at λ = 0.1: test accuracy 0.9 ± 0.01" in findings
    assert "2 of 2 seeds effective" in findings
    assert "difference from none +0.05 ± 0.0224 (larger than the seed spread)" in findings


def test_findings_list_other_regimes(rendered):
    _, markdown, _ = rendered
    findings = _section(markdown, "Findings")
    assert "logdet: weak at λ = 0.01." in findings
    assert "softmax: weak at λ = 0.01; unstable at λ = 0.1." in findings
    assert "variance: no regime (not determined) at λ = 0.01." in findings
    assert "softmax at λ = 0.1: 1 of 2 seeds diverged." in findings


def test_findings_compare_with_baseline(rendered):
    _, markdown, _ = rendered
    findings = _section(markdown, "Findings")
    assert 'Baseline "none" (no entropy regularizer): test accuracy 0.85 ± 0.02 over 2 seeds.' in findings
    assert "softmax: highest test accuracy at λ = 0.01 with 0.84 ± 0.03, difference -0.01 ± 0.0361" in findings
    assert "-0.01 ± 0.0361 (within the seed spread); lowest at λ = 0.1" in findings


def test_findings_without_effective_surrogate(tmp_path):
    rows = tuple(row if row[2] != "effective" else (*row[:2], "opposed", *row[3:]) for row in ROWS)
    _make_output(tmp_path, rows)
    findings = _section(render_report(tmp_path)["markdown"].read_text(encoding="utf-8"), "Findings")
    assert "No surrogate was effective at any λ." in findings
    assert "Effective:" not in findings
    assert "logdet: weak at λ = 0.01; opposed at λ = 0.1." in findings


def test_report_lists_setup_and_environment(rendered):
    _, markdown, _ = rendered
    setup = _section(markdown, "Setup")
    assert "- Data: blobs (n\\_train=512)" in setup
    assert "- Sweep: surrogates none, logdet, softmax, variance; λ 0.01, 0.1; seeds 0, 1" in setup
    assert "- Training: adam at learning rate 0.01, 40 steps of batch 32" in setup
    assert "those of an SGD step" in setup
    assert "- Probe: forces measured every 5 step(s), with the realized entropy change" in setup
    assert "| r\\_min | 0.05 | median relative strength |" in _section(markdown, "Regime thresholds")
    assert "| torch | 2.13.0 |" in _section(markdown, "Environment")


def test_missing_summary_raises(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        render_report(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert "hclm run --out" in str(error.value)


def test_summary_without_results_raises(tmp_path):
    summary = _make_output(tmp_path)
    del summary["results"]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="'results'"):
        render_report(tmp_path)


def test_summary_invalid_json_raises(tmp_path):
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        render_report(tmp_path)


def test_load_skips_invalid_result(tmp_path, caplog):
    _make_output(tmp_path)
    broken = tmp_path / "runs" / "broken-run"
    broken.mkdir()
    (broken / "result.json").write_text("{truncated")
    missing = tmp_path / "runs" / "no-result"
    missing.mkdir()
    with caplog.at_level(logging.WARNING, logger="hclm.report.render"):
        records = load_run_records(tmp_path)
    assert "broken-run" not in records
    assert "no-result" not in records
    assert len(records) == len(ROWS) * len(SEEDS)
    assert "broken-run" in caplog.text
    assert "no-result" in caplog.text


def test_load_reads_step_columns(tmp_path):
    _make_output(tmp_path)
    records = load_run_records(tmp_path)
    diverged = records[DIVERGED_RUN]["steps"]
    assert diverged["step"].size == STEPS // 3
    assert all(values.size == STEPS // 3 for values in diverged.values())
    empty = records[EMPTY_FORCES_RUN]["steps"]
    for column in FORCE_COLUMNS:
        assert np.isnan(empty[column]).all(), column
    assert np.isnan(records["none-seed0"]["steps"]["entropy"]).all()
    measured = records["logdet-lam0.1-seed0"]["steps"]["relative_strength"]
    assert np.isfinite(measured).sum() == STEPS // MEASURE_EVERY


def test_render_without_run_folders(tmp_path):
    _make_output(tmp_path)
    for folder in (tmp_path / "runs").iterdir():
        (folder / "steps.csv").unlink()
    paths = render_report(tmp_path)
    for name in PLOT_NAMES[:4]:  # the entropy-flow plot needs run records
        assert paths[name].read_bytes()[:8] == PNG_SIGNATURE, name


def test_render_with_empty_results(tmp_path):
    summary = {"config": {}, "environment": {}, "thresholds": {}, "results": []}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    paths = render_report(tmp_path)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    for name in PLOT_NAMES[:4]:  # the entropy-flow plot needs run records
        assert paths[name].read_bytes()[:8] == PNG_SIGNATURE, name
    assert "summary.json lists no results" in _section(markdown, "Findings")


def test_html_escapes_text(tmp_path):
    row = _summary_row("<b>odd</b>", 0.1, "effective", 0.9, 0.01, 0)
    summary = {"config": {"data": {"name": "a & b"}}, "thresholds": {}, "results": [row]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html_text = render_report(tmp_path)["html"].read_text(encoding="utf-8")
    assert "<b>odd</b>" not in html_text
    assert "&lt;b&gt;odd&lt;/b&gt;" in html_text
    assert "a &amp; b" in html_text


def test_control_timeline_for_pi_runs(tmp_path):
    from hclm.experiments import parse_config, run_sweep

    config = parse_config(
        {
            "control": {"kind": "pi"},
            "sweep": {"surrogates": ["none", "logdet"], "lams": [1.0], "seeds": [0]},
            "train": {"steps": 20},
        }
    )
    run_sweep(config, tmp_path)
    paths = render_report(tmp_path)
    assert paths["control_timeline"].read_bytes()[:8] == PNG_SIGNATURE
    assert "(plots/control_timeline.png)" in (tmp_path / "report.md").read_text()


def test_scenario_section_for_shift(tmp_path):
    from hclm.experiments import parse_config, run_sweep

    config = parse_config(
        {
            "scenario": {"kind": "shift", "shift": "noise", "noise": 0.5, "at": 10},
            "sweep": {"surrogates": ["none", "logdet"], "lams": [0.1], "seeds": [0, 1]},
            "train": {"steps": 20},
        }
    )
    run_sweep(config, tmp_path)
    render_report(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    section = _section(markdown, "Scenario")
    assert "noise at step 10" in section
    assert "| logdet | 0.1 |" in section
    assert "×2" in section
