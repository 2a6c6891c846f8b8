"""The surrogate comparison experiment: config, data, model, runs and the sweep."""

from hclm.experiments.config import ExperimentConfig, load_config, parse_config, quick_config
from hclm.experiments.data import Dataset, load_dataset, make_low_rank_mixture
from hclm.experiments.metrics import effective_rank, linear_probe_accuracy
from hclm.experiments.models import MLPEncoder
from hclm.experiments.runner import RunSpec, train_run
from hclm.experiments.sweep import aggregate_results, plan_runs, run_sweep

__all__ = [
    "Dataset",
    "ExperimentConfig",
    "MLPEncoder",
    "RunSpec",
    "aggregate_results",
    "effective_rank",
    "linear_probe_accuracy",
    "load_config",
    "load_dataset",
    "make_low_rank_mixture",
    "parse_config",
    "plan_runs",
    "quick_config",
    "run_sweep",
    "train_run",
]
