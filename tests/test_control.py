"""Tests of the λ controllers and of live feedback through control.json."""

from __future__ import annotations

import json
import logging
import math
import threading

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from hclm.cli_feedback import register
from hclm.control import (
    CONTROL_FILE,
    ConstantController,
    Controller,
    CosineSchedule,
    FeedbackReader,
    PIController,
    StepSchedule,
    events_to_json,
    write_feedback,
)
from hclm.forces.probe import ForceProbe, ForceRecord

CONTROL_LOGGER = "hclm.control.controllers"
FEEDBACK_LOGGER = "hclm.control.feedback"


def make_record(step: int = 0, relative_strength: float = 0.1, entropy: float = 0.0, lam: float = 1.0) -> ForceRecord:
    nan = math.nan
    return ForceRecord(step, lam, 1.0, entropy, nan, nan, relative_strength, nan, nan, nan, nan, nan)


def run_plant(controller, gains, noise: float = 0.0, seed: int = 0) -> list[float]:
    """Drive ``controller`` on the plant ``r_t = c_t·λ_t·(1 + noise)`` and return the measured ``r_t``."""
    rng = np.random.default_rng(seed)
    ratios = []
    for step, gain in enumerate(gains):
        ratio = gain * controller.lam * float(np.exp(noise * rng.standard_normal()))
        ratios.append(ratio)
        controller.update(step, make_record(step, relative_strength=ratio, lam=controller.lam))
    return ratios


# Fixed values and schedules.


def test_constant_keeps_lam():
    controller = ConstantController(0.3)
    values = [controller.update(step, make_record(step)) for step in range(3)]
    assert values == [0.3, 0.3, 0.3]


def test_controllers_follow_protocol():
    for controller in (ConstantController(0.1), StepSchedule({0: 0.1}), CosineSchedule(1.0, 0.0, 4), PIController()):
        assert isinstance(controller, Controller)


def test_step_schedule_sequence():
    schedule = StepSchedule({0: 0.1, 3: 0.5, 5: 0.0})
    assert schedule.lam == 0.1
    values = [schedule.update(step, None) for step in range(6)]
    # update(step) returns the value at step + 1.
    assert values == [0.1, 0.1, 0.5, 0.5, 0.0, 0.0]


def test_step_schedule_accepts_pairs():
    schedule = StepSchedule([(2, 0.4), (0, 0.2)])
    assert [schedule.value_at(step) for step in range(4)] == [0.2, 0.2, 0.4, 0.4]


@pytest.mark.parametrize(
    "milestones",
    [{1: 0.1}, {0: -0.1}, {0: 0.1, -1: 0.2}, [(0, 0.1), (0, 0.2)], {0: math.nan}],
)
def test_step_schedule_rejects_invalid(milestones):
    with pytest.raises(ValueError):
        StepSchedule(milestones)


