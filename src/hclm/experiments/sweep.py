"""The sweep of the comparison: plan runs, train them (resuming finished ones), aggregate the results."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hclm._io import atomic_write_json
from hclm.experiments.backends import check_backend, map_runs
from hclm.experiments.config import NO_SURROGATE, ExperimentConfig
from hclm.experiments.data import Dataset, load_dataset
from hclm.experiments.runner import (
    RunOutput,
    RunSpec,
    data_parallel_ranks,
    thresholds_of,
    train_run,
    write_run,
)
from hclm.forces.regimes import REGIMES, classify_regime

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, dict[str, Any]], None]

RESULT_KEYS = (
    "surrogate",
    "lam",
    "seeds",
    "relative_strength_median",
    "alignment_median",
    "novelty_median",
    "persistence_median",
    "strength_median",
    "volatility",
    "regime",
    "regime_counts",
    "injection_total",
    "dissipation_total",
    "effective_entropy_share",
    "test_accuracy_mean",
    "test_accuracy_std",
    "probe_accuracy_mean",
    "probe_accuracy_std",
    "effective_rank_mean",
    "effective_rank_std",
    "diverged_runs",
)


def plan_runs(config: ExperimentConfig) -> list[RunSpec]:
    """List the runs of the sweep: ``none`` once per seed (λ = 0), every other surrogate per λ and seed."""
    specs = []
    for surrogate in config.sweep.surrogates:
        lams = [0.0] if surrogate == NO_SURROGATE else config.sweep.lams
        for lam in lams:
            for seed in config.sweep.seeds:
                specs.append(RunSpec(surrogate, float(lam), seed))
    return specs


def config_fingerprint(config: ExperimentConfig) -> str:
    """Return a hash of everything that changes a single run's numbers (not the sweep grid)."""
    payload = config.model_dump(mode="json", exclude={"sweep"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run_sweep(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    progress: ProgressCallback | None = None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Train every run of the sweep into ``out_dir/runs`` and write ``out_dir/summary.json``.

    Runs whose ``result.json`` exists with the same config fingerprint are loaded, not retrained,
    so re-running the same command on the same folder resumes an interrupted sweep.

    Args:
        config: validated experiment config.
        out_dir: output folder (created if needed).
        workers: local backend: worker processes (default 1, which trains in this process).
            Ray backend: see :func:`hclm.experiments.backends.map_runs`.
        backend: "local" or "ray"; both give the same numbers.
        address: address of a running Ray cluster (ray backend only).
        progress: called as ``progress(done, total, result)`` after each run.
        dataset: the data of ``config.data`` if already loaded; loaded here otherwise.

    Under ``torchrun`` (``torch.distributed`` initialized with several ranks) every run trains
    data-parallel on all ranks, and only rank 0 writes files.

    Returns:
        The summary dict that was written to ``summary.json``; an empty dict on ranks other than 0.
    """
    check_backend(backend, workers, address)
    ranks = data_parallel_ranks(config)
    if ranks is not None and (backend != "local" or (workers or 1) > 1):
        raise ValueError(
            f"under torchrun the {ranks.world_size} ranks train each run together, so runs cannot also be spread "
            "over --workers or --backend ray; drop those options or launch without torchrun"
        )
    out = Path(out_dir)
    check_output_folder(out)
    if dataset is None:
        dataset = load_dataset(config.data)
    runs_dir = out / "runs"
    fingerprint = config_fingerprint(config)

    specs = plan_runs(config)
    results: dict[str, dict[str, Any]] = {}
    pending: list[RunSpec] = []
    if ranks is None or ranks.rank == 0:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for spec in specs:
            stored = load_finished_run(runs_dir / spec.run_id, fingerprint)
            if stored is None:
                pending.append(spec)
            else:
                results[spec.run_id] = stored
    if ranks is not None:
        # Rank 0 alone reads and writes the output folder; the other ranks follow its plan.
        pending = ranks.from_main(pending)
        if ranks.rank != 0:
            for spec in pending:
                train_run(config, dataset, spec, control_dir=out)
            return {}
    if results:
        logger.info("resuming: %d of %d runs already finished in %s", len(results), len(specs), runs_dir)

    done = len(results)
    for stored in list(results.values()):
        if progress is not None:
            progress(done, len(specs), stored)

    def finish(output: RunOutput) -> None:
        nonlocal done
        output.result["config_fingerprint"] = fingerprint
        write_run(output, runs_dir / output.spec.run_id)
        _log_to_sinks(config, out, output)
        results[output.spec.run_id] = output.result
        done += 1
        if progress is not None:
            progress(done, len(specs), output.result)

    jobs = [(spec, (config, dataset, spec, out)) for spec in pending]
    finished = map_runs(
        train_run, jobs, backend=backend, workers=workers, address=address, cpus_per_run=config.train.threads
    )
    try:
        for _spec, output in finished:
            finish(output)
    finally:
        finished.close()

    ordered = [results[spec.run_id] for spec in specs]
    summary = {
        "config": config.model_dump(mode="json"),
        "environment": {
            **environment_info(config),
            # How this invocation trained its runs; each run's result.json records its own ranks.
            "backend": backend,
            "workers": workers,
            "data_parallel_ranks": ranks.world_size if ranks is not None else 1,
        },
        "thresholds": thresholds_of(config).as_dict(),
        "results": aggregate_results(ordered, config),
        "runs": ordered,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def _log_to_sinks(config: ExperimentConfig, out: Path, output: RunOutput) -> None:
    """Log a finished run to TensorBoard and MLflow when the config enables them."""
    settings = config.logging
    if not settings.tensorboard and settings.mlflow is None:
        return
    from hclm.integrations import log_run_to, sinks_from_config

    run_id = output.spec.run_id
    sinks = sinks_from_config(
        tensorboard=out / "tensorboard" / run_id if settings.tensorboard else None,
        mlflow={"tracking_uri": settings.mlflow, "experiment": "hclm", "run_name": run_id}
        if settings.mlflow is not None
        else None,
    )
    try:
        log_run_to(sinks, output)
    finally:
        for sink in sinks:
            sink.close()


def check_output_folder(out: Path) -> None:
    """Raise ``ValueError`` when ``out`` or one of its parents exists and is not a folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder; pass a folder to --out")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output path {out} is inside {parent}, which is a file; pass a folder to --out")
            break


def count_finished(config: ExperimentConfig, out_dir: str | Path) -> tuple[int, int]:
    """Return how many runs of the sweep are already finished in ``out_dir``, and the total."""
    specs = plan_runs(config)
    runs_dir = Path(out_dir) / "runs"
    if not runs_dir.is_dir():
        return 0, len(specs)
    fingerprint = config_fingerprint(config)
    finished = sum(1 for spec in specs if load_finished_run(runs_dir / spec.run_id, fingerprint, quiet=True) is not None)
    return finished, len(specs)


def aggregate_results(runs: list[dict[str, Any]], config: ExperimentConfig) -> list[dict[str, Any]]:
    """Aggregate per-run results into one row per (surrogate, λ) over seeds.

    Force statistics are medians over seeds of the per-run statistics. Totals and accuracies are
    means, with the sample standard deviation over seeds (null for a single seed). The row's
    regime is classified from the aggregated statistics; ``regime_counts`` says how many seeds
    fell in each regime on their own.
    """
    thresholds = thresholds_of(config)
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["surrogate"], float(run["lam"])), []).append(run)

    rows = []
    for (surrogate, lam), members in groups.items():
        row: dict[str, Any] = {"surrogate": surrogate, "lam": lam, "seeds": [run["seed"] for run in members]}
        forces = [run["forces"] for run in members if run.get("forces")]
        if forces:
            for key in ("relative_strength_median", "alignment_median", "novelty_median", "persistence_median", "strength_median", "volatility"):
                row[key] = _median([force.get(key) for force in forces])
            for key in ("injection_total", "dissipation_total", "effective_entropy_share"):
                row[key] = _mean([force.get(key) for force in forces])
            counts = {regime: 0 for regime in REGIMES}
            for force in forces:
                counts[force["regime"]] += 1
            row["regime_counts"] = counts
            if any(run.get("diverged") for run in members):
                row["regime"] = "unstable"
            else:
                row["regime"] = classify_regime(
                    _nan(row["relative_strength_median"]),
                    _nan(row["alignment_median"]),
                    _nan(row["volatility"]),
                    _nan(row["persistence_median"]),
                    thresholds,
                )
        else:
            for key in RESULT_KEYS[3:13]:
                row[key] = None
        for metric in ("test_accuracy", "probe_accuracy", "effective_rank"):
            values = [run.get(metric) for run in members]
            row[f"{metric}_mean"] = _mean(values)
            row[f"{metric}_std"] = _std(values)
        row["diverged_runs"] = sum(1 for run in members if run.get("diverged"))
        rows.append({key: row.get(key) for key in RESULT_KEYS})
    return rows


