"""Open-system scenarios: distribution shift, label noise, compute budget and recovery time."""

from __future__ import annotations

import numpy as np
import torch
import pytest

from hclm.experiments.config import DataConfig, parse_config
from hclm.experiments.data import load_dataset
from hclm.experiments.runner import RunSpec, train_run
from hclm.experiments.scenarios import corrupt_labels, recovery_time, rotate_features, rotate_images


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def make_config(steps: int = 30, scenario: dict | None = None):
    raw = {
        "train": {"steps": steps, "batch_size": 64},
        "model": {"hidden": [32], "representation_dim": 8},
        "probe": {"realized": False},
    }
    if scenario is not None:
        raw["scenario"] = scenario
    return parse_config(raw)


def strip_phase(rows):
    return [{key: value for key, value in row.items() if key != "phase"} for row in rows]


def test_default_scenario_matches_explicit_none(digits):
    spec = RunSpec("logdet", 0.1, 0)
    default = train_run(make_config(), digits, spec)
    explicit = train_run(make_config(scenario={"kind": "none"}), digits, spec)
    assert default.rows == explicit.rows
    assert "scenario" not in default.result
    assert "phase" not in default.rows[0]


def test_rotation_by_zero_is_identity(digits):
    rotated = rotate_features(digits.x_test, digits, 0.0)
    np.testing.assert_allclose(rotated, digits.x_test, atol=1e-5)


def test_rotation_by_90_matches_rot90():
    images = np.random.default_rng(0).random((5, 8, 8))
    rotated = rotate_images(images, 90.0)
    expected = np.rot90(images, k=1, axes=(1, 2))
    np.testing.assert_allclose(rotated, expected, atol=1e-9)


def test_label_noise_changes_exact_count():
    y = np.arange(1000) % 10
    noisy = corrupt_labels(y, classes=10, rate=0.25, seed=3)
    changed = noisy != y
    assert changed.sum() == round(0.25 * 1000)
    assert noisy.min() >= 0
    assert noisy.max() <= 9
    np.testing.assert_array_equal(corrupt_labels(y, 10, 0.25, seed=3), noisy)


def test_label_noise_run_differs_from_clean(digits):
    spec = RunSpec("none", 0.0, 0)
    clean = train_run(make_config(steps=10), digits, spec)
    noisy = train_run(make_config(steps=10, scenario={"kind": "label_noise", "rate": 0.5}), digits, spec)
    assert clean.rows[0]["loss"] != noisy.rows[0]["loss"]
    assert noisy.result["scenario"]["rate"] == 0.5


def test_budget_steps_stops_at_step(digits):
    config = make_config(steps=50, scenario={"kind": "budget", "steps": 12})
    output = train_run(config, digits, RunSpec("none", 0.0, 0))
    assert len(output.rows) == 12
    assert output.rows[-1]["step"] == 11
    assert output.result["scenario"]["stopped_by"] == "budget_steps"


def test_budget_seconds_stops_early(digits):
    config = make_config(steps=20_000, scenario={"kind": "budget", "seconds": 0.2})
    output = train_run(config, digits, RunSpec("none", 0.0, 0))
    assert len(output.rows) < 20_000
    assert output.result["scenario"]["stopped_by"] == "budget_seconds"


def test_unreached_budget_reports_train_steps(digits):
    config = make_config(steps=5, scenario={"kind": "budget", "steps": 100})
    output = train_run(config, digits, RunSpec("none", 0.0, 0))
    assert len(output.rows) == 5
    assert output.result["scenario"]["stopped_by"] == "train.steps"


@pytest.mark.parametrize("shift", ["rotation", "noise", "class_swap"])
def test_shift_changes_training_at_step(digits, shift):
    spec = RunSpec("logdet", 0.1, 0)
    plain = train_run(make_config(steps=20), digits, spec)
    scenario = {"kind": "shift", "shift": shift, "at": 10, "angle": 90.0, "noise": 1.0, "swap": [[0, 1], [2, 3]]}
    shifted = train_run(make_config(steps=20, scenario=scenario), digits, spec)
    assert strip_phase(shifted.rows[:10]) == plain.rows[:10]
    assert shifted.rows[10]["loss"] != plain.rows[10]["loss"]
    assert [row["phase"] for row in shifted.rows] == ["before"] * 10 + ["after"] * 10
    summary = shifted.result["scenario"]
    assert 0.0 <= summary["shift_test_accuracy"] <= 1.0
    assert summary["at"] == 10


