"""Tests of the experiment pieces: data loading, metrics, runs and aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hclm.experiments import (
    ExperimentConfig,
    RunSpec,
    effective_rank,
    load_dataset,
    parse_config,
    plan_runs,
    train_run,
)
from hclm.experiments.config import DataConfig, MixtureConfig
from hclm.experiments.data import make_low_rank_mixture
from hclm.experiments.sweep import aggregate_results


def small_config(**train) -> ExperimentConfig:
    config = ExperimentConfig()
    config.model.hidden = [32]
    config.model.representation_dim = 8
    config.train.steps = train.get("steps", 30)
    return config


def test_digits_split_is_stratified():
    dataset = load_dataset(DataConfig())
    train_counts = np.bincount(dataset.y_train) / len(dataset.y_train)
    test_counts = np.bincount(dataset.y_test) / len(dataset.y_test)
    assert dataset.classes == 10
    assert dataset.x_train.shape[1] == 64
    assert np.abs(train_counts - test_counts).max() < 0.01


def test_digits_standardized_on_train():
    dataset = load_dataset(DataConfig())
    assert np.allclose(dataset.x_train.mean(axis=0), 0.0, atol=1e-5)


def test_mixture_has_requested_rank():
    x, y = make_low_rank_mixture(MixtureConfig(samples=500, dim=20, rank=3, noise=0.0))
    singular = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    assert singular[3] < 1e-8 * singular[0]
    assert set(np.unique(y)) == set(range(10))


def test_csv_with_label_column(tmp_path):
    path = tmp_path / "data.csv"
    rows = ["a,b,label"] + [f"{i},{i % 3},{'cat' if i % 2 else 'dog'}" for i in range(20)]
    path.write_text("\n".join(rows) + "\n")
    dataset = load_dataset(DataConfig(name="csv", path=path, label_column="label"))
    assert dataset.classes == 2
    assert dataset.features == 2


def test_csv_missing_label_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="no column 'label'"):
        load_dataset(DataConfig(name="csv", path=path, label_column="label"))


def test_csv_text_in_feature(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\nx,1\n2,0\n3,1\n")
    with pytest.raises(ValueError, match="line 3, column 'a'"):
        load_dataset(DataConfig(name="csv", path=path, label_column="label"))


def test_npz_without_y(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no 'y'"):
        load_dataset(DataConfig(name="npz", path=tmp_path / "d.npz"))


def test_missing_data_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_dataset(DataConfig(name="npz", path=tmp_path / "absent.npz"))


def test_effective_rank_closed_forms():
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=200), rng.normal(size=6))
    # Equal singular values give p_k = 1/d and exp(log d) = d.
    orthogonal, _ = np.linalg.qr(rng.normal(size=(200, 6)))
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(orthogonal, center=False) == pytest.approx(6.0, rel=1e-9)


def test_effective_rank_two_values():
    z = np.diag([3.0, 1.0])
    p = np.array([0.75, 0.25])
    assert effective_rank(z, center=False) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_plan_runs_counts_none_once_per_seed():
    specs = plan_runs(ExperimentConfig())
    assert len(specs) == 3 + 4 * 4 * 3
    assert sum(spec.surrogate == "none" for spec in specs) == 3


def test_run_is_deterministic():
    config = small_config()
    dataset = load_dataset(config.data)
    first = train_run(config, dataset, RunSpec("logdet", 0.1, 3))
    second = train_run(config, dataset, RunSpec("logdet", 0.1, 3))
    assert first.rows == second.rows
    assert first.result["test_accuracy"] == second.result["test_accuracy"]


def test_seeds_change_results():
    config = small_config()
    dataset = load_dataset(config.data)
    first = train_run(config, dataset, RunSpec("logdet", 0.1, 0))
    second = train_run(config, dataset, RunSpec("logdet", 0.1, 1))
    assert first.rows[0]["loss"] != second.rows[0]["loss"]


def test_diverging_run_is_marked_unstable():
    config = small_config(steps=60)
    config.train.optimizer = "sgd"
    config.train.lr = 5.0
    dataset = load_dataset(config.data)
    output = train_run(config, dataset, RunSpec("variance", 1.0, 0))
    assert output.result["diverged"] is True
    assert output.result["forces"]["regime"] == "unstable"
    assert len(output.rows) < 60


def test_aggregate_mean_std_and_regime():
    config = ExperimentConfig()
    forces = {
        "relative_strength_median": 0.5,
        "alignment_median": 0.0,
        "novelty_median": 0.5,
        "persistence_median": 0.9,
        "strength_median": 1.0,
        "volatility": 0.1,
        "regime": "effective",
        "injection_total": 2.0,
        "dissipation_total": -1.0,
        "effective_entropy_share": 2 / 3,
    }
    runs = [
        {"surrogate": "logdet", "lam": 0.1, "seed": seed, "test_accuracy": accuracy, "probe_accuracy": 0.9,
         "effective_rank": 5.0, "diverged": False, "forces": forces}
        for seed, accuracy in ((0, 0.8), (1, 0.9))
    ]
    (row,) = aggregate_results(runs, config)
    assert row["test_accuracy_mean"] == pytest.approx(0.85)
    assert row["test_accuracy_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert row["regime"] == "effective"
    assert row["regime_counts"]["effective"] == 2
    assert row["seeds"] == [0, 1]


def test_unknown_surrogate_parameter():
    with pytest.raises(ValueError, match="epsilon"):
        parse_config({"surrogate_params": {"logdet": {"epsilon": 1.0}}})


def test_csv_nan_cell_names_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,label\n1,0\nnan,1\n2,0\n3,1\n")
    with pytest.raises(ValueError, match="line 3, column 'a'"):
        load_dataset(DataConfig(name="csv", path=path, label_column="label"))


def test_single_class_message(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 2)), y=np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match=r"single class \(0\)"):
        load_dataset(DataConfig(name="npz", path=tmp_path / "d.npz"))


def test_invalid_number_echoes_value():
    with pytest.raises(ValueError, match="'fast'"):
        parse_config({"train": {"lr": "fast"}})


def _share_in_band(rows, low, high, start):
    strengths = np.array([row["relative_strength"] for row in rows[start:]], dtype=float)
    return float(np.mean((strengths >= low) & (strengths <= high)))


def test_pi_controller_holds_band():
    config = ExperimentConfig()
    config.train.steps = 200
    dataset = load_dataset(config.data)
    fixed = train_run(config, dataset, RunSpec("logdet", 1.0, 0))
    config.control.kind = "pi"
    controlled = train_run(config, dataset, RunSpec("logdet", 1.0, 0))
    low, high = config.control.band
    assert _share_in_band(controlled.rows, low, high, start=100) >= 0.8
    assert _share_in_band(fixed.rows, low, high, start=100) <= 0.1
    assert controlled.rows[-1]["lam"] < 1.0


def test_feedback_changes_running_job(tmp_path):
    import threading
    import time

    from hclm.control import write_feedback

    config = ExperimentConfig()
    config.train.steps = 600
    config.control.feedback_every = 1
    dataset = load_dataset(config.data)

    def change_later():
        time.sleep(0.4)
        write_feedback(tmp_path, lam=0.05, source="test")

    writer = threading.Thread(target=change_later)
    writer.start()
    output = train_run(config, dataset, RunSpec("logdet", 0.1, 0), control_dir=tmp_path)
    writer.join()
    events = output.result["feedback_events"]
    assert len(events) == 1
    assert events[0]["accepted"] is True
    changed_at = events[0]["step"]
    assert 0 < changed_at < 599
    assert output.rows[changed_at]["lam"] == 0.1
    assert output.rows[changed_at + 1]["lam"] == 0.05
    assert output.rows[-1]["lam"] == 0.05
