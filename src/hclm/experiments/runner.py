"""One training run of the comparison: MLP encoder + linear head, cross-entropy − λ·H(Z), force probe."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

from hclm._io import atomic_write_json, atomic_write_text
from hclm.control import ConstantController, CosineSchedule, FeedbackReader, PIController, events_to_json
from hclm.experiments.augment import augment_batch
from hclm.experiments.config import NO_SURROGATE, ExperimentConfig
from hclm.experiments.data import Dataset
from hclm.experiments.metrics import effective_rank, linear_probe_accuracy
from hclm.experiments.models import MLPEncoder
from hclm.experiments.scenarios import corrupt_labels, recovery_time, shifted_data
from hclm.forces import ForceProbe, RegimeThresholds
from hclm.forces.distributed import average_gradients, broadcast_parameters
from hclm.surrogates import NonFiniteInputError, get_surrogate

logger = logging.getLogger(__name__)

STEP_COLUMNS = (
    "step",
    "loss",
    "entropy",
    "lam",
    "strength",
    "relative_strength",
    "alignment",
    "novelty",
    "persistence",
    "injection",
    "dissipation",
    "delta_h",
    "residual",
)
_FORCE_COLUMNS = STEP_COLUMNS[4:]
# Written after STEP_COLUMNS only by runs whose rows have it (scenario.kind shift): "before" or "after".
PHASE_COLUMN = "phase"


@dataclass(frozen=True)
class RunSpec:
    """One cell of the sweep: a surrogate (or ``none``), a weight ``λ`` and a seed."""

    surrogate: str
    lam: float
    seed: int

    @property
    def run_id(self) -> str:
        """Folder name of the run, e.g. ``logdet-lam0.1-seed0`` or ``none-seed2``."""
        if self.surrogate == NO_SURROGATE:
            return f"none-seed{self.seed}"
        return f"{self.surrogate}-lam{self.lam:g}-seed{self.seed}"


@dataclass
class RunOutput:
    """Per-step rows and the result of one run."""

    spec: RunSpec
    rows: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


def thresholds_of(config: ExperimentConfig) -> RegimeThresholds:
    """Return the regime thresholds set in the probe section of ``config``."""
    probe = config.probe
    return RegimeThresholds(r_min=probe.r_min, c_min=probe.c_min, v_max=probe.v_max, p_min=probe.p_min)


def train_run(
    config: ExperimentConfig, dataset: Dataset, spec: RunSpec, control_dir: str | Path | None = None
) -> RunOutput:
    """Train and evaluate one run; the result is fully determined by ``config``, the data and ``spec.seed``.

    A run whose loss, surrogate or representations become non-finite stops at that step and is
    marked ``diverged``. Its force statistics cover the steps before, and its regime is ``unstable``.

    Args:
        config: validated experiment config.
        dataset: the data of ``config.data``.
        spec: surrogate, starting weight λ and seed.
        control_dir: folder whose ``control.json`` the run polls every ``control.feedback_every``
            steps for live changes (written by ``hclm feedback``). Entries already there when the
            run starts are ignored, so each run sees only the changes made while it trains.
    """
    dataset = _writable(dataset)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.train.threads)
    try:
        # The BLAS behind NumPy and scikit-learn (the linear probe) starts one thread per core by
        # default, so parallel runs would compete for the cores. Cap it like torch's pool.
        with threadpool_limits(limits=config.train.threads):
            return _train(config, dataset, spec, control_dir)
    finally:
        torch.set_num_threads(previous_threads)


def write_run(output: RunOutput, folder: Path) -> None:
    """Write ``steps.csv`` and then ``result.json`` of a run atomically; ``result.json`` marks it complete."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    columns = STEP_COLUMNS
    if any(PHASE_COLUMN in row for row in output.rows):
        columns = (*STEP_COLUMNS, PHASE_COLUMN)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in output.rows:
        writer.writerow({key: _csv_cell(row.get(key)) for key in columns})
    atomic_write_text(folder / "steps.csv", buffer.getvalue())
    atomic_write_json(folder / "result.json", output.result)