def test_cosine_schedule_sequence():
    schedule = CosineSchedule(1.0, 0.0, steps=4, warmup=2)
    expected = [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    values = [schedule.value_at(step) for step in range(6)]
    assert values == pytest.approx(expected, abs=1e-12)


def test_cosine_schedule_without_warmup():
    schedule = CosineSchedule(0.4, 0.2, steps=2)
    assert schedule.lam == pytest.approx(0.4)
    assert schedule.update(0, None) == pytest.approx(0.3)
    assert schedule.update(1, None) == pytest.approx(0.2)


@pytest.mark.parametrize("arguments", [(1.0, 0.0, 0), (1.0, 0.0, 4, 4), (-1.0, 0.0, 4), (1.0, 0.0, 4, -1)])
def test_cosine_schedule_rejects_invalid(arguments):
    with pytest.raises(ValueError):
        CosineSchedule(*arguments)


def test_schedule_pause_holds_lam():
    schedule = StepSchedule({0: 0.1, 2: 0.5})
    schedule.pause()
    assert schedule.update(1, None) == 0.1
    schedule.resume()
    assert schedule.update(1, None) == 0.5


# PI controller: hand-computed steps.


def test_pi_integral_step_reaches_edge():
    controller = PIController(("relative_strength", 0.1, 0.2), kp=0.0, ki=1.0, lam_init=1.0, max_rate=None)
    assert controller.update(0, make_record(relative_strength=0.05)) == pytest.approx(2.0)
    assert controller.update(1, make_record(relative_strength=0.4)) == pytest.approx(1.0)
    assert controller.update(2, make_record(relative_strength=0.15)) == pytest.approx(1.0)


def test_pi_proportional_part_vanishes_in_band():
    controller = PIController(("relative_strength", 0.1, 0.2), kp=0.5, ki=0.5, lam_init=1.0, max_rate=None)
    assert controller.update(0, make_record(relative_strength=0.05)) == pytest.approx(2.0)
    # Inside the band e = 0, so only ki·Σe = 0.5·log 2 is left.
    assert controller.update(1, make_record(relative_strength=0.15)) == pytest.approx(math.sqrt(2.0))


def test_pi_ignores_missing_and_nan():
    controller = PIController(kp=0.0, ki=1.0, lam_init=1.0, max_rate=None)
    assert controller.update(0, None) == 1.0
    assert controller.update(1, make_record(relative_strength=math.nan)) == 1.0
    assert controller.integral == 0.0


def test_pi_entropy_floor():
    controller = PIController(("entropy", 2.0), kp=0.0, ki=1.0, lam_init=1.0, max_rate=None)
    assert controller.update(0, make_record(entropy=1.5)) == pytest.approx(math.exp(0.5))
    assert controller.update(1, make_record(entropy=3.0)) == pytest.approx(math.exp(0.5))


def test_pi_upper_bound():
    controller = PIController(kp=0.0, ki=1.0, lam_init=1.0, lam_max=2.0, max_rate=None, target=("relative_strength", 0.1, 0.2))
    assert controller.update(0, make_record(relative_strength=0.01)) == 2.0
    assert controller.saturation == "upper bound"


def test_pi_lower_bound():
    controller = PIController(kp=0.0, ki=1.0, lam_init=1.0, lam_min=0.5, max_rate=None, target=("relative_strength", 0.1, 0.2))
    assert controller.update(0, make_record(relative_strength=10.0)) == 0.5
    assert controller.saturation == "lower bound"


def test_pi_rate_limit_sequence():
    controller = PIController(("relative_strength", 0.1, 0.2), kp=0.0, ki=1.0, lam_init=1.0, max_rate=0.5)
    assert controller.update(0, make_record(relative_strength=0.01)) == pytest.approx(1.5)
    # Back-calculation left log 1.5 in the integral, so the request is 1.5·(0.1/0.015) = 10 again.
    assert controller.integral == pytest.approx(math.log(1.5))
    assert controller.update(1, make_record(relative_strength=0.015)) == pytest.approx(2.25)
    assert controller.update(2, make_record(relative_strength=0.5)) == pytest.approx(1.125)


def test_pi_saturation_logged_once_per_entry(caplog):
    controller = PIController(("relative_strength", 0.1, 0.2), kp=0.0, ki=1.0, lam_init=1.0, lam_max=2.0, max_rate=None)
    with caplog.at_level(logging.WARNING, logger=CONTROL_LOGGER):
        for ratio in (0.01, 0.01, 0.01, 0.15, 0.01, 0.01):
            controller.update(0, make_record(relative_strength=ratio))
    saturated = [record for record in caplog.records if "saturated" in record.getMessage()]
    assert len(saturated) == 2
    assert "upper bound" in saturated[0].getMessage()


def test_pi_rate_limit_logged_once(caplog):
    controller = PIController(("relative_strength", 0.1, 0.2), kp=0.0, ki=1.0, lam_init=1.0, max_rate=0.1)
    with caplog.at_level(logging.WARNING, logger=CONTROL_LOGGER):
        for step in range(5):
            controller.update(step, make_record(relative_strength=0.001))
    saturated = [record for record in caplog.records if "rate limit" in record.getMessage()]
    assert len(saturated) == 1


def test_pi_rejects_invalid_settings():
    cases = [
        {"lam_min": 0.0},
        {"lam_min": 1.0, "lam_max": 0.5},
        {"lam_init": 100.0},
        {"max_rate": 1.5},
        {"kp": -1.0},
        {"target": ("relative_strength", 0.2, 0.1)},
        {"target": ("entropy", math.nan)},
        {"target": ("loss", 1.0)},
    ]
    for settings in cases:
        with pytest.raises(ValueError):
            PIController(**settings)


# PI controller: closed loop on a simulated plant r = c·λ.


def test_pi_holds_band_as_gain_decays():
    steps = 600
    gains = [1.0 / (1.0 + step / 50.0) for step in range(steps)]
    controller = PIController(("relative_strength", 0.1, 0.2), kp=0.2, ki=0.3, lam_init=0.15, max_rate=0.3)
    ratios = np.array(run_plant(controller, gains, noise=0.03))
    fixed = np.array(run_plant(ConstantController(0.15), gains, noise=0.03))

    inside = (ratios[100:] >= 0.1 * 0.95) & (ratios[100:] <= 0.2 * 1.05)
    assert inside.mean() > 0.95
    assert fixed[-1] < 0.1 / 5


def test_pi_recovers_after_saturation_with_anti_windup():
    # c = 0.01 needs λ >= 10 but lam_max = 2, so λ saturates for 200 steps; then c = 1 needs λ <= 0.2.
    gains = [0.01] * 200 + [1.0] * 200
    recovery = {}
    for anti_windup in (True, False):
        controller = PIController(
            ("relative_strength", 0.1, 0.2), kp=0.3, ki=0.5, lam_init=1.0, lam_max=2.0, max_rate=None, anti_windup=anti_windup
        )
        ratios = np.array(run_plant(controller, gains))
        # The integral approaches the band edge geometrically, so "back" means within 5% of it.
        above = np.nonzero(ratios[200:] <= 0.2 * 1.05)[0]
        recovery[anti_windup] = int(above[0]) if above.size else len(gains)
    assert recovery[True] <= 5
    assert recovery[False] > 50


# External changes to the controller.


def test_pi_set_lam_restarts_integral():
    controller = PIController(kp=0.0, ki=1.0, lam_init=1.0, max_rate=None, target=("relative_strength", 0.1, 0.2))
    controller.update(0, make_record(relative_strength=0.05))
    message = controller.set_lam(0.5)
    assert controller.lam == 0.5
    assert controller.integral == 0.0
    assert "0.5" in message


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, 100.0])
def test_pi_set_lam_rejects(value):
    controller = PIController(lam_init=1.0)
    with pytest.raises(ValueError):
        controller.set_lam(value)
    assert controller.lam == 1.0


