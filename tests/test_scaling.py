"""Tests of the power-law fit, the balance ODE, the balance check and the ``hclm scaling`` experiment."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hclm.cli_scaling import register
from hclm.dynamics.scaling import (
    balance_check,
    balance_ode_solution,
    fit_power_law,
    integrate_balance_ode,
)
from hclm.experiments.scaling import (
    BALANCE_KEYS,
    FIT_KEYS,
    PLOT_FILES,
    SUMMARY_KEYS,
    ScalingConfig,
    parse_scaling_config,
    plan_scaling_runs,
    quick_scaling_config,
    run_scaling,
    subset_train,
)
from hclm.experiments.config import DataConfig
from hclm.experiments.data import load_dataset

TRUTH = {"r_inf": 0.05, "amplitude": 2.0, "alpha": 0.5}
SIZES = np.logspace(1, 4, 16)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def true_curve(x: np.ndarray, r_inf: float = TRUTH["r_inf"]) -> np.ndarray:
    return r_inf + TRUTH["amplitude"] * x ** (-TRUTH["alpha"])


@pytest.mark.parametrize("r_inf", [0.05, 0.0])
def test_fit_recovers_noiseless_curve(r_inf):
    fit = fit_power_law(SIZES, true_curve(SIZES, r_inf), n_bootstrap=0)
    # The cost is 0 at the truth and the solver tolerances are 1e-12. The Jacobian of this design
    # has a condition number below 100, and the measured errors are below 2e-9, so 1e-6 is a wide margin.
    assert fit.r_inf == pytest.approx(r_inf, abs=1e-6)
    assert fit.amplitude == pytest.approx(TRUTH["amplitude"], rel=1e-6)
    assert fit.alpha == pytest.approx(TRUTH["alpha"], rel=1e-6)
    assert fit.residual_rms < 1e-8


def test_fit_intervals_cover_truth():
    # 50 noisy curves with 5 % log-normal noise, each with a nominal 95 % interval from 150
    # resamples. If the true coverage is 95 %, the count of covering intervals is Binomial(50, 0.95)
    # with mean 47.5 and standard deviation 1.5. The threshold of 45 (90 %) is 1.7 standard
    # deviations below the mean, so another seed would fail with probability P(X ≤ 44) ≈ 0.04 per
    # parameter. 50 repeats keep this test near 10 s on 2 cores.
    repeats, resamples = 50, 150
    rng = np.random.default_rng(0)
    clean = true_curve(SIZES)
    hits = {name: 0 for name in TRUTH}
    for repeat in range(repeats):
        noisy = clean * np.exp(0.05 * rng.standard_normal(len(SIZES)))
        fit = fit_power_law(SIZES, noisy, n_bootstrap=resamples, level=0.95, seed=repeat)
        for name, value in TRUTH.items():
            low, high = fit.intervals[name]
            hits[name] += int(low <= value <= high)
    assert hits["r_inf"] >= 45, hits
    assert hits["amplitude"] >= 45, hits
    assert hits["alpha"] >= 45, hits


def test_fit_percentile_interval_contains_estimate():
    rng = np.random.default_rng(3)
    noisy = true_curve(SIZES) * np.exp(0.05 * rng.standard_normal(len(SIZES)))
    fit = fit_power_law(SIZES, noisy, n_bootstrap=100, interval="percentile", seed=1)
    low, high = fit.intervals["alpha"]
    assert low < fit.alpha < high
    assert fit.bootstrap_samples.shape == (100 - fit.failed_resamples, 3)


def test_fit_band_brackets_curve():
    rng = np.random.default_rng(4)
    noisy = true_curve(SIZES) * np.exp(0.05 * rng.standard_normal(len(SIZES)))
    fit = fit_power_law(SIZES, noisy, n_bootstrap=100, seed=2)
    low, high = fit.band(SIZES)
    assert np.all(low <= high)
    assert np.mean((low <= fit.predict(SIZES)) & (fit.predict(SIZES) <= high)) == 1.0


def test_fit_robust_loss_resists_outlier():
    values = true_curve(SIZES)
    values[5] *= 3.0
    robust = fit_power_law(SIZES, values, n_bootstrap=0, loss="soft_l1", f_scale=0.05)
    plain = fit_power_law(SIZES, values, n_bootstrap=0, loss="linear")
    assert abs(robust.alpha - TRUTH["alpha"]) < abs(plain.alpha - TRUTH["alpha"])


@pytest.mark.parametrize(
    ("x", "r", "message"),
    [
        ([1, 2, 0, 4], [1, 1, 1, 1], r"x\[2\] = 0"),
        ([1, 2, -3, 4], [1, 1, 1, 1], r"x\[2\] = -3"),
        ([1, 2, 3, 4], [1, 0.5, 0.0, 0.2], r"r\[2\] = 0"),
        ([1, 2, 3, 4], [1, 0.5, -0.1, 0.2], r"r\[2\] = -0.1"),
        ([1, 2, 3, 4], [1, math.nan, 0.3, 0.2], r"r\[1\] = nan"),
        ([1, math.inf, 3, 4], [1, 0.5, 0.3, 0.2], r"x\[1\] = inf"),
        ([1, 2, 3], [1, 0.5, 0.3], "at least 4 points"),
        ([1, 2, 3, 4], [1, 0.5, 0.3], "same length, got 4 and 3"),
        ([1, 1, 2, 2], [1, 0.9, 0.5, 0.4], "3 distinct"),
        ([[1, 2, 3, 4]], [[1, 0.5, 0.3, 0.2]], "1-D"),
    ],
)
def test_fit_rejects_bad_input(x, r, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, r, n_bootstrap=0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"loss": "l2"}, "unknown loss 'l2'"),
        ({"interval": "bca"}, "unknown interval method 'bca'"),
        ({"f_scale": 0.0}, "f_scale"),
        ({"level": 1.0}, "level"),
        ({"n_bootstrap": -1}, "n_bootstrap"),
        ({"alpha_bounds": (2.0, 1.0)}, "alpha_bounds"),
    ],
)
def test_fit_rejects_bad_option(option, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(SIZES, true_curve(SIZES), **option)


def test_ode_closed_form_matches_integration():
    times = np.concatenate([[0.0], np.logspace(-2, 5, 60)])
    closed = balance_ode_solution(times, eps0=0.8, a=0.3, alpha=0.7)
    numeric = integrate_balance_ode(times, eps0=0.8, a=0.3, alpha=0.7)
    # LSODA keeps the local error of log ε near rtol·|log ε| + atol ≈ 1e-10 per step, and this
    # integration takes under 1000 function calls. The measured maximum error is 1e-9, so 1e-6 is a wide margin.
    np.testing.assert_allclose(numeric, closed, rtol=1e-6)


def test_ode_starts_at_eps0():
    assert balance_ode_solution(0.0, eps0=0.8, a=0.3, alpha=0.7) == pytest.approx(0.8, rel=1e-12)


def test_ode_large_time_slope_is_minus_alpha():
    alpha = 0.7
    times = np.logspace(6, 8, 20)
    values = balance_ode_solution(times, eps0=1.0, a=1.0, alpha=alpha)
    slope = np.polyfit(np.log(times), np.log(values), 1)[0]
    # The exact slope is d log ε / d log t = −α·c·t/(1 + c·t) with c = (a/α)·eps0^{1/α}. At t ≥ 1e6
    # it differs from −α by at most α/(c·1e6) ≈ 5e-7.
    assert slope == pytest.approx(-alpha, abs=1e-5)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"eps0": 0.0, "a": 1.0, "alpha": 1.0}, "eps0"),
        ({"eps0": 1.0, "a": -1.0, "alpha": 1.0}, "a must be"),
        ({"eps0": 1.0, "a": 1.0, "alpha": 0.0}, "alpha"),
    ],
)
def test_ode_rejects_bad_parameters(parameters, message):
    with pytest.raises(ValueError, match=message):
        balance_ode_solution([0.0, 1.0], **parameters)


def test_ode_rejects_negative_time():
    with pytest.raises(ValueError, match="t must contain"):
        integrate_balance_ode([-1.0, 1.0], eps0=1.0, a=1.0, alpha=1.0)


def test_balance_exact_cancellation():
    steps = np.arange(400)
    check = balance_check(steps, np.full(400, 2.0), np.full(400, -2.0), windows=4, tolerance=0.2)
    assert check.balanced
    assert check.net_share == pytest.approx(0.0, abs=1e-12)
    assert check.ratio_median == pytest.approx(1.0, rel=1e-12)
    assert check.ratio_spread == pytest.approx(0.0, abs=1e-12)
    assert len(check.windows) == 4


def test_balance_detects_excess_injection():
    steps = np.arange(400)
    check = balance_check(steps, np.full(400, 1.0), np.full(400, -0.5), windows=4, tolerance=0.2)
    # ΣI = 2·|ΣD| in every window, so ρ = 2 and ν = (1 − 0.5)/(1 + 0.5) = 1/3 > 0.2.
    assert not check.balanced
    assert check.ratio_median == pytest.approx(2.0, rel=1e-12)
    assert check.net_share == pytest.approx(1.0 / 3.0, rel=1e-12)
    assert check.balanced_fraction == 0.0


def test_balance_range_starts_after_transient():
    steps = np.arange(1000)
    check = balance_check(steps, np.ones(1000), -np.ones(1000), start_fraction=0.1)
    assert check.start_step == 100
    assert check.end_step == 999


def test_balance_skips_unmeasured_steps():
    steps = np.arange(200)
    injection = np.where(steps % 2 == 0, 1.0, math.nan)
    check = balance_check(steps, injection, -np.ones(200), windows=2)
    assert sum(window.steps for window in check.windows) == int(np.sum(steps[steps >= 19.9] % 2 == 0))


def test_balance_fits_loss_curve():
    steps = np.arange(2000)
    loss = 0.1 + 2.0 * (steps + 1.0) ** -0.5
    check = balance_check(steps, np.ones(2000), -np.ones(2000), loss, n_bootstrap=0)
    # Bin means of a convex curve lie slightly above the curve at the bin's mean step. With 12 bins
    # over one decade, this bias changes α by well under 0.02.
    assert check.loss_fit is not None
    assert check.loss_fit.alpha == pytest.approx(0.5, abs=0.02)
    assert check.ode_rate == pytest.approx(check.loss_fit.alpha * check.loss_fit.amplitude ** (-1 / check.loss_fit.alpha))


def test_balance_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="dissipation has shape"):
        balance_check(np.arange(10), np.ones(10), np.ones(9))


def test_balance_rejects_too_few_steps():
    with pytest.raises(ValueError, match="fewer than windows=4"):
        balance_check(np.arange(3), np.ones(3), -np.ones(3), start_fraction=0.0, windows=4)


def test_subset_is_nested_and_stratified():
    dataset = load_dataset(DataConfig())
    small = subset_train(dataset, 0.1, seed=0)
    large = subset_train(dataset, 0.3, seed=0)
    small_rows = {row.tobytes() for row in small.x_train}
    large_rows = {row.tobytes() for row in large.x_train}
    assert small_rows <= large_rows
    assert np.all(np.bincount(small.y_train, minlength=10) >= 1)
    assert len(small.y_test) == len(dataset.y_test)


def test_plan_shares_run_of_both_axes():
    config = ScalingConfig(datasets=["digits"], surrogates=["none"], seeds=[0], size_steps=80, step_counts=[10, 20, 40, 80])
    assert len(plan_scaling_runs(config)) == len(config.size_fractions) + 4 - 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"sizes": [1, 2]}, "sizes: unknown key"),
        ({"train": {"steps": 100}}, "train.steps is not used"),
        ({"size_fractions": [0.1, 0.2, 1.5, 1.0]}, "(0, 1]"),
        ({"step_counts": [10, 20, 40]}, "at least 4"),
        ({"surrogates": ["none", "nope"]}, "unknown surrogate 'nope'"),
    ],
)
def test_config_rejects_bad_keys(raw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_scaling_config(raw)


@pytest.fixture(scope="module")
def quick_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    out = tmp_path_factory.mktemp("scaling") / "out"
    calls: list[tuple[int, int, str]] = []
    summary = run_scaling(quick_scaling_config(), out, progress=lambda done, total, run_id: calls.append((done, total, run_id)))
    return out, summary, calls


def test_quick_run_writes_files(quick_output):
    out, _, _ = quick_output
    assert (out / "summary.json").is_file()
    assert (out / "report.md").is_file()
    for name in PLOT_FILES.values():
        assert (out / "plots" / name).read_bytes()[:8] == PNG_MAGIC, name


def test_quick_run_summary_keys(quick_output):
    out, _, _ = quick_output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert tuple(summary) == SUMMARY_KEYS
    assert all(tuple(row) == FIT_KEYS for row in summary["fits"])
    assert all(tuple(row) == BALANCE_KEYS for row in summary["balance"])


def test_quick_run_fits_every_axis(quick_output):
    _, summary, _ = quick_output
    config = quick_scaling_config()
    expected = {(d, s, a) for d in config.datasets for s in config.surrogates for a in ("size", "steps")}
    assert {(row["dataset"], row["surrogate"], row["axis"]) for row in summary["fits"]} == expected
    assert all(row["fit"] is not None for row in summary["fits"])


def test_quick_run_checks_balance_with_surrogates(quick_output):
    _, summary, _ = quick_output
    config = quick_scaling_config()
    with_entropy = [name for name in config.surrogates if name != "none"]
    assert {(row["dataset"], row["surrogate"]) for row in summary["balance"]} == {
        (d, s) for d in config.datasets for s in with_entropy
    }
    assert all(math.isfinite(entry["net_share"]) for row in summary["balance"] for entry in row["per_seed"])


def test_quick_run_writes_every_run(quick_output):
    out, _, calls = quick_output
    plan = plan_scaling_runs(quick_scaling_config())
    for run in plan:
        assert (out / "runs" / run.run_id / "result.json").is_file(), run.run_id
        assert (out / "runs" / run.run_id / "steps.csv").is_file(), run.run_id
    assert calls[-1][:2] == (len(plan), len(plan))
    assert {call[2] for call in calls} == {run.run_id for run in plan}


def test_quick_run_report_is_conditional(quick_output):
    out, _, _ = quick_output
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "not a derivation of neural scaling laws" in report
    assert "credible" in report


def test_quick_run_resumes(quick_output):
    out, _, _ = quick_output
    plan = plan_scaling_runs(quick_scaling_config())
    stamps = {run.run_id: (out / "runs" / run.run_id / "result.json").stat().st_mtime_ns for run in plan}
    calls: list[tuple[int, int, str]] = []
    run_scaling(quick_scaling_config(), out, progress=lambda done, total, run_id: calls.append((done, total, run_id)))
    assert all(done == len(plan) for done, _, _ in calls)
    assert {run.run_id: (out / "runs" / run.run_id / "result.json").stat().st_mtime_ns for run in plan} == stamps


def cli_app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """Local test app that contains the scaling command."""

    return app


def write_config(folder: Path, text: str) -> Path:
    path = folder / "scaling.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_runs_small_config(tmp_path):
    config = write_config(tmp_path, "datasets: [digits]\nsurrogates: [none]\n")
    result = CliRunner().invoke(cli_app(), ["scaling", "--quick", "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "Report" in result.output
    assert (tmp_path / "o" / "summary.json").is_file()


def test_cli_rejects_unknown_key(tmp_path):
    config = write_config(tmp_path, "sizes: [1, 2]\n")
    result = CliRunner().invoke(cli_app(), ["scaling", "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "sizes: unknown key" in result.output


def test_cli_rejects_missing_config(tmp_path):
    result = CliRunner().invoke(cli_app(), ["scaling", "--config", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "absent.yaml" in result.output


def test_cli_rejects_file_as_out(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a folder", encoding="utf-8")
    result = CliRunner().invoke(cli_app(), ["scaling", "--quick", "--out", str(target)])
    assert result.exit_code == 2
    assert "is not a folder" in result.output


def test_cli_rejects_out_inside_file(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a folder", encoding="utf-8")
    result = CliRunner().invoke(cli_app(), ["scaling", "--quick", "--out", str(target / "sub")])
    assert result.exit_code == 2
    assert "which is a file; pass a folder to --out" in result.output


def test_cli_rejects_address_without_ray():
    result = CliRunner().invoke(cli_app(), ["scaling", "--quick", "--address", "auto"])
    assert result.exit_code == 2
    assert "needs the ray backend" in result.output


def test_cli_help_lists_options():
    result = CliRunner().invoke(cli_app(), ["scaling", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--config", "--quick", "--workers"):
        assert option in result.output
