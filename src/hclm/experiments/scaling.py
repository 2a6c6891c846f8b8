"""The ``hclm scaling`` experiment: test error against training-set size and step count, with power-law fits.

It fits ``R∞ + A·x^{−α}`` with bootstrap intervals and checks the injection–dissipation balance of the longest runs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hclm._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hclm.dynamics.scaling import PowerLawFit, balance_check, fit_power_law
from hclm.experiments.backends import check_backend, map_runs
from hclm.experiments.config import (
    NO_SURROGATE,
    format_validation_error,
    read_yaml_mapping,
    DataConfig,
    ExperimentConfig,
    MixtureConfig,
    ModelConfig,
    ProbeConfig,
    SweepConfig,
    TrainConfig,
)
from hclm.experiments.data import Dataset, load_dataset
from hclm.experiments.runner import RunOutput, RunSpec, train_run, write_run
from hclm.experiments.sweep import check_output_folder, environment_info, load_finished_run
from hclm.surrogates import available_surrogates, check_surrogate_parameters

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, run_id)`` after each finished or resumed run."""

AXES = ("size", "steps")
PLOT_FILES = {
    "size": "error_vs_size.png",
    "steps": "error_vs_steps.png",
    "balance": "injection_dissipation.png",
}
"""PNG file name of each plot in ``plots/``, keyed by plot name."""

SUMMARY_KEYS = ("config", "environment", "elapsed_seconds", "fits", "balance", "points", "runs")
FIT_KEYS = ("dataset", "surrogate", "lam", "axis", "x", "test_error", "clipped_points", "fit", "error_message", "credible", "reasons")
BALANCE_KEYS = ("dataset", "surrogate", "lam", "steps", "seeds", "per_seed", "balanced_seeds", "ratio_median", "net_share_median")

# Bump when the subsetting rule or the stored result fields change, so old run folders are retrained.
_RUN_FORMAT = 1
_DPI = 110


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FitSettings(_Strict):
    """Power-law fit, its intervals and the credibility rule."""

    bootstrap: int = Field(500, ge=0, description="residual-bootstrap resamples per fit (0 skips the intervals)")
    level: float = Field(0.95, gt=0.0, lt=1.0, description="coverage level of the intervals")
    interval: Literal["studentized", "percentile"] = Field(
        "studentized", description="studentized (symmetric bootstrap-t) or percentile intervals"
    )
    loss: Literal["soft_l1", "huber", "cauchy", "arctan", "linear"] = Field("soft_l1", description="robust loss of the fit")
    f_scale: float = Field(0.1, gt=0.0, description="log residual where the robust loss turns linear")
    seed: int = Field(0, ge=0, description="seed of the bootstrap")
    max_alpha_width: float = Field(
        1.0, gt=0.0, description="credible only if the α interval width divided by α is at most this"
    )
    max_residual_scale: float = Field(
        0.25, gt=0.0, description="credible only if the robust scale of the log residuals is at most this"
    )


class BalanceSettings(_Strict):
    """Balance check of injection and dissipation on the longest runs."""

    windows: int = Field(4, ge=1, description="log-spaced windows of the power-law range")
    tolerance: float = Field(0.2, gt=0.0, lt=1.0, description="largest |net share| that counts as balanced")
    start_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="start of the range as a share of the last step")


