"""Validated configuration of the surrogate comparison experiment.

Unknown keys and invalid values are errors that name the key and the allowed values.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hclm.surrogates import available_surrogates, check_surrogate_parameters

logger = logging.getLogger(__name__)

NO_SURROGATE = "none"
DEFAULT_SURROGATES = (NO_SURROGATE, "softmax", "variance", "logdet", "coding_rate")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MixtureConfig(_Strict):
    """Synthetic low-rank Gaussian mixture: class means and spread live in a ``rank``-dim subspace."""

    samples: int = Field(2000, ge=20, description="number of samples")
    dim: int = Field(64, ge=2, description="ambient dimension")
    rank: int = Field(8, ge=1, description="dimension of the subspace holding the signal")
    classes: int = Field(10, ge=2, description="number of classes")
    noise: float = Field(0.1, ge=0.0, description="standard deviation of isotropic noise in all dimensions")
    separation: float = Field(3.0, gt=0.0, description="scale of the class means relative to the within-class spread")

    @model_validator(mode="after")
    def _rank_fits(self) -> "MixtureConfig":
        if self.rank > self.dim:
            raise ValueError(f"mixture.rank ({self.rank}) must not exceed mixture.dim ({self.dim})")
        return self


class DataConfig(_Strict):
    """Data source and train/test split."""

    name: Literal["digits", "mixture", "npz", "csv"] = Field(
        "digits", description="digits (scikit-learn, bundled), mixture (synthetic), npz or csv (your file)"
    )
    path: Path | None = Field(None, description="file for npz (arrays x, y) or csv")
    label_column: str | None = Field(None, description="name of the label column of a csv file")
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of samples held out, stratified by class")
    split_seed: int = Field(0, ge=0, description="seed of the train/test split, the same for every run")
    standardize: bool = Field(True, description="scale features to zero mean, unit variance (fit on train)")
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)

    @model_validator(mode="after")
    def _file_needed(self) -> "DataConfig":
        if self.name in ("npz", "csv") and self.path is None:
            raise ValueError(f"data.path is required when data.name is {self.name!r}")
        if self.name == "csv" and not self.label_column:
            raise ValueError("data.label_column is required when data.name is 'csv'")
        return self


class ModelConfig(_Strict):
    """MLP encoder and linear head."""

    hidden: list[int] = Field(default_factory=lambda: [128, 128], description="widths of the hidden layers")
    representation_dim: int = Field(32, ge=1, description="dimension d of the representation Z")
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="hidden activation")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        for width in value:
            if width < 1:
                raise ValueError(f"every hidden width must be >= 1, got {value}")
        return value


class TrainConfig(_Strict):
    """Optimisation of one run."""

    optimizer: Literal["sgd", "adam"] = Field("adam", description="adam or sgd (with momentum)")
    lr: float = Field(1e-3, gt=0.0, description="learning rate η")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay")
    batch_size: int = Field(128, ge=2, description="rows per batch (the surrogate needs at least 2)")
    steps: int = Field(400, ge=1, description="optimizer steps per run")
    threads: int = Field(1, ge=1, description="torch CPU threads per run; 1 keeps results bit-identical")


class ProbeConfig(_Strict):
    """Force probe schedule and regime thresholds."""

    every: int = Field(1, ge=1, description="measure the forces every k-th step")
    r_min: float = Field(0.05, ge=0.0, description="weak below this median relative strength")
    c_min: float = Field(-0.9, ge=-1.0, le=1.0, description="opposed below this median alignment")
    v_max: float = Field(1.0, ge=0.0, description="unstable above this volatility of the strength")
    p_min: float = Field(0.2, ge=-1.0, le=1.0, description="unstable below this median persistence")
    realized: bool = Field(True, description="record the realized entropy change (one extra forward pass)")


class ControlConfig(_Strict):
    """λ control within a run (fixed, a cosine schedule or a PI controller) and live feedback."""

    kind: Literal["constant", "cosine", "pi"] = Field(
        "constant", description="constant (the sweep's λ), cosine (from λ to lam_end), or pi (feedback control)"
    )
    band: tuple[float, float] = Field(
        (0.1, 0.5), description="pi: target band of the relative strength ‖F_H‖/‖F_L‖ (low, high)"
    )
    floor: float | None = Field(None, description="pi: keep the surrogate value above this floor instead of a band")
    kp: float = Field(0.5, ge=0.0, description="pi: proportional gain on log λ per unit of log error")
    ki: float = Field(0.2, ge=0.0, description="pi: integral gain on log λ per step")
    lam_min: float = Field(1e-4, ge=0.0, description="pi: lower bound on λ")
    lam_max: float = Field(10.0, gt=0.0, description="pi: upper bound on λ")
    max_rate: float = Field(0.5, gt=0.0, description="pi: largest relative change of λ per step")
    lam_end: float = Field(0.0, ge=0.0, description="cosine: λ at the last step")
    feedback_every: int = Field(
        10, ge=0, description="read control.json in the output folder every k steps (0: no live feedback)"
    )

    @field_validator("band")
    @classmethod
    def _ordered_band(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (0 < low < high):
            raise ValueError(f"control.band must satisfy 0 < low < high, got {value}")
        return value


class LoggingConfig(_Strict):
    """Destinations besides steps.csv that receive each run's records."""

    tensorboard: bool = Field(False, description="write TensorBoard event files to <out>/tensorboard/<run id>")
    mlflow: str | None = Field(
        None, description="MLflow tracking URI of a local file store, e.g. file:./mlruns (one MLflow run per run)"
    )


