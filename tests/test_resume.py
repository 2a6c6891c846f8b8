"""Kill a real sweep process at random points and check that rerunning it finishes the same sweep."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

CONFIG = """\
sweep:
  surrogates: [none, logdet, softmax]
  lams: [0.01, 0.1]
  seeds: [0]
train:
  steps: 120
"""


def _command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "hclm.cli", "run", "--config", str(config), "--out", str(out)]


def _results(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["results"]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    environment = {**os.environ, "COLUMNS": "120"}

    reference = tmp_path / "reference"
    subprocess.run(_command(config, reference), check=True, capture_output=True, env=environment, timeout=300)

    interrupted = tmp_path / "interrupted"
    generator = random.Random(7)
    kills = 0
    for _ in range(3):
        process = subprocess.Popen(
            _command(config, interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
        )
        time.sleep(generator.uniform(1.5, 4.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
    finished = subprocess.run(
        _command(config, interrupted), capture_output=True, text=True, env=environment, timeout=300
    )

    assert kills >= 1
    assert finished.returncode == 0, finished.stderr
    assert _results(interrupted) == _results(reference)
    leftovers = [path.name for path in interrupted.rglob(".*.tmp")]
    assert leftovers == []


def test_corrupt_result_is_redone(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("steps: 120", "steps: 20"))
    out = tmp_path / "out"
    environment = {**os.environ, "COLUMNS": "200"}
    subprocess.run(_command(config, out), check=True, capture_output=True, env=environment, timeout=300)
    before = _results(out)

    (out / "runs" / "logdet-lam0.1-seed0" / "result.json").write_text("{ not json")
    (out / "runs" / "softmax-lam0.01-seed0" / "steps.csv").unlink()
    rerun = subprocess.run(_command(config, out), capture_output=True, text=True, env=environment, timeout=300)

    assert rerun.returncode == 0, rerun.stderr
    assert "Resuming: 3 of 5 runs" in rerun.stdout
    assert _results(out) == before
