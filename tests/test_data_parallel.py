"""``torchrun --nproc_per_node 2 hclm run`` against one process on the same global batch."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

CONFIG = """\
model:
  hidden: [32]
  representation_dim: 8
sweep:
  surrogates: [none, logdet, softmax]
  lams: [0.1]
  seeds: [0]
train:
  steps: 30
  batch_size: 64
"""
RANKS = 2
# Per-step numbers agree to float32 rounding: the ranks sum the same terms in another order.
RTOL = 1e-4
# Columns that can be near zero get an absolute tolerance: this share of the column's largest
# magnitude. The realized ΔH (and the residual) is a difference of two float32 entropies, so its
# rounding error scales with the entropy instead.
ATOL_SHARE = 1e-4
DIFFERENCE_COLUMNS = ("delta_h", "residual")


def _environment() -> dict[str, str]:
    # Keep gloo on the loopback interface and the console wide enough for the run ids.
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "COLUMNS": "160"}


def _hclm(config: Path, out: Path) -> list[str]:
    return ["-m", "hclm.cli", "run", "--config", str(config), "--out", str(out)]


def _torchrun(config: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}"]
    return subprocess.run(
        [*command, *_hclm(config, out)], capture_output=True, text=True, env=_environment(), timeout=300
    )


def _steps(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(row[column]) if row[column] else math.nan for row in rows]


def _scale(values: list[float]) -> float:
    return max((abs(value) for value in values if math.isfinite(value)), default=0.0)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("data_parallel")
    config = folder / "config.yaml"
    config.write_text(CONFIG)
    single = folder / "single"
    subprocess.run([sys.executable, *_hclm(config, single)], check=True, capture_output=True, env=_environment())
    parallel = folder / "parallel"
    launched = _torchrun(config, parallel)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return single, parallel, launched


def test_rank_zero_alone_writes_the_same_files(outputs):
    single, parallel, launched = outputs
    assert sorted(path.relative_to(parallel).as_posix() for path in parallel.rglob("*")) == sorted(
        path.relative_to(single).as_posix() for path in single.rglob("*")
    )
    assert launched.stdout.count("Report:") == 1
    assert f"Data-parallel training on {RANKS} ranks" in launched.stdout


def test_steps_match_one_process(outputs):
    single, parallel, _ = outputs
    for run in sorted(path.name for path in (single / "runs").iterdir()):
        expected = _steps(single / "runs" / run / "steps.csv")
        actual = _steps(parallel / "runs" / run / "steps.csv")
        assert len(actual) == len(expected) == 30, run
        columns = {column: _column(expected, column) for column in expected[0]}
        for column, want in columns.items():
            got = _column(actual, column)
            scale = _scale(columns["entropy"] if column in DIFFERENCE_COLUMNS else want)
            for step, (a, b) in enumerate(zip(got, want)):
                if math.isnan(b):
                    assert math.isnan(a), f"{run} step {step} {column}: {a}, expected empty"
                else:
                    assert a == pytest.approx(b, rel=RTOL, abs=ATOL_SHARE * scale), f"{run} step {step} {column}"


def test_results_match_one_process(outputs):
    single, parallel, _ = outputs
    expected = json.loads((single / "summary.json").read_text())
    actual = json.loads((parallel / "summary.json").read_text())
    for want, got in zip(expected["runs"], actual["runs"]):
        assert got["ranks"] == RANKS
        assert got["run_id"] == want["run_id"]
        assert got["diverged"] == want["diverged"]
        assert got["effective_rank"] == pytest.approx(want["effective_rank"], rel=RTOL)
        # One test point in 450 may flip between nearly tied classes.
        for key in ("test_accuracy", "probe_accuracy"):
            assert abs(got[key] - want[key]) <= 1 / 450 + 1e-12, (want["run_id"], key)
    for want, got in zip(expected["results"], actual["results"]):
        assert got["regime"] == want["regime"]
        if want["relative_strength_median"] is not None:
            assert got["relative_strength_median"] == pytest.approx(want["relative_strength_median"], rel=RTOL)


def test_uneven_batch_split_rejected(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("batch_size: 64", "batch_size: 63").replace("steps: 30", "steps: 2"))
    launched = _torchrun(config, tmp_path / "out")
    assert launched.returncode != 0
    assert "train.batch_size (63) must be divisible by the number of ranks (2)" in launched.stderr