def test_pi_set_band_rejects_empty():
    controller = PIController(("relative_strength", 0.1, 0.2))
    with pytest.raises(ValueError, match="empty"):
        controller.set_band(0.3, 0.3)
    assert controller.band == (0.1, 0.2)


def test_pi_switch_to_floor():
    controller = PIController(("relative_strength", 0.1, 0.2), kp=0.0, ki=1.0, lam_init=1.0, max_rate=None)
    controller.update(0, make_record(relative_strength=0.05))
    controller.set_floor(1.0)
    assert controller.mode == "entropy"
    assert controller.integral == 0.0
    assert controller.update(1, make_record(entropy=0.0)) == pytest.approx(2.0 * math.e)


def test_pi_pause_holds_state():
    controller = PIController(kp=0.0, ki=1.0, lam_init=1.0, max_rate=None, target=("relative_strength", 0.1, 0.2))
    controller.pause()
    assert controller.update(0, make_record(relative_strength=0.01)) == 1.0
    assert controller.integral == 0.0
    controller.resume()
    assert controller.update(1, make_record(relative_strength=0.05)) == pytest.approx(2.0)


# Feedback file.


def test_feedback_applies_at_poll_step(tmp_path):
    controller = ConstantController(0.1)
    reader = FeedbackReader(tmp_path, every=5)
    write_feedback(tmp_path, lam=0.3)
    assert reader.poll(3, controller) == []
    assert controller.lam == 0.1
    events = reader.poll(5, controller)
    assert controller.lam == 0.3
    assert len(events) == 1
    assert events[0].step == 5
    assert events[0].accepted
    assert events[0].change == {"lam": 0.3}
    assert events[0].source == "cli"


