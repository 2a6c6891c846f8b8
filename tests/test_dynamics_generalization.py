"""Tests of the Gaussian-channel information bound and of the noise sweep's generalization bound."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import typer
from pydantic import ValidationError
from scipy import integrate, stats
from typer.testing import CliRunner

from hclm.cli_theory import register
from hclm.dynamics.generalization import (
    NoiseSweepConfig,
    class_conditional_information,
    count_entropy_bound,
    gaussian_channel_bound,
    mutual_information_gap_bound,
    run_noise_sweep,
)

# Closed forms and the bound evaluate the same logarithms in float64; 1e-12 covers rounding.
FORMULA_RTOL = 1e-12

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise")
    return run_noise_sweep(NoiseSweepConfig.quick(), folder), folder


def joint_gaussian_information(covariance: np.ndarray, sigma: float) -> float:
    """Return I(X; X + σξ) for X ~ N(0, Σ) from the log-determinants of the joint covariance."""
    d = covariance.shape[0]
    noisy = covariance + sigma**2 * np.eye(d)
    joint = np.block([[covariance, covariance], [covariance, noisy]])
    return 0.5 * (np.linalg.slogdet(covariance)[1] + np.linalg.slogdet(noisy)[1] - np.linalg.slogdet(joint)[1])


def binary_input_information(sigma: float) -> float:
    """Return I(X; X + σξ) for X uniform on {−1, +1} by numerical integration of h(X + σξ)."""

    def density(z: float) -> float:
        return 0.5 * (stats.norm.pdf(z, -1.0, sigma) + stats.norm.pdf(z, 1.0, sigma))

    def integrand(z: float) -> float:
        value = density(z)
        return -value * math.log(value) if value > 0 else 0.0

    limit = 1.0 + 12.0 * sigma
    output_entropy, _ = integrate.quad(integrand, -limit, limit, limit=200, epsabs=1e-12)
    noise_entropy = 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    return output_entropy - noise_entropy


# Gaussian channel ------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "sigma"), [(1.0, 1.0), (3.0, 0.1), (0.2, 2.0)])
def test_channel_one_dim_closed_form(scale, sigma):
    correlation_sq = scale**2 / (scale**2 + sigma**2)
    expected = -0.5 * math.log(1.0 - correlation_sq)
    assert gaussian_channel_bound(np.array([[scale**2]]), sigma) == pytest.approx(expected, rel=FORMULA_RTOL)


def test_channel_matches_joint_gaussian():
    rng = np.random.default_rng(0)
    factor = rng.standard_normal((4, 4))
    covariance = factor @ factor.T + 0.1 * np.eye(4)
    expected = joint_gaussian_information(covariance, 0.7)
    assert gaussian_channel_bound(covariance, 0.7) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_channel_bounds_binary_input(sigma):
    exact = binary_input_information(sigma)
    assert exact <= gaussian_channel_bound(np.array([[1.0]]), sigma)
    assert exact > 0


def test_channel_singular_covariance():
    covariance = np.diag([2.0, 0.0])
    assert gaussian_channel_bound(covariance, 1.0) == pytest.approx(0.5 * math.log(3.0), rel=FORMULA_RTOL)


def test_class_sum_of_channels():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((60, 3))
    labels = np.repeat([0, 1, 2], 20)
    expected = sum(gaussian_channel_bound(np.cov(z[labels == c], rowvar=False), 0.5) for c in range(3))
    assert class_conditional_information(z, labels, 0.5) == pytest.approx(expected, rel=FORMULA_RTOL)


def test_count_entropy_above_multinomial():
    samples, probabilities = 5, np.array([0.5, 0.3, 0.2])
    entropy = 0.0
    for counts in itertools.product(range(samples + 1), repeat=2):
        last = samples - sum(counts)
        if last < 0:
            continue
        probability = stats.multinomial.pmf([*counts, last], samples, probabilities)
        entropy -= probability * math.log(probability)
    assert entropy <= count_entropy_bound(samples, 3)


def test_gap_bound_formula():
    assert mutual_information_gap_bound(8.0, 100) == pytest.approx(math.sqrt(8.0 / 200), rel=FORMULA_RTOL)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf])
def test_channel_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        gaussian_channel_bound(np.eye(2), sigma)


def test_config_rejects_zero_sigma():
    with pytest.raises(ValidationError, match="every sigma must be a finite number > 0"):
        NoiseSweepConfig(sigmas=[0.1, 0.0])


def test_channel_rejects_negative_covariance():
    with pytest.raises(ValueError, match="negative eigenvalue"):
        gaussian_channel_bound(np.diag([1.0, -1.0]), 1.0)


# Noise sweep -----------------------------------------------------------------------------------


def test_bound_above_mean_gap(quick_sweep):
    summary, _ = quick_sweep
    for row in summary["by_sigma"]:
        assert row["head_gap_mean"] <= row["head_bound_mean"], row["sigma"]


def test_bound_above_every_run_gap(quick_sweep):
    summary, _ = quick_sweep
    for row in summary["runs"]:
        assert abs(row["head_gap"]) <= row["head_bound"], (row["sigma"], row["seed"])


def test_information_falls_with_sigma(quick_sweep):
    summary, _ = quick_sweep
    information = [row["channel_information_mean"] for row in summary["by_sigma"]]
    assert all(later < earlier for earlier, later in zip(information, information[1:]))


def test_sweep_writes_outputs(quick_sweep):
    summary, folder = quick_sweep
    stored = json.loads((folder / "summary.json").read_text())
    assert [row["sigma"] for row in stored["by_sigma"]] == summary["config"]["sigmas"]
    assert (folder / "generalization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Xu & Raginsky" in (folder / "report.md").read_text()


# Command line ----------------------------------------------------------------------------------


def make_app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_generalization_quick(tmp_path):
    result = runner.invoke(make_app(), ["generalization", "--quick", "--sigmas", "0.3,1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["config"]["sigmas"] == [0.3, 1.0]


def test_cli_rejects_zero_sigma(tmp_path):
    result = runner.invoke(make_app(), ["generalization", "--sigmas", "0,1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "error: every sigma must be a finite number > 0" in result.output


def test_cli_rejects_text_sigma(tmp_path):
    result = runner.invoke(make_app(), ["generalization", "--sigmas", "small", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "is not a number" in result.output