class SSLConfig(_Strict):
    """Views of the self-supervised task (used when ``task`` is ``ssl``)."""

    shift: int = Field(1, ge=0, description="largest random image shift in pixels (images only)")
    noise: float = Field(0.1, ge=0.0, description="standard deviation of the added Gaussian noise (standardized units)")
    mask: int = Field(4, ge=0, description="features set to 0 per view")


class SweepConfig(_Strict):
    """The grid of runs: surrogates × λ × seeds (``none`` runs once per seed with λ = 0)."""

    surrogates: list[str] = Field(default_factory=lambda: list(DEFAULT_SURROGATES))
    lams: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0], description="weights λ of the entropy term")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="seeds of initialisation and batch order")

    @field_validator("surrogates")
    @classmethod
    def _known_surrogates(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("sweep.surrogates must name at least one surrogate")
        allowed = (NO_SURROGATE, *available_surrogates())
        for name in value:
            if name not in allowed:
                raise ValueError(f"unknown surrogate {name!r}; allowed values: {', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise ValueError(f"sweep.surrogates has duplicates: {value}")
        return value

    @field_validator("lams")
    @classmethod
    def _valid_lams(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("sweep.lams must contain at least one weight")
        for lam in value:
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"every weight lam must be a finite number >= 0, got {lam}")
        if len(set(value)) != len(value):
            raise ValueError(f"sweep.lams has duplicates: {value}")
        return value

    @field_validator("seeds")
    @classmethod
    def _valid_seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("sweep.seeds must contain at least one seed")
        if any(seed < 0 for seed in value) or len(set(value)) != len(value):
            raise ValueError(f"sweep.seeds must be distinct integers >= 0, got {value}")
        return value


class ScenarioConfig(_Strict):
    """Open-system scenario of a run: a distribution shift, label noise, or a compute budget.

    ``kind: none`` (the default) trains exactly as without this section.
    """

    kind: Literal["none", "shift", "label_noise", "budget"] = Field(
        "none", description="none, shift (training data changes at step `at`), label_noise, or budget"
    )
    shift: Literal["rotation", "noise", "class_swap"] = Field(
        "rotation", description="shift: rotation (digits images by `angle`), noise (Gaussian, std `noise`), class_swap"
    )
    at: int = Field(100, ge=1, description="shift: first step that trains on the shifted distribution")
    angle: float = Field(30.0, description="shift rotation: angle in degrees, counter-clockwise")
    noise: float = Field(0.5, ge=0.0, description="shift noise: standard deviation added to the standardized features")
    swap: list[tuple[int, int]] = Field(
        default_factory=lambda: [(0, 1)], description="shift class_swap: pairs of class indices whose labels trade places"
    )
    rate: float = Field(0.2, ge=0.0, lt=1.0, description="label_noise: share of training labels replaced by another label")
    steps: int | None = Field(None, ge=1, description="budget: stop after this many optimizer steps")
    seconds: float | None = Field(None, gt=0.0, description="budget: stop once training has taken this many seconds")
    recovery_window: int = Field(10, ge=1, description="shift: steps in the moving average of the loss for the recovery time")
    recovery_tolerance: float = Field(
        0.1, gt=0.0, description="shift: recovered when the smoothed loss is at most (1 + tolerance) × its pre-shift level"
    )

    @field_validator("swap")
    @classmethod
    def _disjoint_pairs(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        classes = [label for pair in value for label in pair]
        if not value or any(label < 0 for label in classes) or len(set(classes)) != len(classes):
            raise ValueError(f"scenario.swap must be non-empty pairs of distinct class indices >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _budget_set(self) -> "ScenarioConfig":
        if self.kind == "budget" and self.steps is None and self.seconds is None:
            raise ValueError("scenario.steps or scenario.seconds is required when scenario.kind is 'budget'")
        return self


class ExperimentConfig(_Strict):
    """Full configuration of the surrogate comparison."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    scenario: ScenarioConfig = Field(default_factory=ScenarioConfig)
    task: Literal["supervised", "ssl"] = Field(
        "supervised",
        description="supervised (cross-entropy through a linear head) or ssl (invariance between two views, no labels)",
    )
    ssl: SSLConfig = Field(default_factory=SSLConfig)
    surrogate_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="keyword parameters per surrogate, e.g. {logdet: {eps: 1e-4}}"
    )

    @field_validator("surrogate_params")
    @classmethod
    def _known_parameters(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, params in value.items():
            if name not in available_surrogates():
                raise ValueError(f"unknown surrogate {name!r}; allowed values: {', '.join(available_surrogates())}")
            check_surrogate_parameters(name, params)
        return value

    @model_validator(mode="after")
    def _scenario_fits(self) -> "ExperimentConfig":
        scenario = self.scenario
        if scenario.kind == "shift" and scenario.at >= self.train.steps:
            raise ValueError(
                f"scenario.at ({scenario.at}) must be less than train.steps ({self.train.steps}) so the shift happens"
            )
        if scenario.kind == "shift" and scenario.shift == "rotation" and self.data.name != "digits":
            raise ValueError("scenario.shift 'rotation' needs image data; set data.name to digits or pick noise or class_swap")
        return self


def quick_config(config: ExperimentConfig | None = None) -> ExperimentConfig:
    """Return a small sweep of ``config`` for a smoke run: one seed, λ ∈ {0.01, 0.1}, 150 steps."""
    base = (config or ExperimentConfig()).model_copy(deep=True)
    base.sweep.lams = [0.01, 0.1]
    base.sweep.seeds = base.sweep.seeds[:1]
    base.train.steps = min(base.train.steps, 150)
    return base


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config file of the comparison.

    A relative ``data.path`` is taken relative to the folder of the config file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: invalid YAML, unknown keys or invalid values; the message names each key.
    """
    file = Path(path)
    config = parse_config(read_yaml_mapping(file), source=str(file))
    # A relative data path is read relative to the config file, so the file works from any folder.
    if config.data.path is not None and not config.data.path.is_absolute():
        config.data.path = file.parent / config.data.path
    return config


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must contain a mapping; an empty file gives ``{}`` with a warning.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: invalid YAML, or a document that is not a mapping.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}; pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"config file {file} is not valid YAML: {error}") from None
    if raw is None:
        logger.warning("config file %s is empty; using the defaults", file)
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {file} must contain a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a nested dict as an :class:`ExperimentConfig`; errors name every bad key."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError(format_validation_error(error, source)) from None


def format_validation_error(
    error: ValidationError, source: str, model: type[BaseModel] | None = None
) -> str:
    """Turn a pydantic error into one line per problem: ``key.path: message``.

    ``model`` is the validated config class (default :class:`ExperimentConfig`); unknown keys are
    reported with the keys their section allows.
    """
    root = model or ExperimentConfig
    lines = [f"invalid {source}:"]
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = f"unknown key; allowed keys here: {', '.join(_allowed_keys(problem['loc'], root))}"
        elif problem["type"] == "literal_error":
            expected = problem.get("ctx", {}).get("expected", "")
            message = f"invalid value {problem.get('input')!r}; allowed values: {expected}"
        elif "input" in problem and not isinstance(problem["input"], (dict, list)):
            message = f"{message} (got {problem['input']!r})"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _allowed_keys(location: tuple[Any, ...], model: type[BaseModel]) -> list[str]:
    for part in location[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)