def test_feedback_band_floor_pause(tmp_path):
    controller = PIController(("relative_strength", 0.1, 0.2), lam_init=1.0)
    reader = FeedbackReader(tmp_path)
    write_feedback(tmp_path, band=(0.3, 0.6), pause=True, source="notebook")
    reader.poll(0, controller)
    assert controller.band == (0.3, 0.6)
    assert controller.paused
    write_feedback(tmp_path, floor=1.5, pause=False)
    events = reader.poll(1, controller)
    assert controller.floor == 1.5
    assert not controller.paused
    assert [event.change for event in events] == [{"floor": 1.5}, {"pause": False}]
    assert reader.events[0].source == "notebook"


def test_feedback_sequence_increases(tmp_path):
    first = write_feedback(tmp_path, lam=0.1)
    second = write_feedback(tmp_path, lam=0.2)
    stored = json.loads((tmp_path / CONTROL_FILE).read_text())
    assert second["sequence"] > first["sequence"]
    assert [entry["changes"] for entry in stored["entries"]] == [{"lam": 0.1}, {"lam": 0.2}]
    assert stored["entries"][1]["time"].endswith("+00:00")


def test_feedback_entries_between_polls_applied(tmp_path):
    controller = PIController(("relative_strength", 0.1, 0.2), lam_init=1.0)
    reader = FeedbackReader(tmp_path)
    write_feedback(tmp_path, lam=0.5)
    write_feedback(tmp_path, band=(0.2, 0.4))
    events = reader.poll(0, controller)
    assert len(events) == 2
    assert controller.lam == 0.5
    assert controller.band == (0.2, 0.4)


def test_feedback_applied_once(tmp_path):
    controller = ConstantController(0.1)
    reader = FeedbackReader(tmp_path)
    write_feedback(tmp_path, lam=0.3)
    reader.poll(0, controller)
    controller.set_lam(0.7)
    assert reader.poll(1, controller) == []
    assert controller.lam == 0.7
    assert len(reader.events) == 1


def test_feedback_skip_existing(tmp_path):
    write_feedback(tmp_path, lam=0.3)
    controller = ConstantController(0.1)
    reader = FeedbackReader(tmp_path, skip_existing=True)
    assert reader.poll(0, controller) == []
    assert controller.lam == 0.1


def write_raw_entry(run_dir, changes, sequence=1):
    entry = {"sequence": sequence, "time": "2024-01-01T00:00:00+00:00", "source": "test", "changes": changes}
    (run_dir / CONTROL_FILE).write_text(json.dumps({"entries": [entry]}))


@pytest.mark.parametrize(
    "changes",
    [{"lam": -1.0}, {"band": [0.4, 0.2]}, {"floor": "high"}, {"gain": 2.0}, {"pause": "yes"}, {"lam": 100.0}],
)
def test_feedback_rejects_invalid_change(tmp_path, caplog, changes):
    controller = PIController(("relative_strength", 0.1, 0.2), lam_init=1.0, lam_max=10.0)
    reader = FeedbackReader(tmp_path)
    write_raw_entry(tmp_path, changes)
    with caplog.at_level(logging.ERROR, logger=FEEDBACK_LOGGER):
        events = reader.poll(0, controller)
    assert len(events) == 1
    assert not events[0].accepted
    assert events[0].error
    assert controller.lam == 1.0
    assert controller.band == (0.1, 0.2)
    assert not controller.paused
    assert any("rejected" in record.getMessage() for record in caplog.records)


def test_feedback_rejected_not_reapplied(tmp_path):
    controller = ConstantController(0.1)
    reader = FeedbackReader(tmp_path)
    write_raw_entry(tmp_path, {"lam": -1.0})
    reader.poll(0, controller)
    assert reader.poll(1, controller) == []
    assert len(reader.events) == 1


def test_feedback_rejects_band_on_schedule(tmp_path):
    schedule = StepSchedule({0: 0.1})
    reader = FeedbackReader(tmp_path)
    write_feedback(tmp_path, band=(0.1, 0.2))
    events = reader.poll(0, schedule)
    assert not events[0].accepted
    assert "set_band" in events[0].error


def test_feedback_corrupt_file_tolerated(tmp_path, caplog):
    controller = ConstantController(0.1)
    reader = FeedbackReader(tmp_path)
    (tmp_path / CONTROL_FILE).write_text("{not json")
    with caplog.at_level(logging.ERROR, logger=FEEDBACK_LOGGER):
        first = reader.poll(0, controller)
        second = reader.poll(1, controller)
    assert len(first) == 1
    assert not first[0].accepted
    assert second == []
    assert len([record for record in caplog.records if record.levelno == logging.ERROR]) == 1

    write_feedback(tmp_path, lam=0.4)
    reader.poll(2, controller)
    assert controller.lam == 0.4