def environment_info(config: ExperimentConfig) -> dict[str, Any]:
    """Describe the machine and package versions the sweep ran with."""
    packages = {}
    for name in ("hclm", "torch", "numpy", "scipy", "scikit-learn", "matplotlib", "pydantic"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads_per_run": config.train.threads,
        "packages": packages,
        "seeds": list(config.sweep.seeds),
        "split_seed": config.data.split_seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def load_finished_run(
    folder: Path, fingerprint: str, key: str = "config_fingerprint", quiet: bool = False
) -> dict[str, Any] | None:
    """Return the stored result of a finished run folder, or None when the run must be trained again.

    A run counts as finished when ``result.json`` parses, its ``key`` equals ``fingerprint`` and
    ``steps.csv`` exists. Anything else is logged (at debug level when ``quiet``) and redone.
    """
    warn = logger.debug if quiet else logger.warning
    result_file = folder / "result.json"
    if not result_file.is_file():
        return None
    try:
        result = json.loads(result_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        warn("run folder %s has an unreadable result.json (%s); training it again", folder, error)
        return None
    if not isinstance(result, dict) or result.get(key) != fingerprint:
        warn("run folder %s was made with another config; training it again", folder)
        return None
    if not (folder / "steps.csv").is_file():
        warn("run folder %s has no steps.csv; training it again", folder)
        return None
    return result


def _finite(values: list[Any]) -> np.ndarray:
    array = np.array([math.nan if value is None else float(value) for value in values], dtype=float)
    return array[np.isfinite(array)]


def _median(values: list[Any]) -> float | None:
    finite = _finite(values)
    return float(np.median(finite)) if finite.size else None


def _mean(values: list[Any]) -> float | None:
    finite = _finite(values)
    return float(finite.mean()) if finite.size else None


def _std(values: list[Any]) -> float | None:
    finite = _finite(values)
    return float(finite.std(ddof=1)) if finite.size >= 2 else None


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