def test_recovery_time_on_constructed_series():
    # Pre-shift level: mean of the last 2 losses before step 4 = 1.0; threshold 1.1.
    losses = [5.0, 5.0, 1.0, 1.0, 3.0, 1.4, 1.0, 1.0, 1.0]
    # Smoothed post-shift (window 2): step 4 → 3.0, 5 → 2.2, 6 → 1.2, 7 → 1.0, so step 7, 3 after.
    assert recovery_time(losses, at=4, window=2, tolerance=0.1) == 3
    assert recovery_time([1.0, 1.0, 1.05, 1.0], at=2, window=2, tolerance=0.1) == 0
    assert recovery_time([1.0, 1.0, 3.0, 3.0], at=2, window=2, tolerance=0.1) is None
    assert recovery_time([1.0, 1.0], at=2, window=2) is None
    assert recovery_time([1.0, 1.0], at=0, window=2) is None


@pytest.mark.parametrize(
    ("scenario", "key"),
    [
        ({"kind": "label_noise", "rate": -0.1}, "scenario.rate"),
        ({"kind": "label_noise", "rate": 1.0}, "scenario.rate"),
        ({"kind": "shift", "shift": "blur"}, "scenario.shift"),
        ({"kind": "shift", "at": 30}, "scenario.at"),
        ({"kind": "budget"}, "scenario.steps"),
        ({"kind": "shift", "swap": [[0, 0]]}, "scenario.swap"),
    ],
)
def test_bad_scenario_values_raise(scenario, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make_config(steps=30, scenario=scenario)


def test_augment_identity_without_changes():
    from hclm.experiments.augment import augment_batch

    x = torch.randn(5, 64)
    view = augment_batch(x, torch.Generator().manual_seed(0), (8, 8), shift=0, noise=0.0, mask=0)
    assert torch.equal(view, x)


def test_augment_masks_exact_count():
    from hclm.experiments.augment import augment_batch

    x = torch.ones(6, 64)
    view = augment_batch(x, torch.Generator().manual_seed(0), (8, 8), shift=0, noise=0.0, mask=5)
    assert (view == 0).sum(dim=1).tolist() == [5] * 6


def test_augment_shift_is_zero_filled_translation():
    from hclm.experiments.augment import augment_batch

    x = torch.randn(10, 64)
    view = augment_batch(x, torch.Generator().manual_seed(3), (8, 8), shift=1, noise=0.0, mask=0)
    images = x.reshape(10, 8, 8).numpy()
    for row in range(10):
        candidates = []
        for down in (-1, 0, 1):
            for right in (-1, 0, 1):
                moved = np.zeros((8, 8), dtype=np.float32)
                source = images[row, max(-down, 0) : 8 - max(down, 0), max(-right, 0) : 8 - max(right, 0)]
                moved[max(down, 0) : 8 - max(-down, 0), max(right, 0) : 8 - max(-right, 0)] = source
                candidates.append(moved)
        assert any(np.array_equal(view[row].reshape(8, 8).numpy(), candidate) for candidate in candidates)


def test_ssl_without_entropy_collapses():
    from hclm.experiments import ExperimentConfig, RunSpec, load_dataset, train_run

    config = ExperimentConfig()
    config.task = "ssl"
    config.train.steps = 150
    dataset = load_dataset(config.data)
    plain = train_run(config, dataset, RunSpec("none", 0.0, 0))
    regularized = train_run(config, dataset, RunSpec("logdet", 0.1, 0))
    assert plain.result["test_accuracy"] == plain.result["probe_accuracy"]
    assert regularized.result["probe_accuracy"] > plain.result["probe_accuracy"] + 0.3