class ScalingConfig(_Strict):
    """Full configuration of the scaling experiment."""

    datasets: list[Literal["digits", "mixture"]] = Field(
        default_factory=lambda: ["digits", "mixture"], description="datasets, each with its own fits"
    )
    mixture: MixtureConfig = Field(
        default_factory=lambda: MixtureConfig(separation=2.0, noise=0.5),
        description="settings of the synthetic mixture",
    )
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of samples held out, stratified by class")
    split_seed: int = Field(0, ge=0, description="seed of the train/test split and of the mixture")
    surrogates: list[str] = Field(
        default_factory=lambda: [NO_SURROGATE, "logdet", "softmax"], description="surrogates; none trains without entropy term"
    )
    lam: float = Field(0.1, ge=0.0, description="weight λ of the entropy term for every surrogate but none")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="seeds of initialisation, batches and subsets")
    size_fractions: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.7, 1.0], description="shares of the train split on the size axis"
    )
    size_steps: int = Field(320, ge=1, description="optimizer steps of every run on the size axis")
    step_counts: list[int] = Field(
        default_factory=lambda: [10, 20, 40, 80, 160, 320, 640], description="optimizer steps on the steps axis (full data)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    surrogate_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    fit: FitSettings = Field(default_factory=FitSettings)
    balance: BalanceSettings = Field(default_factory=BalanceSettings)

    @field_validator("surrogates")
    @classmethod
    def _known_surrogates(cls, value: list[str]) -> list[str]:
        return SweepConfig._known_surrogates(value)

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, value: list[int]) -> list[int]:
        return SweepConfig._valid_seeds(value)

    @field_validator("datasets")
    @classmethod
    def _valid_datasets(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"datasets must name distinct datasets (digits, mixture), got {value}")
        return value

    @field_validator("size_fractions")
    @classmethod
    def _valid_fractions(cls, value: list[float]) -> list[float]:
        if len(value) < 4 or len(set(value)) != len(value):
            raise ValueError(f"size_fractions needs at least 4 distinct shares for the fit, got {value}")
        for fraction in value:
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"every size fraction must lie in (0, 1], got {fraction}")
        return sorted(value)

    @field_validator("step_counts")
    @classmethod
    def _valid_step_counts(cls, value: list[int]) -> list[int]:
        if len(value) < 4 or len(set(value)) != len(value):
            raise ValueError(f"step_counts needs at least 4 distinct counts for the fit, got {value}")
        if min(value) < 1:
            raise ValueError(f"every step count must be >= 1, got {value}")
        return sorted(value)

    @field_validator("surrogate_params")
    @classmethod
    def _known_parameters(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, params in value.items():
            if name not in available_surrogates():
                raise ValueError(f"unknown surrogate {name!r}; allowed values: {', '.join(available_surrogates())}")
            check_surrogate_parameters(name, params)
        return value

    @model_validator(mode="after")
    def _steps_not_set(self) -> "ScalingConfig":
        if "steps" in self.train.model_fields_set:
            raise ValueError("train.steps is not used here; set size_steps and step_counts instead")
        return self


def quick_scaling_config(config: ScalingConfig | None = None) -> ScalingConfig:
    """Return a small version of ``config`` for a smoke run.

    It keeps the datasets and surrogates but uses one seed, four training-set shares at 80 steps
    and the step counts 10, 20, 40 and 80, 100 bootstrap resamples and a mixture of 800 samples.
    """
    base = (config or ScalingConfig()).model_copy(deep=True)
    base.seeds = base.seeds[:1]
    base.size_fractions = [0.1, 0.25, 0.5, 1.0]
    base.size_steps = 80
    base.step_counts = [10, 20, 40, 80]
    base.fit.bootstrap = min(base.fit.bootstrap, 100)
    base.mixture.samples = min(base.mixture.samples, 800)
    return base


def load_scaling_config(path: str | Path) -> ScalingConfig:
    """Read and validate a YAML file of the scaling experiment.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: invalid YAML, unknown keys or invalid values; the message names each key.
    """
    file = Path(path)
    raw = read_yaml_mapping(file)
    return parse_scaling_config(raw, source=str(file))


def parse_scaling_config(raw: dict[str, Any], source: str = "scaling config") -> ScalingConfig:
    """Validate a nested dict as a :class:`ScalingConfig`; the error names every bad key, one per line."""
    try:
        return ScalingConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError(format_validation_error(error, source, ScalingConfig)) from None


@dataclass(frozen=True)
class ScalingRun:
    """One training run: a dataset, a share of its train split, a step count, a surrogate and a seed."""

    dataset: str
    fraction: float
    steps: int
    surrogate: str
    lam: float
    seed: int

    @property
    def spec(self) -> RunSpec:
        """The run spec passed to :func:`hclm.experiments.runner.train_run`."""
        return RunSpec(self.surrogate, self.lam, self.seed)

    @property
    def run_id(self) -> str:
        """Folder name, e.g. ``digits-frac0.2-steps320-logdet-lam0.1-seed0``."""
        return f"{self.dataset}-frac{self.fraction:g}-steps{self.steps}-{self.spec.run_id}"


def plan_scaling_runs(config: ScalingConfig) -> list[ScalingRun]:
    """List the distinct runs of both axes; a run on both axes (full data, ``size_steps``) is listed once."""
    runs: dict[str, ScalingRun] = {}
    for dataset in config.datasets:
        for surrogate in config.surrogates:
            lam = 0.0 if surrogate == NO_SURROGATE else float(config.lam)
            for seed in config.seeds:
                for fraction in config.size_fractions:
                    run = ScalingRun(dataset, float(fraction), config.size_steps, surrogate, lam, seed)
                    runs.setdefault(run.run_id, run)
                for steps in config.step_counts:
                    run = ScalingRun(dataset, 1.0, int(steps), surrogate, lam, seed)
                    runs.setdefault(run.run_id, run)
    return list(runs.values())


def subset_train(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """Keep a stratified share of the train split; the test split is unchanged.

    Each class keeps its first ``max(1, round(fraction·n_c))`` samples in an order drawn once per
    seed, so for one seed a smaller share is a subset of every larger one.

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if fraction == 1.0:
        return dataset
    rng = np.random.default_rng(seed)
    selected = []
    for label in range(dataset.classes):
        members = rng.permutation(np.flatnonzero(dataset.y_train == label))
        if len(members):
            selected.append(members[: max(1, round(fraction * len(members)))])
    index = np.sort(np.concatenate(selected))
    return replace(dataset, x_train=dataset.x_train[index], y_train=dataset.y_train[index])


def experiment_config_of(config: ScalingConfig, dataset: str, steps: int) -> ExperimentConfig:
    """Return the config of one training run of ``dataset`` with ``steps`` optimizer steps."""
    train = config.train.model_copy(update={"steps": steps})
    return ExperimentConfig(
        data=DataConfig(
            name=dataset, test_fraction=config.test_fraction, split_seed=config.split_seed, mixture=config.mixture
        ),
        model=config.model,
        train=train,
        probe=config.probe,
        sweep=SweepConfig(seeds=config.seeds),
        surrogate_params=config.surrogate_params,
    )


def run_scaling(
    config: ScalingConfig,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train every run, fit the power laws, check the balance and write all outputs to ``out_dir``.

    Writes ``runs/<run_id>/{steps.csv,result.json}``, ``summary.json``, ``report.md`` and the
    plots in ``plots/``, each atomically. A run whose ``result.json`` exists with the same run
    fingerprint is loaded instead of trained, so the same command on the same folder resumes.
    ``elapsed_seconds`` in the summary counts this call only.

    Args:
        config: validated scaling config.
        out_dir: output folder, created if needed.
        workers: local backend: worker processes (default 1, which trains in this process).
            Ray backend: see :func:`hclm.experiments.backends.map_runs`.
        backend: "local" or "ray"; both give the same numbers.
        address: address of a running Ray cluster (ray backend only).
        progress: called as ``progress(done, total, run_id)`` after each run.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ValueError: an invalid backend or worker count, or ``out_dir`` is a file.
    """
    check_backend(backend, workers, address)
    out = Path(out_dir)
    check_output_folder(out)
    started = time.perf_counter()
    plan = plan_scaling_runs(config)
    datasets = {name: load_dataset(experiment_config_of(config, name, 1).data) for name in config.datasets}
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    pending: list[ScalingRun] = []
    for run in plan:
        stored = _load_finished(runs_dir / run.run_id, _run_fingerprint(config, run))
        if stored is None:
            pending.append(run)
        else:
            results[run.run_id] = stored
    if results:
        logger.info("resuming: %d of %d runs already finished in %s", len(results), len(plan), runs_dir)
    if progress is not None:
        for run_id in list(results):
            progress(len(results), len(plan), run_id)

    def finish(run: ScalingRun, output: RunOutput) -> None:
        write_run(output, runs_dir / run.run_id)
        results[run.run_id] = output.result
        if progress is not None:
            progress(len(results), len(plan), run.run_id)

    _train_pending(config, pending, datasets, finish, workers=workers, backend=backend, address=address)

    ordered = [results[run.run_id] for run in plan]
    fits = fit_axes(config, plan, results, datasets)
    balance = check_balance(config, plan, runs_dir)
    summary = {
        "config": config.model_dump(mode="json"),
        "environment": environment_info(experiment_config_of(config, config.datasets[0], config.size_steps)),
        "elapsed_seconds": None,
        "fits": [fit["summary"] for fit in fits],
        "balance": balance,
        "points": _points_table(plan, results),
        "runs": ordered,
    }
    plots = write_plots(out / "plots", config, fits, runs_dir, plan)
    atomic_write_text(out / "report.md", render_scaling_report(summary, plots, out))
    summary["elapsed_seconds"] = time.perf_counter() - started
    atomic_write_json(out / "summary.json", summary)
    logger.info("scaling experiment finished in %.1f s: %d runs in %s", summary["elapsed_seconds"], len(plan), out)
    return summary


def count_finished_scaling(config: ScalingConfig, out_dir: str | Path) -> tuple[int, int]:
    """Return how many planned runs are already finished in ``out_dir``, and the number of runs."""
    plan = plan_scaling_runs(config)
    runs_dir = Path(out_dir) / "runs"
    finished = sum(
        1 for run in plan if _load_finished(runs_dir / run.run_id, _run_fingerprint(config, run), quiet=True) is not None
    )
    return finished, len(plan)


def _train_pending(
    config: ScalingConfig,
    pending: list[ScalingRun],
    datasets: dict[str, Dataset],
    finish: Callable[[ScalingRun, RunOutput], None],
    **where: Any,
) -> None:
    """Train ``pending`` on the backend given by ``where`` (see :func:`map_runs`), calling ``finish`` per run."""
    jobs = []
    for run in pending:
        run_config = experiment_config_of(config, run.dataset, run.steps)
        jobs.append((run, (run_config, datasets[run.dataset], run, _run_fingerprint(config, run))))
    threads = experiment_config_of(config, config.datasets[0], config.size_steps).train.threads
    finished = map_runs(train_scaling_run, jobs, cpus_per_run=threads, **where)
    try:
        for run, output in finished:
            finish(run, output)
    finally:
        finished.close()


def train_scaling_run(config: ExperimentConfig, dataset: Dataset, run: ScalingRun, fingerprint: str) -> RunOutput:
    """Train one run on its share of the train split and add the scaling fields to its result.

    The added fields are ``dataset``, ``fraction``, ``n_train``, ``n_test``, ``test_error``
    (``1 − test accuracy``, NaN for a diverged run) and ``run_fingerprint``.
    """
    subset = subset_train(dataset, run.fraction, run.seed)
    output = train_run(config, subset, run.spec)
    accuracy = output.result.get("test_accuracy")
    output.result.update(
        {
            "run_id": run.run_id,
            "dataset": run.dataset,
            "fraction": run.fraction,
            "planned_steps": run.steps,
            "n_train": int(len(subset.y_train)),
            "n_test": int(len(subset.y_test)),
            "test_error": 1.0 - accuracy if accuracy is not None and math.isfinite(accuracy) else math.nan,
            "run_fingerprint": fingerprint,
        }
    )
    return output


def fit_axes(
    config: ScalingConfig,
    plan: list[ScalingRun],
    results: dict[str, dict[str, Any]],
    datasets: dict[str, Dataset],
) -> list[dict[str, Any]]:
    """Fit ``R∞ + A·x^{−α}`` to the test error per (dataset, surrogate, axis) over all seeds.

    Each seed contributes one point per axis value. A test error of 0 is replaced by the floor
    ``0.5/n_test`` (half a misclassified sample), because the fit works with ``log R``, and the
    number of such points is stored as ``clipped_points``.

    Returns:
        One dict per fit: ``summary`` (JSON-ready, keys ``FIT_KEYS``) and ``fit`` (the
        :class:`PowerLawFit` or None).
    """
    fits = []
    for dataset in config.datasets:
        floor = 0.5 / len(datasets[dataset].y_test)
        for surrogate in config.surrogates:
            for axis in AXES:
                members = [run for run in plan if run.dataset == dataset and run.surrogate == surrogate and _on_axis(config, run, axis)]
                x_values, errors = [], []
                for run in members:
                    result = results[run.run_id]
                    error = result.get("test_error")
                    if error is None or not math.isfinite(error):
                        continue
                    x_values.append(float(result["n_train"] if axis == "size" else run.steps))
                    errors.append(float(error))
                clipped = sum(1 for error in errors if error <= 0)
                floored = [max(error, floor) for error in errors]
                fit, message = None, None
                try:
                    fit = fit_power_law(
                        x_values,
                        floored,
                        loss=config.fit.loss,
                        f_scale=config.fit.f_scale,
                        n_bootstrap=config.fit.bootstrap,
                        level=config.fit.level,
                        seed=config.fit.seed,
                        interval=config.fit.interval,
                    )
                except ValueError as error:
                    message = str(error)
                    logger.warning("no power-law fit for %s, %s, %s axis: %s", dataset, surrogate, axis, message)
                credible, reasons = judge_fit(fit, config.fit, message)
                if fit is not None:
                    logger.info(
                        "fit %s, %s, %s axis: alpha %.3g [%.3g, %.3g], residual scale %.3f, credible: %s",
                        dataset,
                        surrogate,
                        axis,
                        fit.alpha,
                        *fit.intervals["alpha"],
                        fit.residual_scale,
                        credible,
                    )
                summary = {
                    "dataset": dataset,
                    "surrogate": surrogate,
                    "lam": members[0].lam if members else None,
                    "axis": axis,
                    "x": x_values,
                    "test_error": errors,
                    "clipped_points": clipped,
                    "fit": None if fit is None else fit.as_dict(),
                    "error_message": message,
                    "credible": credible,
                    "reasons": reasons,
                }
                fits.append({"summary": summary, "fit": fit})
    return fits


def judge_fit(fit: PowerLawFit | None, settings: FitSettings, message: str | None = None) -> tuple[bool, list[str]]:
    """Decide whether a fit is credible and list every reason against it.

    A fit is credible when all of these hold: it exists and ``α`` is not on a search bound. The α
    interval width divided by α is at most ``max_alpha_width``. The robust residual scale is at
    most ``max_residual_scale``. At most 10 % of the bootstrap refits failed.
    """
    if fit is None:
        return False, [f"no fit: {message}"]
    reasons = []
    if fit.alpha_at_bound:
        reasons.append(f"α = {fit.alpha:.3g} lies on a search bound {fit.alpha_bounds}")
    width = fit.relative_width("alpha")
    if not math.isfinite(width):
        reasons.append("no α interval (no bootstrap resamples)")
    elif width > settings.max_alpha_width:
        reasons.append(f"α interval width is {width:.2f}·α, above {settings.max_alpha_width:g}·α")
    if fit.residual_scale > settings.max_residual_scale:
        reasons.append(f"residual scale {fit.residual_scale:.3f} is above {settings.max_residual_scale:g}")
    total = len(fit.bootstrap_samples) + fit.failed_resamples
    if total and fit.failed_resamples > 0.1 * total:
        reasons.append(f"{fit.failed_resamples} of {total} bootstrap refits failed")
    return not reasons, reasons


def check_balance(config: ScalingConfig, plan: list[ScalingRun], runs_dir: Path) -> list[dict[str, Any]]:
    """Run :func:`hclm.dynamics.scaling.balance_check` on the longest full-data run of every seed.

    Surrogate ``none`` has no entropy term and no probe records, so it gets no entry. The
    loss-curve fit inside each check uses at most 200 bootstrap resamples.

    Returns:
        One dict per (dataset, surrogate) with keys ``BALANCE_KEYS``: the per-seed checks, the
        number of balanced seeds and the medians over seeds of ``ratio_median`` and ``net_share``.
    """
    longest = max(config.step_counts)
    entries = []
    for dataset in config.datasets:
        for surrogate in config.surrogates:
            if surrogate == NO_SURROGATE:
                continue
            runs = [
                run
                for run in plan
                if run.dataset == dataset and run.surrogate == surrogate and run.fraction == 1.0 and run.steps == longest
            ]
            per_seed = []
            for run in runs:
                columns = read_step_columns(runs_dir / run.run_id / "steps.csv")
                try:
                    check = balance_check(
                        columns["step"],
                        columns["injection"],
                        columns["dissipation"],
                        columns["loss"],
                        start_fraction=config.balance.start_fraction,
                        windows=config.balance.windows,
                        tolerance=config.balance.tolerance,
                        n_bootstrap=min(config.fit.bootstrap, 200),
                        seed=config.fit.seed,
                    )
                except ValueError as error:
                    logger.warning("no balance check for run %s: %s", run.run_id, error)
                    per_seed.append({"seed": run.seed, "run_id": run.run_id, "error_message": str(error)})
                    continue
                per_seed.append({"seed": run.seed, "run_id": run.run_id, **check.as_dict()})
            checked = [entry for entry in per_seed if "balanced" in entry]
            entries.append(
                {
                    "dataset": dataset,
                    "surrogate": surrogate,
                    "lam": float(config.lam),
                    "steps": longest,
                    "seeds": [run.seed for run in runs],
                    "per_seed": per_seed,
                    "balanced_seeds": sum(1 for entry in checked if entry["balanced"]),
                    "ratio_median": _median([entry["ratio_median"] for entry in checked]),
                    "net_share_median": _median([entry["net_share"] for entry in checked]),
                }
            )
    return entries


def read_step_columns(path: Path) -> dict[str, np.ndarray]:
    """Read ``steps.csv`` of a run into float arrays per column; empty cells become NaN."""
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return {}
    return {key: np.array([float(row[key]) if row[key] not in ("", None) else math.nan for row in rows]) for key in rows[0]}


def write_plots(
    plot_dir: Path, config: ScalingConfig, fits: list[dict[str, Any]], runs_dir: Path, plan: list[ScalingRun]
) -> dict[str, Path]:
    """Draw the error-versus-size, error-versus-steps and injection–dissipation plots as PNG files."""
    paths = {}
    for axis in AXES:
        paths[axis] = _plot_axis(plot_dir / PLOT_FILES[axis], config, [fit for fit in fits if fit["summary"]["axis"] == axis], axis)
    paths["balance"] = _plot_balance(plot_dir / PLOT_FILES["balance"], config, runs_dir, plan)
    return paths


def render_scaling_report(summary: dict[str, Any], plots: dict[str, Path], out: Path) -> str:
    """Render ``report.md``: the conditional reading, the fits with their credibility, the balance and the plots."""
    config = summary["config"]
    lines = [
        "# Scaling fits of test error",
        "",
        "This is a conditional reading, not a derivation of neural scaling laws. If injection and",
        "dissipation balance so that the excess risk ε = R − R∞ obeys dε/dt = −a·ε^{1+1/α}, then",
        "ε(t) = (ε0^{−1/α} + (a/α)·t)^{−α}, which falls as t^{−α} for large t. The fits below only",
        "test whether the measured curves are consistent with R∞ + A·x^{−α} over the ranges run here,",
        "and the balance table tests the premise on the probe records.",
        "",
        "## Setup",
        "",
        f"- datasets: {', '.join(config['datasets'])}",
        f"- surrogates: {', '.join(config['surrogates'])} (λ = {config['lam']:g}; none has λ = 0)",
        f"- seeds: {config['seeds']}",
        f"- size axis: shares {config['size_fractions']} of the train split, {config['size_steps']} steps each",
        f"- steps axis: {config['step_counts']} steps on the full train split",
        f"- fit: {config['fit']['loss']} loss with f_scale {config['fit']['f_scale']:g} (log units), "
        f"{config['fit']['bootstrap']} residual-bootstrap resamples, {config['fit']['interval']} "
        f"{config['fit']['level']:.0%} intervals",
        f"- credible: α not on a search bound, α interval width ≤ {config['fit']['max_alpha_width']:g}·α, "
        f"robust residual scale ≤ {config['fit']['max_residual_scale']:g}, at most 10 % failed refits",
        "",
        "## Power-law fits: R(x) = R∞ + A·x^{−α}",
        "",
        "| dataset | surrogate | axis | points | α [interval] | R∞ [interval] | A | residual scale | credible |",
        "|---|---|---|---:|---|---|---:|---:|---|",
    ]
    for row in summary["fits"]:
        fit = row["fit"]
        if fit is None:
            lines.append(f"| {row['dataset']} | {row['surrogate']} | {row['axis']} | {len(row['x'])} | — | — | — | — | no: {row['error_message']} |")
            continue
        verdict = "yes" if row["credible"] else "no: " + "; ".join(row["reasons"])
        alpha_low, alpha_high = fit["intervals"]["alpha"]
        r_low, r_high = fit["intervals"]["r_inf"]
        lines.append(
            f"| {row['dataset']} | {row['surrogate']} | {row['axis']} | {fit['n_points']} | "
            f"{fit['alpha']:.3g} [{_fmt(alpha_low)}, {_fmt(alpha_high)}] | "
            f"{_fmt_r_inf(fit['r_inf'])} [{_fmt(r_low)}, {_fmt(r_high)}] | {fit['amplitude']:.3g} | "
            f"{fit['residual_scale']:.3f} | {verdict} |"
        )
    clipped = sum(row["clipped_points"] for row in summary["fits"])
    if clipped:
        lines += ["", f"{clipped} points had a test error of 0 and were fitted at the floor 0.5/n_test."]

    balance = config["balance"]
    lines += [
        "",
        "## Balance of injection and dissipation on the longest runs",
        "",
        f"Range: from {balance['start_fraction']:.0%} of the last step to the last step, split into "
        f"{balance['windows']} log-spaced windows. In each window ν = (ΣI + ΣD)/(ΣI + |ΣD|) and ρ = ΣI/|ΣD|;",
        f"a window is balanced when |ν| ≤ {balance['tolerance']:g}, and a seed when all its windows are.",
        "",
        "The last two columns fit R∞ + A·(t+1)^{−α} to the training loss in the same range (median over seeds);",
        "a small residual scale there means the loss curve follows a power law where the balance is tested.",
        "",
        "| dataset | surrogate | steps | balanced seeds | median ρ | median ν | loss-curve α | loss-curve residual scale |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in summary["balance"]:
        loss_fits = [entry["loss_fit"] for entry in row["per_seed"] if entry.get("loss_fit")]
        lines.append(
            f"| {row['dataset']} | {row['surrogate']} | {row['steps']} | {row['balanced_seeds']} of {len(row['seeds'])} | "
            f"{_fmt(row['ratio_median'])} | {_fmt(row['net_share_median'])} | "
            f"{_fmt(_median([fit['alpha'] for fit in loss_fits]))} | "
            f"{_fmt(_median([fit['residual_scale'] for fit in loss_fits]))} |"
        )
    if not summary["balance"]:
        lines.append("| — | no surrogate with an entropy term was run | | | | | | |")

    lines += [
        "",
        "## Plots",
        "",
        *[f"![{name}]({path.relative_to(out).as_posix()})" for name, path in plots.items()],
        "",
        "## Limits",
        "",
        "- Points of one seed share the initialisation and the batch order (and, on the size axis, nested",
        "  subsets), so they are correlated. The residual bootstrap treats them as independent, which makes",
        "  the intervals too narrow by an unknown amount.",
        "- With Adam, injection and dissipation describe the SGD flow at the learning rate, not the Adam",
        "  step, so the balance numbers are a proxy for the realized entropy flow.",
        "- The loss curve of the balance check is the minibatch training loss, averaged in log-spaced bins.",
        "",
    ]
    return "\n".join(lines)


def _on_axis(config: ScalingConfig, run: ScalingRun, axis: str) -> bool:
    if axis == "size":
        return run.steps == config.size_steps and run.fraction in config.size_fractions
    return run.fraction == 1.0 and run.steps in config.step_counts


def _run_fingerprint(config: ScalingConfig, run: ScalingRun) -> str:
    payload = experiment_config_of(config, run.dataset, run.steps).model_dump(mode="json", exclude={"sweep"})
    payload.update({"fraction": run.fraction, "format": _RUN_FORMAT})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _load_finished(folder: Path, fingerprint: str, quiet: bool = False) -> dict[str, Any] | None:
    result = load_finished_run(folder, fingerprint, key="run_fingerprint", quiet=quiet)
    if result is None:
        return None
    if result.get("test_error") is None:
        result["test_error"] = math.nan
    return result


def _points_table(plan: list[ScalingRun], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in plan:
        result = results[run.run_id]
        rows.append(
            {
                "run_id": run.run_id,
                "dataset": run.dataset,
                "surrogate": run.surrogate,
                "lam": run.lam,
                "seed": run.seed,
                "fraction": run.fraction,
                "n_train": result.get("n_train"),
                "steps": run.steps,
                "test_error": result.get("test_error"),
                "diverged": result.get("diverged"),
            }
        )
    return rows


def _plot_axis(path: Path, config: ScalingConfig, fits: list[dict[str, Any]], axis: str) -> Path:
    figure, axes = _panels(len(config.datasets))
    colors = _colors(config.surrogates)
    for panel, dataset in zip(axes, config.datasets):
        drawn = False
        for entry in fits:
            summary, fit = entry["summary"], entry["fit"]
            if summary["dataset"] != dataset or not summary["x"]:
                continue
            color = colors[summary["surrogate"]]
            x_values = np.array(summary["x"])
            errors = np.array(summary["test_error"])
            positive = errors > 0
            panel.scatter(x_values[positive], errors[positive], s=14, alpha=0.5, color=color)
            label = summary["surrogate"]
            if fit is not None:
                grid = np.geomspace(x_values.min(), x_values.max(), 100)
                low, high = fit.band(grid)
                if np.all(np.isfinite(low)):
                    panel.fill_between(grid, low, high, color=color, alpha=0.18, linewidth=0)
                label = f"{label}: α = {fit.alpha:.2f} [{fit.intervals['alpha'][0]:.2f}, {fit.intervals['alpha'][1]:.2f}]"
                panel.plot(grid, fit.predict(grid), color=color, label=label)
            else:
                panel.plot([], [], color=color, label=f"{label}: no fit")
            drawn = True
        if drawn:
            panel.set_xscale("log")
            panel.set_yscale("log")
            panel.legend(fontsize="small")
        else:
            panel.text(0.5, 0.5, "no finite test error", ha="center", va="center", transform=panel.transAxes)
        panel.set_title(dataset)
        panel.set_xlabel("training-set size (samples, log scale)" if axis == "size" else "optimizer steps (log scale)")
        panel.set_ylabel("test error 1 − accuracy (log scale)")
    axis_description = f"size at {config.size_steps} steps" if axis == "size" else "steps on the full train split"
    figure.suptitle(
        f"Test error against {axis_description}\npoints: seeds; line: R∞ + A·x^(−α); band: {config.fit.level:.0%} bootstrap band"
    )
    return _save(figure, path)


def _plot_balance(path: Path, config: ScalingConfig, runs_dir: Path, plan: list[ScalingRun]) -> Path:
    longest = max(config.step_counts)
    figure = Figure(figsize=(5.6 * len(config.datasets), 7.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, len(config.datasets), squeeze=False, sharex="col")
    colors = _colors(config.surrogates)
    # The x axis is step + 1, so that step 0 fits on a log scale.
    start = config.balance.start_fraction * (longest - 1) + 1.0
    for column, dataset in enumerate(config.datasets):
        flows, shares = grid[0][column], grid[1][column]
        drawn = False
        for surrogate in config.surrogates:
            if surrogate == NO_SURROGATE:
                continue
            runs = [
                run
                for run in plan
                if run.dataset == dataset and run.surrogate == surrogate and run.fraction == 1.0 and run.steps == longest
            ]
            binned = _binned_flows([read_step_columns(runs_dir / run.run_id / "steps.csv") for run in runs], longest)
            if binned is None:
                continue
            centers, injected, dissipated = binned
            color = colors[surrogate]
            flows.plot(centers, np.where(injected > 0, injected, np.nan), color=color, label=f"{surrogate}: I (injection)")
            flows.plot(centers, np.where(-dissipated > 0, -dissipated, np.nan), color=color, linestyle="--", label=f"{surrogate}: −D (dissipation)")
            total = np.abs(injected) + np.abs(dissipated)
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.where(total > 0, (injected + dissipated) / total, np.nan)
            shares.plot(centers, share, color=color, marker="o", markersize=3, label=surrogate)
            drawn = True
        for panel in (flows, shares):
            panel.axvspan(start, longest, color="0.9", zorder=0)
            panel.set_xscale("log")
        if drawn:
            flows.set_yscale("log")
            flows.legend(fontsize="small")
            shares.legend(fontsize="small")
        else:
            flows.text(0.5, 0.5, "no probe records (no entropy term)", ha="center", va="center", transform=flows.transAxes)
        tolerance = config.balance.tolerance
        shares.axhspan(-tolerance, tolerance, color="tab:green", alpha=0.12)
        shares.axhline(0.0, color="0.35", linestyle=":", linewidth=1.2)
        shares.set_ylim(-1.05, 1.05)
        flows.set_title(f"{dataset}, {longest} steps")
        flows.set_ylabel("entropy flow per step (mean over seeds, log scale)")
        shares.set_ylabel("net share ν = (I + D)/(I + |D|)")
        shares.set_xlabel("training step + 1 (log scale)")
    figure.suptitle(
        "Information injection I and entropy dissipation D (log-spaced bins)\n"
        f"grey: power-law range of the balance check; green: |ν| ≤ {config.balance.tolerance:g}"
    )
    return _save(figure, path)


def _binned_flows(columns: list[dict[str, np.ndarray]], steps: int, bins: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Average I_t and D_t over seeds and over log-spaced bins of the step; None without records."""
    usable = [c for c in columns if c and "injection" in c and np.isfinite(c["injection"]).any()]
    if not usable:
        return None
    edges = np.unique(np.round(np.geomspace(1, steps, bins + 1)).astype(int))
    centers, injected, dissipated = [], [], []
    for low, high in zip(edges[:-1], edges[1:]):
        inside_i, inside_d = [], []
        for column in usable:
            mask = (column["step"] + 1 >= low) & (column["step"] + 1 < high)
            inside_i.extend(column["injection"][mask][np.isfinite(column["injection"][mask])])
            inside_d.extend(column["dissipation"][mask][np.isfinite(column["dissipation"][mask])])
        if inside_i and inside_d:
            centers.append(math.sqrt(low * high))
            injected.append(float(np.mean(inside_i)))
            dissipated.append(float(np.mean(inside_d)))
    if not centers:
        return None
    return np.array(centers), np.array(injected), np.array(dissipated)


def _panels(count: int) -> tuple[Figure, list[Any]]:
    figure = Figure(figsize=(max(5.6 * count, 7.0), 4.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, count, squeeze=False)[0]
    return figure, list(axes)


def _colors(surrogates: list[str]) -> dict[str, Any]:
    palette = colormaps["tab10"]
    return {name: palette(index % 10) for index, name in enumerate(surrogates)}


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _median(values: list[Any]) -> float | None:
    finite = [float(value) for value in values if value is not None and math.isfinite(float(value))]
    return float(np.median(finite)) if finite else None


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _fmt_r_inf(value: float) -> str:
    # The solver keeps R∞ strictly above its bound 0, so an estimate at the bound is about 1e-20.
    return "0" if value < 1e-12 else _fmt(value)


__all__ = [
    "AXES",
    "PLOT_FILES",
    "ScalingConfig",
    "ScalingRun",
    "count_finished_scaling",
    "fit_axes",
    "judge_fit",
    "load_scaling_config",
    "parse_scaling_config",
    "plan_scaling_runs",
    "quick_scaling_config",
    "run_scaling",
    "subset_train",
]
