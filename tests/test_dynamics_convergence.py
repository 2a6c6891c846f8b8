"""Tests of the linear-rate predictions for J = L − λH with a linear encoder, against runs on digits."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from hclm.cli_theory import register
from hclm.dynamics.convergence import (
    ConvergenceSettings,
    LinearEntropyProblem,
    contraction_factor,
    digits_regression_data,
    pl_constants,
    run_convergence,
    stochastic_gradient_descent,
    strongly_convex_constants,
)
from hclm.surrogates import logdet_entropy

# Analytic and autograd derivatives of the same float64 function differ by rounding only:
# a few hundred terms of size ≤ 1e2 each, so 1e-9 relative leaves a wide margin over n·2⁻⁵².
DERIVATIVE_RTOL = 1e-9
# The bound may be met with equality at step 0 and where both sides are rounded float64 values.
BOUND_RTOL = 1e-10
# SGD's mean over seeds estimates E[J − J*]; three standard errors of that mean cover its noise.
SGD_STANDARD_ERRORS = 3.0

runner = CliRunner()


def small_problem(lam: float = 0.05, ridge: float = 0.5, eps: float = 0.2, seed: int = 0) -> LinearEntropyProblem:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 6))
    y = rng.standard_normal((40, 3))
    return LinearEntropyProblem(x, y, lam=lam, ridge=ridge, eps=eps)


def torch_objective(problem: LinearEntropyProblem, w: torch.Tensor) -> torch.Tensor:
    """Return J(W) built from the library's logdet surrogate, as an autograd oracle."""
    x = torch.from_numpy(problem.x)
    y = torch.from_numpy(problem.y)
    data = 0.5 * ((x @ w - y) ** 2).sum() / problem.n + 0.5 * problem.ridge * (w**2).sum()
    return data - problem.lam * logdet_entropy(x @ w, eps=problem.eps)


def torch_objective_twice_differentiable(problem: LinearEntropyProblem, flat: torch.Tensor) -> torch.Tensor:
    """Return J(W) with torch.logdet, which supports second derivatives."""
    w = flat.reshape(problem.p, problem.d)
    x = torch.from_numpy(problem.x)
    y = torch.from_numpy(problem.y)
    covariance = torch.from_numpy(problem.covariance)
    data = 0.5 * ((x @ w - y) ** 2).sum() / problem.n + 0.5 * problem.ridge * (w**2).sum()
    entropy = 0.5 * torch.logdet(w.T @ covariance @ w + problem.eps * torch.eye(problem.d, dtype=torch.float64))
    return data - problem.lam * entropy


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    folder = tmp_path_factory.mktemp("convergence")
    return run_convergence(folder, ConvergenceSettings.quick()), folder


def cases(summary_pair) -> dict:
    summary, _ = summary_pair
    return {case["name"]: case for case in summary["cases"]}


# The objective and its derivatives ------------------------------------------------------------


def test_entropy_matches_surrogate():
    problem = small_problem()
    w = np.random.default_rng(1).standard_normal((problem.p, problem.d))
    expected = float(logdet_entropy(torch.from_numpy(problem.x @ w), eps=problem.eps))
    assert problem.entropy(w) == pytest.approx(expected, rel=DERIVATIVE_RTOL)


def test_gradient_matches_autograd():
    problem = small_problem()
    w = torch.from_numpy(np.random.default_rng(2).standard_normal((problem.p, problem.d))).requires_grad_()
    (expected,) = torch.autograd.grad(torch_objective(problem, w), w)
    np.testing.assert_allclose(problem.gradient(w.detach().numpy()), expected.numpy(), rtol=DERIVATIVE_RTOL, atol=1e-12)


def test_hessian_matches_autograd():
    problem = small_problem()
    flat = torch.from_numpy(np.random.default_rng(3).standard_normal(problem.p * problem.d))
    expected = torch.autograd.functional.hessian(lambda v: torch_objective_twice_differentiable(problem, v), flat)
    actual = problem.hessian(flat.numpy().reshape(problem.p, problem.d))
    np.testing.assert_allclose(actual, expected.numpy(), rtol=DERIVATIVE_RTOL, atol=1e-11)


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_hessian_within_global_bounds(scale):
    problem = small_problem(lam=0.2, ridge=0.1, eps=0.05)
    lower, upper = problem.curvature_bounds()
    rng = np.random.default_rng(4)
    for _ in range(5):
        eigenvalues = np.linalg.eigvalsh(problem.hessian(scale * rng.standard_normal((problem.p, problem.d))))
        assert eigenvalues[0] >= lower - 1e-9 * upper
        assert eigenvalues[-1] <= upper + 1e-9 * upper


def test_variance_matches_enumeration():
    problem = small_problem()
    problem = LinearEntropyProblem(problem.x[:7], problem.y[:7], lam=0.05, ridge=0.5, eps=0.2)
    w = np.random.default_rng(5).standard_normal((problem.p, problem.d))
    full = problem.gradient(w)
    batches = list(itertools.combinations(range(problem.n), 3))
    expected = np.mean([np.sum((problem.minibatch_gradient(w, np.array(rows)) - full) ** 2) for rows in batches])
    assert problem.gradient_variance(w, 3) == pytest.approx(expected, rel=1e-10)


