"""The sweep gives the same files on every backend: this process, a local process pool and Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
        # Without --address, hclm starts a private instance beside the running cluster.
        private = subprocess.run(
            [*hclm, "--out", str(tmp_path / "private"), "--backend", "ray", "--workers", "2"],
            capture_output=True, text=True, env=environment, timeout=300,
        )  # fmt: skip
    finally:
        subprocess.run([str(ray_command), "stop", "--force"], capture_output=True, env=environment, timeout=120)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert remote.returncode == 0, remote.stderr
    assert private.returncode == 0, private.stderr
    local = subprocess.run([*hclm, "--out", str(tmp_path / "local")], capture_output=True, env=environment, timeout=300)
    assert local.returncode == 0
    assert _run_files(tmp_path / "cluster") == _run_files(tmp_path / "local")
    assert _run_files(tmp_path / "private") == _run_files(tmp_path / "local")


def test_unreachable_address_fails_fast():
    pytest.importorskip("ray", reason="the ray extra is not installed")
    with socket.socket() as probe:
        # A port that was free a moment ago, on this machine only.
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no Ray cluster responds at 127.0.0.1:{port}"):
        list(map_runs(_square, [(0, (0,))], backend="ray", address=f"127.0.0.1:{port}"))
    assert time.monotonic() - started < 30


def _children(pid: int) -> list[int]:
    """Return the PIDs whose parent is ``pid``, read from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_exit_after_kill(tmp_path):
    command = [sys.executable, "-m", "hclm", "run", "--quick", "--workers", "2", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [pid for pid in _children(process.pid) if "spawn_main" in _command_line(pid)]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert len(workers) == 2

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.2)
    assert [pid for pid in workers if _running(pid)] == []


def _running(pid: int) -> bool:
    """Return True while ``pid`` exists and is not a zombie waiting for its new parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