@dataclass(frozen=True)
class DataParallelRanks:
    """This process's place among the ranks that train one run together (``torchrun``)."""

    rank: int
    world_size: int

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """Return this rank's contiguous share of the rows of the global ``batch``."""
        if batch.shape[0] % self.world_size != 0:
            raise ValueError(
                f"a batch of {batch.shape[0]} rows does not split evenly over {self.world_size} ranks; "
                "use a train.batch_size (at most the number of training rows) divisible by the number of ranks"
            )
        size = batch.shape[0] // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def mean_loss_and_finite(self, loss: float, z: torch.Tensor) -> tuple[float, bool]:
        """Return the global batch's loss (the rank mean) and whether every rank's ``z`` is finite."""
        values = torch.tensor([loss, 0.0 if bool(torch.isfinite(z).all()) else 1.0], dtype=torch.float64)
        dist.all_reduce(values)
        return float(values[0]) / self.world_size, float(values[1]) == 0.0

    def from_main(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every rank (a picklable object)."""
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


def data_parallel_ranks(config: ExperimentConfig) -> DataParallelRanks | None:
    """Return the ranks of the default process group, or None for training in one process.

    Raises:
        ValueError: the batch does not split evenly over the ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    world_size = dist.get_world_size()
    if config.train.batch_size % world_size != 0:
        raise ValueError(
            f"train.batch_size ({config.train.batch_size}) must be divisible by the number of ranks ({world_size}) "
            "so that every rank gets the same share of the global batch; change one of the two"
        )
    return DataParallelRanks(dist.get_rank(), world_size)


def make_controller(config: ExperimentConfig, lam: float) -> Any:
    """Build the λ controller of ``config.control`` starting from the sweep's weight ``lam``."""
    control = config.control
    if control.kind == "constant":
        return ConstantController(lam)
    if control.kind == "cosine":
        return CosineSchedule(lam, control.lam_end, config.train.steps)
    target = ("entropy", control.floor) if control.floor is not None else ("relative_strength", *control.band)
    lam_init = min(max(lam, control.lam_min), control.lam_max)
    return PIController(
        target,
        kp=control.kp,
        ki=control.ki,
        lam_init=lam_init,
        lam_min=control.lam_min,
        lam_max=control.lam_max,
        max_rate=control.max_rate,
    )


def _train(config: ExperimentConfig, dataset: Dataset, spec: RunSpec, control_dir: str | Path | None) -> RunOutput:
    ranks = data_parallel_ranks(config)
    is_main = ranks is None or ranks.rank == 0
    torch.manual_seed(spec.seed)
    model_config, train_config = config.model, config.train
    encoder = MLPEncoder(dataset.features, model_config.hidden, model_config.representation_dim, model_config.activation)
    head = nn.Linear(model_config.representation_dim, dataset.classes)
    if ranks is not None:
        broadcast_parameters(encoder)
        broadcast_parameters(head)
    parameters = list(encoder.parameters()) + list(head.parameters())
    if train_config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            parameters, lr=train_config.lr, momentum=train_config.momentum, weight_decay=train_config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(parameters, lr=train_config.lr, weight_decay=train_config.weight_decay)

    uses_surrogate = spec.surrogate != NO_SURROGATE
    surrogate = get_surrogate(spec.surrogate) if uses_surrogate else None
    params = dict(config.surrogate_params.get(spec.surrogate, {}))
    if ranks is not None:
        # The surrogate is computed on the global batch: the rows of every rank, in rank order.
        params["gather"] = True
    probe = ForceProbe(
        optimizer=optimizer, schedule=config.probe.every, thresholds=thresholds_of(config), reduce=ranks is not None
    )
    controller = make_controller(config, spec.lam) if uses_surrogate else None
    reader = None
    feedback = controller is not None and control_dir is not None and config.control.feedback_every > 0
    if feedback and is_main:
        reader = FeedbackReader(control_dir, every=config.control.feedback_every, skip_existing=True)

    x_train = torch.from_numpy(dataset.x_train)
    y_train = torch.from_numpy(dataset.y_train)
    batches = _batch_indices(len(y_train), train_config.batch_size, train_config.steps, spec.seed)

    scenario = config.scenario
    shifted = None
    if scenario.kind == "label_noise":
        y_train = torch.from_numpy(corrupt_labels(dataset.y_train, dataset.classes, scenario.rate, spec.seed))
    elif scenario.kind == "shift":
        shifted = shifted_data(dataset, scenario, spec.seed)
        x_shifted, y_shifted = torch.from_numpy(shifted.x_train), torch.from_numpy(shifted.y_train)
    budget_steps = scenario.steps if scenario.kind == "budget" else None
    budget_seconds = scenario.seconds if scenario.kind == "budget" else None
    stopped_by = "train.steps"

    ssl_generator = torch.Generator().manual_seed(20_000 + spec.seed) if config.task == "ssl" else None
    output = RunOutput(spec)
    diverged_step: int | None = None
    started = time.perf_counter()
    for step, index in enumerate(batches):
        if shifted is not None and step >= scenario.at:
            x, y = x_shifted[index], y_shifted[index]
        else:
            x, y = x_train[index], y_train[index]
        optimizer.zero_grad(set_to_none=True)
        second = None
        if ssl_generator is not None:
            # Self-supervised: the loss is the mean squared distance between two random views'
            # representations, the entropy is taken on the first view, and labels are unused.
            x = augment_batch(x, ssl_generator, dataset.image_shape, config.ssl.shift, config.ssl.noise, config.ssl.mask)
            second = augment_batch(
                x_train[index] if shifted is None or step < scenario.at else x_shifted[index],
                ssl_generator,
                dataset.image_shape,
                config.ssl.shift,
                config.ssl.noise,
                config.ssl.mask,
            )
        if ranks is not None:
            # Every rank draws the global batch (and its augmentations) and keeps its own share.
            x, y = ranks.share(x), ranks.share(y)
            second = ranks.share(second) if second is not None else None
        z = encoder(x)
        if second is not None:
            loss = (z - encoder(second)).pow(2).sum(dim=1).mean()
        else:
            loss = F.cross_entropy(head(z), y)
        loss_value, finite_z = float(loss.detach()), True
        if ranks is not None:
            loss_value, finite_z = ranks.mean_loss_and_finite(loss_value, z)
        lam = float(controller.lam) if controller is not None else None
        row: dict[str, Any] = {"step": step, "loss": loss_value, "lam": lam}
        if shifted is not None:
            row[PHASE_COLUMN] = "after" if step >= scenario.at else "before"
        if not finite_z:
            # Decided on every rank together: a surrogate would raise on one rank only.
            diverged_step = step
            logger.warning("run %s diverged at step %d: non-finite representations", spec.run_id, step)
            break

        try:
            entropy = surrogate(z, **params) if surrogate is not None else None
        except NonFiniteInputError as error:
            diverged_step = step
            logger.warning("run %s diverged at step %d: %s", spec.run_id, step, error)
            break
        if not math.isfinite(row["loss"]) or (entropy is not None and not torch.isfinite(entropy)):
            diverged_step = step
            logger.warning("run %s diverged at step %d: non-finite loss or surrogate", spec.run_id, step)
            break

        if entropy is None:
            loss.backward()
            if ranks is not None:
                average_gradients(parameters)
            record = None
        else:
            row["entropy"] = float(entropy.detach())
            record = probe.backward(loss, entropy, lam, step)
        optimizer.step()

        if record is not None:
            if config.probe.realized:
                with torch.no_grad():
                    try:
                        record = probe.record_realized(surrogate(encoder(x), **params))
                    except NonFiniteInputError:
                        record.delta_h = math.nan
            for key in _FORCE_COLUMNS:
                row[key] = getattr(record, key)
        output.rows.append(row)
        if controller is not None:
            controller.update(step, record)
        if reader is not None:
            reader.poll(step, controller)
        if feedback and ranks is not None and step % config.control.feedback_every == 0:
            controller = ranks.from_main(controller)
        if budget_steps is not None and len(output.rows) >= budget_steps:
            stopped_by = "budget_steps"
            break
        if budget_seconds is not None:
            over = time.perf_counter() - started >= budget_seconds
            if ranks is not None:
                over = ranks.from_main(over)
            if over:
                stopped_by = "budget_seconds"
                break

    train_seconds = time.perf_counter() - started
    if is_main:
        evaluation = _evaluate(encoder, head, dataset, spec.seed)
    else:
        # Only rank 0 writes the result; the replicas hold the same parameters.
        evaluation = {"test_accuracy": math.nan, "probe_accuracy": math.nan, "effective_rank": math.nan}
    if config.task == "ssl":
        # The head is never trained without labels, so the linear probe is the task accuracy.
        evaluation["test_accuracy"] = evaluation["probe_accuracy"]
    forces = None
    if uses_surrogate:
        summary = probe.summary().as_dict()
        if diverged_step is not None:
            summary["regime"] = "unstable"
        forces = summary

    output.result = {
        "run_id": spec.run_id,
        "surrogate": spec.surrogate,
        "lam": spec.lam,
        "seed": spec.seed,
        **evaluation,
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "steps": len(output.rows),
        "train_seconds": train_seconds,
        "forces": forces,
        "control": config.control.kind if controller is not None else None,
        "lam_final": float(controller.lam) if controller is not None else None,
        "feedback_events": events_to_json(reader.events) if reader is not None else [],
    }
    if ranks is not None:
        output.result["ranks"] = ranks.world_size
    if scenario.kind != "none" and is_main:
        output.result["scenario"] = _scenario_result(config, encoder, head, output.rows, shifted, stopped_by, diverged_step)
    if is_main:
        logger.info(
            "run %s: test accuracy %.4f, regime %s, %.1f s",
            spec.run_id,
            evaluation["test_accuracy"],
            forces["regime"] if forces else "-",
            train_seconds,
        )
    return output


def _scenario_result(
    config: ExperimentConfig,
    encoder: nn.Module,
    head: nn.Module,
    rows: list[dict[str, Any]],
    shifted: Any,
    stopped_by: str,
    diverged_step: int | None,
) -> dict[str, Any]:
    """Summarize the scenario of a run: what stopped it and, for a shift, accuracy and recovery after it."""
    scenario = config.scenario
    result: dict[str, Any] = {"kind": scenario.kind, "stopped_by": "diverged" if diverged_step is not None else stopped_by}
    if scenario.kind == "label_noise":
        result["rate"] = scenario.rate
    if scenario.kind == "budget":
        result["budget_steps"] = scenario.steps
        result["budget_seconds"] = scenario.seconds
    if shifted is not None:
        with torch.no_grad():
            logits = head(encoder(torch.from_numpy(shifted.x_test)))
        finite = bool(torch.isfinite(logits).all())
        predictions = logits.argmax(dim=1).numpy()
        result["shift"] = scenario.shift
        result["at"] = scenario.at
        result["shift_test_accuracy"] = float(np.mean(predictions == shifted.y_test)) if finite else math.nan
        result["recovery_steps"] = recovery_time(
            [row["loss"] for row in rows], scenario.at, scenario.recovery_window, scenario.recovery_tolerance
        )
        # How the information force reacted: median relative strength before and after the shift.
        before = [row for row in rows if row["step"] < scenario.at]
        after = [row for row in rows if row["step"] >= scenario.at]
        for phase, selected in (("before", before), ("after", after)):
            values = [row.get("relative_strength") for row in selected]
            finite = [value for value in values if value is not None and math.isfinite(value)]
            result[f"relative_strength_{phase}"] = float(np.median(finite)) if finite else None
    return result


def _batch_indices(n: int, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Draw ``steps`` batches from per-epoch permutations; the last partial batch of an epoch is dropped."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    size = min(batch_size, n)
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            batches.append(order[start : start + size])
            if len(batches) == steps:
                break
    return batches


def _evaluate(encoder: nn.Module, head: nn.Module, dataset: Dataset, seed: int) -> dict[str, float]:
    with torch.no_grad():
        z_train = encoder(torch.from_numpy(dataset.x_train))
        z_test = encoder(torch.from_numpy(dataset.x_test))
        predictions = head(z_test).argmax(dim=1).numpy()
    z_train_np, z_test_np = z_train.numpy().astype(np.float64), z_test.numpy().astype(np.float64)
    finite = bool(np.isfinite(z_train_np).all() and np.isfinite(z_test_np).all())
    return {
        "test_accuracy": float(np.mean(predictions == dataset.y_test)) if finite else math.nan,
        "probe_accuracy": linear_probe_accuracy(z_train_np, dataset.y_train, z_test_np, dataset.y_test, seed=seed),
        "effective_rank": effective_rank(z_test_np) if finite else math.nan,
    }


def _writable(dataset: Dataset) -> Dataset:
    """Return ``dataset`` with writable arrays; Ray hands tasks read-only views of its object store."""
    arrays = {"x_train": dataset.x_train, "y_train": dataset.y_train, "x_test": dataset.x_test, "y_test": dataset.y_test}
    if all(array.flags.writeable for array in arrays.values()):
        return dataset
    return replace(dataset, **{name: np.array(array) for name, array in arrays.items()})


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)
