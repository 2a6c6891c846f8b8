"""The sweep gives the same files on every backend: this process, a local process pool and Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hclm.experiments import ExperimentConfig
from hclm.experiments.backends import check_backend, import_ray, map_runs
from hclm.experiments.sweep import run_sweep

CONFIG = """\
model:
  hidden: [32]
  representation_dim: 8
sweep:
  surrogates: [none, logdet, softmax]
  lams: [0.1]
  seeds: [0, 1]
train:
  steps: 25
"""


def _config() -> ExperimentConfig:
    config = ExperimentConfig()
    config.model.hidden = [32]
    config.model.representation_dim = 8
    config.sweep.surrogates = ["none", "logdet", "softmax"]
    config.sweep.lams = [0.1]
    config.sweep.seeds = [0, 1]
    config.train.steps = 25
    return config


def _run_files(out: Path) -> dict[str, object]:
    """Every run's steps.csv text and result.json without its wall time, keyed by run id."""
    files: dict[str, object] = {}
    for folder in sorted((out / "runs").iterdir()):
        result = json.loads((folder / "result.json").read_text())
        result.pop("train_seconds")
        files[folder.name] = ((folder / "steps.csv").read_text(), result)
    return files


def _square(x: int) -> int:
    return x * x


def test_check_backend_names_the_fix():
    with pytest.raises(ValueError, match="unknown backend 'dask'; choose one of local, ray"):
        check_backend("dask", None, None)
    with pytest.raises(ValueError, match="needs the ray backend"):
        check_backend("local", None, "auto")
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        check_backend("local", 0, None)


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'hclm\[ray\]'"):
        import_ray()


def test_local_pool_returns_every_job():
    jobs = [(k, (k,)) for k in range(5)]
    assert dict(map_runs(_square, jobs, workers=2)) == {k: k * k for k in range(5)}
    assert dict(map_runs(_square, jobs)) == {k: k * k for k in range(5)}
    assert list(map_runs(_square, [], backend="ray")) == []


def test_backends_write_identical_runs(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    config = _config()
    summaries = {
        name: run_sweep(config, tmp_path / name, **options)
        for name, options in {
            "serial": {},
            "pool": {"workers": 2},
            "ray": {"backend": "ray", "workers": 2},
        }.items()
    }
    reference = _run_files(tmp_path / "serial")
    assert len(reference) == 6
    for name in ("pool", "ray"):
        assert summaries[name]["results"] == summaries["serial"]["results"], name
        assert _run_files(tmp_path / name) == reference, name


def test_ray_cluster_by_address(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    ray_command = Path(sys.executable).with_name("ray")
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "160"}
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    hclm = [sys.executable, "-m", "hclm.cli", "run", "--config", str(config)]
    # Ray's socket paths must stay under 108 bytes, which pytest's tmp_path can exceed.
    ray_dir = tempfile.mkdtemp(prefix="hclm-ray-")

    started = subprocess.run(
        [str(ray_command), "start", "--head", "--port", "0", "--num-cpus", "2", "--include-dashboard=false",
         "--disable-usage-stats", "--temp-dir", ray_dir],
        capture_output=True, text=True, env=environment, timeout=120,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        remote = subprocess.run(
            [*hclm, "--out", str(tmp_path / "cluster"), "--backend", "ray", "--address", "auto"],
            capture_output=True, text=True, env=environment, timeout=300,
        )  # fmt: skip
    finally:
        subprocess.run([str(ray_command), "stop", "--force"], capture_output=True, env=environment, timeout=120)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert remote.returncode == 0, remote.stderr
    local = subprocess.run([*hclm, "--out", str(tmp_path / "local")], capture_output=True, env=environment, timeout=300)
    assert local.returncode == 0
    assert _run_files(tmp_path / "cluster") == _run_files(tmp_path / "local")