def test_write_feedback_rejects_invalid(tmp_path):
    cases = [{}, {"lam": -0.1}, {"band": (0.2, 0.1)}, {"floor": math.nan}, {"lam": math.nan}]
    for arguments in cases:
        with pytest.raises(ValueError):
            write_feedback(tmp_path, **arguments)
    assert not (tmp_path / CONTROL_FILE).exists()


def test_write_feedback_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_feedback(tmp_path / "missing", lam=0.1)


def test_reader_rejects_bad_every(tmp_path):
    with pytest.raises(ValueError):
        FeedbackReader(tmp_path, every=0)


def test_events_to_json_writes_file(tmp_path):
    controller = ConstantController(0.1)
    reader = FeedbackReader(tmp_path)
    write_feedback(tmp_path, lam=0.2)
    reader.poll(0, controller)
    rows = events_to_json(reader.events, tmp_path / "events.json")
    stored = json.loads((tmp_path / "events.json").read_text())
    assert stored == rows
    assert rows[0]["change"] == {"lam": 0.2}
    assert rows[0]["accepted"] is True


# Command line.


@pytest.fixture
def feedback_app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:
        """Keep typer in multi-command mode, as in the hclm app."""

    return app


def test_cli_writes_change(tmp_path, feedback_app):
    result = CliRunner().invoke(feedback_app, ["feedback", str(tmp_path), "--lam", "0.2", "--band", "0.1", "0.3", "--pause"])
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / CONTROL_FILE).read_text())
    assert stored["entries"][0]["changes"] == {"lam": 0.2, "band": [0.1, 0.3], "pause": True}
    assert stored["entries"][0]["source"] == "cli"


def test_cli_resume(tmp_path, feedback_app):
    result = CliRunner().invoke(feedback_app, ["feedback", str(tmp_path), "--resume"])
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / CONTROL_FILE).read_text())
    assert stored["entries"][0]["changes"] == {"pause": False}


@pytest.mark.parametrize(
    "arguments",
    [[], ["--lam", "-1"], ["--band", "0.3", "0.1"], ["--floor", "nan"]],
)
def test_cli_rejects_bad_input(tmp_path, feedback_app, arguments):
    result = CliRunner().invoke(feedback_app, ["feedback", str(tmp_path), *arguments])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert not (tmp_path / CONTROL_FILE).exists()


def test_cli_missing_folder(tmp_path, feedback_app):
    result = CliRunner().invoke(feedback_app, ["feedback", str(tmp_path / "missing"), "--lam", "0.1"])
    assert result.exit_code == 2
    assert "not found" in result.output


# Real training loop.


def test_training_loop_picks_up_feedback(tmp_path):
    from sklearn.datasets import load_digits

    from hclm.surrogates import logdet_entropy

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    encoder = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    head = torch.nn.Linear(16, 10)
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.05)
    probe = ForceProbe(optimizer=optimizer, schedule=1)
    controller = ConstantController(0.01)
    reader = FeedbackReader(tmp_path, every=1)

    change_step = 10
    for step in range(20):
        batch = torch.randint(0, len(x), (128,))
        optimizer.zero_grad()
        z = encoder(x[batch])
        loss = torch.nn.functional.cross_entropy(head(z), y[batch])
        record = probe.backward(loss, logdet_entropy(z), lam=controller.lam, step=step)
        optimizer.step()
        controller.update(step, record)
        if step == change_step:
            writer = threading.Thread(target=write_feedback, args=(tmp_path,), kwargs={"lam": 0.2, "source": "thread"})
            writer.start()
            writer.join()
        reader.poll(step, controller)

    lams = [record.lam for record in probe.all_records()]
    assert lams[: change_step + 1] == [0.01] * (change_step + 1)
    assert lams[change_step + 1 :] == [0.2] * (20 - change_step - 1)
    assert [event.step for event in reader.events] == [change_step]
    assert reader.events[0].source == "thread"
