"""End-to-end tests of the hclm command: a quick sweep on digits and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hclm.cli import app

REQUIRED_RESULT_KEYS = (
    "surrogate",
    "lam",
    "seeds",
    "relative_strength_median",
    "alignment_median",
    "persistence_median",
    "volatility",
    "regime",
    "injection_total",
    "dissipation_total",
    "test_accuracy_mean",
    "test_accuracy_std",
    "probe_accuracy_mean",
    "effective_rank_mean",
)
FORCE_KEYS = (
    "relative_strength_median",
    "alignment_median",
    "persistence_median",
    "volatility",
    "regime",
    "injection_total",
    "dissipation_total",
)
SURROGATES = ("none", "softmax", "variance", "logdet", "coding_rate")

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("quick") / "out"
    result = runner.invoke(app, ["run", "--quick", "--out", str(out)])
    return out, result


def test_quick_run_exits_cleanly(quick_run):
    out, result = quick_run
    assert result.exit_code == 0, result.output
    assert str(out) in result.output


def test_quick_run_writes_report_files(quick_run):
    out, _ = quick_run
    for name in ("summary.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    plots = list((out / "plots").glob("*.png"))
    assert len(plots) >= 4


def test_summary_has_every_key_for_five_surrogates(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"config", "environment", "results"}
    assert {row["surrogate"] for row in summary["results"]} == set(SURROGATES)
    for row in summary["results"]:
        missing = [key for key in REQUIRED_RESULT_KEYS if key not in row]
        assert not missing, (row["surrogate"], missing)


def test_force_keys_null_for_none(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    (baseline,) = [row for row in summary["results"] if row["surrogate"] == "none"]
    for key in FORCE_KEYS:
        assert baseline[key] is None, key
    for row in summary["results"]:
        if row["surrogate"] != "none":
            assert row["regime"] in ("weak", "opposed", "unstable", "effective")


def test_environment_names_versions_and_seeds(quick_run):
    out, _ = quick_run
    environment = json.loads((out / "summary.json").read_text())["environment"]
    assert environment["packages"]["torch"]
    assert environment["seeds"] == [0]
    assert environment["cpu_count"] >= 1


def test_per_run_records_are_written(quick_run):
    out, _ = quick_run
    folders = sorted((out / "runs").iterdir())
    assert len(folders) == 9
    with (out / "runs" / "logdet-lam0.1-seed0" / "steps.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 150
    measured = [row for row in rows if row["strength"]]
    assert len(measured) == 150
    assert float(measured[0]["relative_strength"]) > 0


def test_report_command_rerenders(quick_run):
    out, _ = quick_run
    (out / "report.html").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()


def test_rerun_resumes_without_training(quick_run, tmp_path):
    out, _ = quick_run
    before = json.loads((out / "summary.json").read_text())
    result = runner.invoke(app, ["run", "--quick", "--out", str(out)])
    after = json.loads((out / "summary.json").read_text())
    assert result.exit_code == 0, result.output
    assert after["results"] == before["results"]


def _write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  lrr: 0.1\n", "train.lrr"),
        ("sweep:\n  surrogates: [none, entropyx]\n", "entropyx"),
        ("sweep:\n  lams: [0.1, -1]\n", "lam"),
        ("train:\n  optimizer: rmsprop\n", "'sgd' or 'adam'"),
        ("data:\n  name: npz\n  path: /nonexistent/data.npz\n", "not found"),
    ],
)
def test_bad_config_is_rejected(tmp_path, text, expected):
    result = runner.invoke(app, ["run", "--config", str(_write_config(tmp_path, text)), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert expected in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "absent.yaml" in result.output


def test_nan_rows_in_user_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 5))
    x[7, 2] = np.nan
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(40) % 2)
    config = _write_config(tmp_path, f"data:\n  name: npz\n  path: {tmp_path / 'data.npz'}\n")
    result = runner.invoke(app, ["run", "--config", str(config), "--quick", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "sample 7, column 2" in result.output


def test_report_without_summary(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "summary.json" in result.output


def test_help_lists_options():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--config", "--quick", "--workers", "--backend", "--address"):
        assert option in result.output


def test_out_is_regular_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a folder")
    result = runner.invoke(app, ["run", "--quick", "--out", str(target)])
    assert result.exit_code == 2
    assert "is not a folder" in result.output


def test_out_inside_regular_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a folder")
    result = runner.invoke(app, ["run", "--quick", "--out", str(target / "sub")])
    assert result.exit_code == 2
    assert f"is inside {target}, which is a file; pass a folder to --out" in result.output


def test_error_keeps_square_brackets(tmp_path):
    missing = tmp_path / "[abc]x.yaml"
    result = runner.invoke(app, ["run", "--config", str(missing)])
    assert result.exit_code == 2
    assert f"config file not found: {missing}" in " ".join(result.output.split())


def test_unknown_backend_and_stray_address():
    unknown = runner.invoke(app, ["run", "--quick", "--backend", "dask"])
    stray = runner.invoke(app, ["run", "--quick", "--address", "auto"])
    assert unknown.exit_code == 2
    assert "unknown backend 'dask'; choose one of local, ray" in unknown.output
    assert stray.exit_code == 2
    assert "needs the ray backend; add --backend ray or drop --address" in stray.output


def test_data_error_before_output_folder(tmp_path):
    config = _write_config(tmp_path, f"data:\n  name: npz\n  path: {tmp_path / 'absent.npz'}\n")
    result = runner.invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert not (tmp_path / "o").exists()


def test_rerun_reports_resumed_runs(quick_run):
    out, _ = quick_run
    result = runner.invoke(app, ["run", "--quick", "--out", str(out)])
    assert "Resuming: 9 of 9 runs" in result.output