def test_pl_inequality_at_random_points():
    x, y = digits_regression_data()
    problem = LinearEntropyProblem(x[:24], y[:24])
    constants = pl_constants(problem)
    rng = np.random.default_rng(6)
    for _ in range(20):
        w = rng.standard_normal((problem.p, problem.d))
        gradient_norm_sq = float(np.sum(problem.gradient(w) ** 2))
        assert gradient_norm_sq >= 2 * constants.mu * problem.objective(w) * (1 - 1e-10)


def test_newton_optimum_is_certified():
    problem = small_problem()
    constants, w_star = strongly_convex_constants(problem, np.zeros((problem.p, problem.d)))
    assert constants.optimum_error < 1e-20
    assert float(np.linalg.norm(problem.gradient(w_star))) < 1e-10


# Gradient descent against the bound -----------------------------------------------------------


@pytest.mark.parametrize("name", ["strongly-convex", "pl"])
def test_gd_bound_every_step(summary, name):
    case = cases(summary)[name]
    floor = case["gap_floor"]
    for run in case["gradient_descent"]:
        gap, bound = np.array(run["gap"]), np.array(run["bound"])
        violations = np.flatnonzero(gap > bound * (1 + BOUND_RTOL) + floor)
        assert violations.size == 0, (run["step_size"], violations[:5])


@pytest.mark.parametrize("name", ["strongly-convex", "pl"])
def test_gd_rate_not_slower(summary, name):
    for run in cases(summary)[name]["gradient_descent"]:
        assert run["measured_contraction"] <= run["predicted_contraction"], run["step_size"]


def test_pl_small_step_near_flow_rate(summary):
    """For least squares the slowest mode decays like e^{−2μt}, so the bound is tight as η → 0."""
    case = cases(summary)["pl"]
    small_step = min(case["gradient_descent"], key=lambda run: run["step_size"])
    predicted = math.log(small_step["predicted_contraction"])
    measured = math.log(small_step["measured_contraction"])
    assert measured / predicted < 1.2


def test_hessian_range_within_constants(summary):
    case = cases(summary)["strongly-convex"]
    low, high = case["hessian_range"]
    assert low >= case["constants"]["mu"]
    assert high <= case["constants"]["smoothness"]


# SGD against the bound ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["strongly-convex", "pl"])
def test_sgd_mean_below_bound(summary, name):
    sgd = cases(summary)[name]["sgd"]
    mean, bound = np.array(sgd["mean_gap"]), np.array(sgd["bound"])
    margin = SGD_STANDARD_ERRORS * np.array(sgd["std_gap"]) / math.sqrt(len(sgd["seeds"]))
    violations = np.flatnonzero(mean > bound * (1 + BOUND_RTOL) + margin)
    assert violations.size == 0, violations[:5]


def test_sgd_reaches_neighbourhood(summary):
    sgd = cases(summary)["strongly-convex"]["sgd"]
    assert sgd["mean_gap"][-1] <= sgd["neighbourhood"]


def test_sgd_pl_has_no_floor(summary):
    sgd = cases(summary)["pl"]["sgd"]
    assert sgd["variance_at_optimum"] < 1e-20


# Outputs and bad input ------------------------------------------------------------------------


def test_outputs_written(summary):
    _, folder = summary
    stored = json.loads((folder / "summary.json").read_text())
    assert [case["name"] for case in stored["cases"]] == ["strongly-convex", "pl"]
    for name in ("convergence-strongly-convex.png", "convergence-pl.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weak_ridge_rejected():
    problem = small_problem(lam=1.0, ridge=0.0, eps=0.01)
    with pytest.raises(ValueError, match="not provably strongly convex"):
        strongly_convex_constants(problem, np.zeros((problem.p, problem.d)))


def test_pl_rejects_more_rows_than_features():
    with pytest.raises(ValueError, match="fewer rows than features"):
        pl_constants(small_problem(lam=0.0, ridge=0.0))


def test_step_size_too_large():
    with pytest.raises(ValueError, match="step_size must be in"):
        contraction_factor(0.1, 2.0, 1.0)


def test_sgd_divergence_reported():
    problem = small_problem()
    start = np.ones((problem.p, problem.d))
    with pytest.raises(ValueError, match="diverged"):
        stochastic_gradient_descent(problem, start, 50.0, 2000, 2, seed=0)


def test_negative_eps_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="eps must be"):
        LinearEntropyProblem(rng.standard_normal((5, 2)), rng.standard_normal((5, 1)), eps=-1.0)


# Command line ----------------------------------------------------------------------------------


def test_cli_convergence_quick(tmp_path):
    app = typer.Typer()
    register(app)
    result = runner.invoke(app, ["convergence", "--quick", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "summary.json").is_file()


def test_cli_convergence_out_is_file(tmp_path):
    app = typer.Typer()
    register(app)
    path = tmp_path / "file.txt"
    path.write_text("x")
    result = runner.invoke(app, ["convergence", "--out", str(path)])
    assert result.exit_code == 2
    assert "error: output path" in result.output


def test_settings_reject_zero_fraction():
    with pytest.raises(ValueError, match="gd_step_fractions"):
        ConvergenceSettings(gd_step_fractions=[1.0, 0.0])
