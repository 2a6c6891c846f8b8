"""Tests of the entropy flow bookkeeping on real runs and of the η² scaling of its residual."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from hclm.dynamics.flow import EncoderWithHead, entropy_flow, plot_entropy_flow, residual_scaling
from hclm.experiments import ExperimentConfig, RunSpec, load_dataset, train_run
from hclm.experiments.models import MLPEncoder
from hclm.experiments.runner import write_run
from hclm.forces import ForceProbe
from hclm.surrogates import logdet_entropy

ENTROPY_EPS = 1e-3
LAM = 0.1
# On these step sizes the η³ term is below 1% of the η² term for this model (measured local slopes
# 2.000–2.003). The smallest residual, about 3e-9 nats, stays far above the float64 rounding of ΔH,
# which is about |H| ≈ 27 nats times 2⁻⁵² ≈ 6e-15.
ETAS = np.logspace(-5, -3, 5)
# np.cumsum and a Python loop add the same floats in the same order; 1e-12 covers a different
# accumulation order of up to a few hundred terms of similar size (n·2⁻⁵² ≈ 1e-13).
SUM_RTOL = 1e-12


def digits_batch(rows: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``rows`` standardized digits in float64 with their labels."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float64)
    x = (x - x.mean(dim=0)) / (x.std(dim=0) + 1e-9)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:rows]
    return x[order], torch.tensor(digits.target)[order]


def make_model(seed: int = 0) -> EncoderWithHead:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return EncoderWithHead(MLPEncoder(64, [64], 16, "tanh"), nn.Linear(16, 10)).double()


def probe_records(steps: int = 12, lr: float = 0.05) -> list:
    """Train the digits MLP with plain SGD under a probe and return its records."""
    model = make_model()
    x, y = digits_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    probe = ForceProbe(optimizer=optimizer, schedule=1)
    entropy = partial(logdet_entropy, eps=ENTROPY_EPS)
    for step in range(steps):
        batch = slice(32 * (step % 8), 32 * (step % 8) + 32)
        optimizer.zero_grad(set_to_none=True)
        z, logits = model(x[batch])
        probe.backward(F.cross_entropy(logits, y[batch]), entropy(z), lam=LAM, step=step)
        optimizer.step()
        with torch.no_grad():
            probe.record_realized(entropy(model(x[batch])[0]))
    return probe.all_records()


@pytest.fixture(scope="module")
def scaling():
    return residual_scaling(make_model, digits_batch(), LAM, ETAS, partial(logdet_entropy, eps=ENTROPY_EPS))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    config = ExperimentConfig()
    config.model.hidden = [32]
    config.model.representation_dim = 8
    config.train.steps = 24
    config.probe.every = 3
    dataset = load_dataset(config.data)
    output = train_run(config, dataset, RunSpec("logdet", 0.1, 0))
    folder = tmp_path_factory.mktemp("run")
    write_run(output, folder)
    return folder, output


# Residual scaling ------------------------------------------------------------------------------


def test_residual_slope_is_two(scaling):
    assert 1.8 <= scaling.slope <= 2.2, scaling.residual


def test_residual_below_first_order(scaling):
    first_order = np.abs(scaling.injection + scaling.dissipation)
    assert np.all(np.abs(scaling.residual) < 0.05 * first_order), (scaling.residual, first_order)


def test_residual_is_delta_minus_flow(scaling):
    expected = scaling.delta_h - (scaling.injection + scaling.dissipation)
    np.testing.assert_allclose(scaling.residual, expected, rtol=0, atol=1e-15)


def test_scaling_rejects_one_eta():
    with pytest.raises(ValueError, match="at least two distinct"):
        residual_scaling(make_model, digits_batch(32), LAM, [1e-3], "logdet")


def test_scaling_rejects_negative_eta():
    with pytest.raises(ValueError, match="finite number > 0"):
        residual_scaling(make_model, digits_batch(32), LAM, [1e-3, -1e-3], "logdet")


# Cumulative sums -------------------------------------------------------------------------------


def test_cumulative_matches_naive_loop():
    records = probe_records()
    flow = entropy_flow(records)
    running = {"injection": 0.0, "dissipation": 0.0, "delta_h": 0.0, "residual": 0.0}
    expected = {name: [] for name in running}
    for record in records:
        running["injection"] += record.injection
        running["dissipation"] += record.dissipation
        running["delta_h"] += record.delta_h
        running["residual"] += record.delta_h - (record.injection + record.dissipation)
        for name, value in running.items():
            expected[name].append(value)
    np.testing.assert_allclose(flow.cumulative_injection, expected["injection"], rtol=SUM_RTOL)
    np.testing.assert_allclose(flow.cumulative_dissipation, expected["dissipation"], rtol=SUM_RTOL)
    np.testing.assert_allclose(flow.cumulative_delta_h, expected["delta_h"], rtol=SUM_RTOL)
    np.testing.assert_allclose(flow.cumulative_residual, expected["residual"], rtol=SUM_RTOL, atol=1e-15)


def test_balance_closes():
    balance = entropy_flow(probe_records()).balance()
    total = balance["injection"] + balance["dissipation"] + balance["residual"]
    assert math.isclose(balance["delta_h"], total, rel_tol=SUM_RTOL, abs_tol=1e-14)


def test_flow_skips_missing_delta():
    rows = [
        {"step": 0, "injection": 0.5, "dissipation": -0.2, "delta_h": 0.31},
        {"step": 1, "injection": 0.4, "dissipation": -0.1, "delta_h": None},
        {"step": 2, "injection": 0.3, "dissipation": -0.1, "delta_h": 0.19},
    ]
    flow = entropy_flow(rows)
    assert flow.cumulative_injection[-1] == pytest.approx(1.2)
    assert flow.cumulative_delta_h[-1] == pytest.approx(0.5)
    assert flow.balance()["realized_steps"] == 2


def test_flow_sorts_steps():
    rows = [
        {"step": 4, "injection": 1.0, "dissipation": 0.0, "delta_h": 1.0},
        {"step": 2, "injection": 2.0, "dissipation": 0.0, "delta_h": 2.0},
    ]
    np.testing.assert_array_equal(entropy_flow(rows).steps, [2, 4])


# steps.csv of the runner -------------------------------------------------------------------------


def test_reads_runner_steps_csv(run_folder):
    folder, output = run_folder
    flow = entropy_flow(folder / "steps.csv")
    measured = [row for row in output.rows if row.get("injection") is not None and math.isfinite(row["injection"])]
    assert flow.steps.tolist() == [row["step"] for row in measured]
    np.testing.assert_array_equal(flow.injection, [row["injection"] for row in measured])
    np.testing.assert_array_equal(flow.delta_h, [row["delta_h"] for row in measured])


def test_csv_matches_columns(run_folder):
    folder, output = run_folder
    from_csv = entropy_flow(folder / "steps.csv")
    columns = {name: [row.get(name) for row in output.rows] for name in ("step", "injection", "dissipation", "delta_h")}
    np.testing.assert_array_equal(from_csv.cumulative_residual, entropy_flow(columns).cumulative_residual)


def test_csv_missing_column(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,injection,delta_h\n0,0.1,0.1\n")
    with pytest.raises(ValueError, match="no column 'dissipation'"):
        entropy_flow(path)


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="steps file not found"):
        entropy_flow(tmp_path / "absent.csv")


def test_unmeasured_run_rejected(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,injection,dissipation,delta_h\n0,,,\n1,,,\n")
    with pytest.raises(ValueError, match="no step with a finite injection"):
        entropy_flow(path)


def test_text_cell_rejected():
    with pytest.raises(ValueError, match="not a number"):
        entropy_flow([{"step": 0, "injection": "high", "dissipation": 0.0, "delta_h": 0.0}])


# Plot ------------------------------------------------------------------------------------------


def test_plot_writes_png(tmp_path, run_folder):
    folder, _ = run_folder
    path = plot_entropy_flow({"digits run": folder / "steps.csv", "probe": probe_records()}, tmp_path / "flow.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="records_by_label is empty"):
        plot_entropy_flow({}, tmp_path / "flow.png")
