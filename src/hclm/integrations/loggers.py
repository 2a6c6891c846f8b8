"""Metric sinks for TensorBoard and MLflow with one small interface.

A sink has ``log_params(params)``, ``log_metrics(metrics, step)`` and ``close()``, and works as a
context manager. The optional packages are imported when a sink is created, not when this module
is imported.
"""

from __future__ import annotations

import json
import logging
import numbers
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

logger = logging.getLogger(__name__)


class MetricSink(Protocol):
    """Interface shared by :class:`TensorBoardSink` and :class:`MLflowSink`."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


class _SinkBase:
    def __enter__(self) -> "_SinkBase":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class TensorBoardSink(_SinkBase):
    """Write metrics as TensorBoard scalars with ``torch.utils.tensorboard.SummaryWriter``.

    Numbers and booleans become scalars, strings become text entries at that step, and None is
    skipped. ``log_params`` writes the parameters as one JSON text entry under the tag ``params``.

    Args:
        log_dir: folder of the event files; created if missing.

    Raises:
        ImportError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                'TensorBoardSink needs the tensorboard package; install it with pip install "hclm[tensorboard]"'
            ) from error
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Write ``params`` as a JSON text entry under the tag ``params``."""
        text = json.dumps(dict(params), sort_keys=True, default=str)
        self._writer.add_text("params", text)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Write each value of ``metrics`` at ``step``."""
        for key, value in metrics.items():
            if value is None:
                continue
            if isinstance(value, str):
                self._writer.add_text(key, value, global_step=step)
            else:
                self._writer.add_scalar(key, _as_number(key, value), global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


class MLflowSink(_SinkBase):
    """Log to one MLflow run in a local file store through ``mlflow.tracking.MlflowClient``.

    The sink uses its own client and run, not MLflow's global active run, so several sinks can be
    open at once. Strings are logged as run tags, because MLflow metrics are numbers only. MLflow
    rejects a second ``log_params`` call that gives an existing key another value.

    Args:
        tracking_uri: ``file:`` URI or plain folder path of the store, e.g. ``"file:./mlruns"``.
        experiment: experiment name; created if missing.
        run_name: name of the new run; MLflow picks one if None.

    NOTE: MLflow 3.18 rejects file stores with an ``MlflowException`` unless the environment
    variable ``MLFLOW_ALLOW_FILE_STORE=true`` is set. The sink leaves that choice to the user.

    Raises:
        ImportError: the ``mlflow-skinny`` (or ``mlflow``) package is not installed.
        ValueError: ``tracking_uri`` is not a local file store.
    """

    def __init__(self, tracking_uri: str | Path = "file:./mlruns", experiment: str = "hclm", run_name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise ImportError(
                'MLflowSink needs the mlflow-skinny package; install it with pip install "hclm[mlflow]"'
            ) from error
        self.tracking_uri = _file_store_uri(tracking_uri)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self._client.create_experiment(experiment)
        self.run_id: str = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        self._closed = False
        logger.info("MLflow run %s started in %s, experiment %s", self.run_id, self.tracking_uri, experiment)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` as run parameters (values are stored as strings)."""
        for key, value in params.items():
            self._client.log_param(self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log each numeric value of ``metrics`` at ``step`` and each string as a run tag."""
        from mlflow.entities import Metric, RunTag

        timestamp = _now_ms()
        numeric = []
        tags = []
        for key, value in metrics.items():
            if value is None:
                continue
            if isinstance(value, str):
                tags.append(RunTag(key, value))
            else:
                numeric.append(Metric(key, _as_number(key, value), timestamp, step))
        if numeric or tags:
            self._client.log_batch(self.run_id, metrics=numeric, tags=tags)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``); later calls do nothing."""
        if self._closed:
            return
        self._client.set_terminated(self.run_id, status=status)
        self._closed = True

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


def sinks_from_config(
    tensorboard: str | Path | Mapping[str, Any] | None = None,
    mlflow: str | Path | Mapping[str, Any] | None = None,
) -> list[MetricSink]:
    """Create the sinks that are configured; None leaves a sink out.

    Args:
        tensorboard: log folder, or keyword arguments of :class:`TensorBoardSink`.
        mlflow: tracking URI, or keyword arguments of :class:`MLflowSink`.

    Returns:
        The created sinks, TensorBoard first.
    """
    sinks: list[MetricSink] = []
    if tensorboard is not None:
        sinks.append(TensorBoardSink(**_as_kwargs(tensorboard, "log_dir", "tensorboard")))
    if mlflow is not None:
        sinks.append(MLflowSink(**_as_kwargs(mlflow, "tracking_uri", "mlflow")))
    return sinks


def log_step(sinks: Iterable[MetricSink], row: Mapping[str, Any], step: int | None = None) -> None:
    """Log one step row of the comparison runner, e.g. ``{"step": 3, "loss": 1.2, "lam": 0.1}``.

    ``step`` defaults to ``row["step"]``. The ``step`` key itself and None values are not logged.
    """
    if step is None:
        if "step" not in row:
            raise ValueError(f"row has no 'step' key (keys: {sorted(row)}); pass step= explicitly")
        step = int(row["step"])
    metrics = {key: value for key, value in row.items() if key != "step" and value is not None}
    for sink in sinks:
        sink.log_metrics(metrics, step)


def log_run_to(sinks: Iterable[MetricSink], output: Any) -> None:
    """Log a finished run of :func:`hclm.experiments.runner.train_run` to every sink.

    Logs the run spec (surrogate, lam, seed) as parameters, every row of ``output.rows`` at its
    step, and the numeric and string fields of ``output.result`` (with ``forces`` flattened to
    ``forces/<field>``) at the step after the last row.
    """
    sinks = list(sinks)
    spec = output.spec
    params = {"surrogate": spec.surrogate, "lam": spec.lam, "seed": spec.seed}
    for sink in sinks:
        sink.log_params(params)
    for row in output.rows:
        log_step(sinks, row)
    final_step = len(output.rows)
    final = _flatten_result(output.result)
    for sink in sinks:
        sink.log_metrics(final, final_step)


def _flatten_result(result: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            for inner_key, inner_value in value.items():
                if _is_loggable(inner_value):
                    flat[f"{key}/{inner_key}"] = inner_value
        elif _is_loggable(value) and key not in ("lam", "seed", "surrogate"):
            flat[key] = value
    return flat


def _is_loggable(value: Any) -> bool:
    return isinstance(value, (str, numbers.Real))


def _as_number(key: str, value: Any) -> float:
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        return float(item())
    raise ValueError(f"metric {key!r} must be a number, a string or None, got {type(value).__name__}")


def _as_kwargs(value: str | Path | Mapping[str, Any], first: str, name: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (str, Path)):
        return {first: value}
    raise ValueError(f"{name} must be a path, a URI or a dict of keyword arguments, got {type(value).__name__}")


def _file_store_uri(tracking_uri: str | Path) -> str:
    text = str(tracking_uri)
    if text.startswith("file:"):
        return text
    if "://" in text:
        raise ValueError(
            f"MLflowSink supports local file stores only, got tracking_uri={text!r}; "
            "pass a folder path or a 'file:' URI"
        )
    return Path(text).resolve().as_uri()


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["MLflowSink", "MetricSink", "TensorBoardSink", "log_run_to", "log_step", "sinks_from_config"]
