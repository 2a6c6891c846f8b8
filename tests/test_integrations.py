"""Integrations with the real Lightning, TensorBoard and MLflow packages on CPU."""

from __future__ import annotations

import copy
import csv
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from hclm.surrogates import logdet_entropy

LAM = 0.1


def _digits_loader(batch_size: int = 64) -> DataLoader:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _module_class():
    pl = pytest.importorskip("lightning.pytorch")

    class DigitsModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8))
            self.head = nn.Linear(8, 10)

        def training_step(self, batch, batch_idx):
            x, y = batch
            z = self.encoder(x)
            return {"loss": F.cross_entropy(self.head(z), y), "z": z}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return pl, DigitsModule


class _FirstStepGrads:
    """Keep the batch and the parameter gradients of the first optimizer step."""

    def __init__(self, pl) -> None:
        outer = self

        class Capture(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == 0:
                    outer.batch = [t.clone() for t in batch]

            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                if trainer.global_step == 0:
                    outer.grads = {name: p.grad.clone() for name, p in pl_module.named_parameters()}

        self.callback = Capture()
        self.batch = None
        self.grads = None


class _HalvingController:
    def __init__(self, lam: float) -> None:
        self.lam = lam
        self.calls: list[tuple[int, bool]] = []

    def update(self, step, record):
        self.calls.append((step, record is not None))
        self.lam = self.lam / 2
        return self.lam


def _trainer(pl, tmp_path, callbacks, steps: int, logger=False):
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )


def test_integrations_import_no_extras():
    code = (
        "import sys, hclm.integrations; "
        "print(sorted(m for m in ('lightning', 'mlflow', 'tensorboard') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_callback_gradient_matches_plain_backward(tmp_path):
    pl, DigitsModule = _module_class()
    from hclm.integrations.lightning import ForceProbeCallback

    torch.manual_seed(0)
    module = DigitsModule()
    reference = copy.deepcopy(module)
    capture = _FirstStepGrads(pl)
    probe_callback = ForceProbeCallback(surrogate="logdet", lam=LAM, schedule=1)
    _trainer(pl, tmp_path, [probe_callback, capture.callback], steps=1).fit(module, _digits_loader())

    x, y = capture.batch
    z = reference.encoder(x)
    loss = F.cross_entropy(reference.head(z), y)
    (loss - LAM * logdet_entropy(z)).backward()
    for name, param in reference.named_parameters():
        assert torch.equal(capture.grads[name], param.grad), name
    assert len(probe_callback.probe.all_records()) == 1
    assert "backward" not in module.__dict__


def test_callback_metrics_in_csv(tmp_path):
    pl, DigitsModule = _module_class()
    from lightning.pytorch.loggers import CSVLogger

    from hclm.integrations.lightning import LOGGED_RECORD_FIELDS, ForceProbeCallback

    torch.manual_seed(0)
    csv_logger = CSVLogger(tmp_path, name="digits")
    callback = ForceProbeCallback(lam=LAM, schedule=2)
    # 1797 digits in batches of 64 give 29 batches per epoch, so 32 steps end epoch 0, and
    # stopping at max_steps ends the partial epoch 1.
    _trainer(pl, tmp_path, [callback], steps=32, logger=csv_logger).fit(DigitsModule(), _digits_loader())

    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    for name in LOGGED_RECORD_FIELDS:
        assert f"force/{name}" in columns, name
    assert "force/lam" in columns
    assert "force/regime_index" in columns
    step_rows = [row for row in rows if row["force/alignment"]]
    alignments = [float(row["force/alignment"]) for row in step_rows]
    measured_steps = [int(row["step"]) for row, value in zip(step_rows, alignments) if not math.isnan(value)]
    assert measured_steps[:3] == [0, 2, 4]
    alignments = [value for value in alignments if not math.isnan(value)]
    assert all(-1.0 <= value <= 1.0 for value in alignments)
    assert len(callback.regimes) == 2


def test_callback_controller_changes_lam(tmp_path):
    pl, DigitsModule = _module_class()
    from hclm.integrations.lightning import ForceProbeCallback

    torch.manual_seed(0)
    controller = _HalvingController(0.4)
    callback = ForceProbeCallback(lam=0.0, schedule=2, controller=controller)
    _trainer(pl, tmp_path, [callback], steps=4).fit(DigitsModule(), _digits_loader())

    lams = [record.lam for record in callback.probe.all_records()]
    assert lams == [0.4, 0.1]
    assert controller.calls == [(0, True), (1, False), (2, True), (3, False)]
    assert callback.lam == 0.025


def test_callback_rejects_missing_z(tmp_path):
    pl, DigitsModule = _module_class()
    from hclm.integrations.lightning import ForceProbeCallback

    class NoZ(DigitsModule):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)["loss"]

    with pytest.raises(ValueError, match="'loss' and 'z'"):
        _trainer(pl, tmp_path, [ForceProbeCallback()], steps=1).fit(NoZ(), _digits_loader())


def test_callback_rejects_bad_arguments():
    pytest.importorskip("lightning.pytorch")
    from hclm.integrations.lightning import ForceProbeCallback

    with pytest.raises(ValueError, match="unknown surrogate"):
        ForceProbeCallback(surrogate="nope")
    with pytest.raises(ValueError, match="lam must be"):
        ForceProbeCallback(lam=-1.0)
    with pytest.raises(ValueError, match="update"):
        ForceProbeCallback(controller=object())


def test_tensorboard_sink_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hclm.integrations import TensorBoardSink

    with TensorBoardSink(tmp_path / "tb") as sink:
        sink.log_params({"surrogate": "logdet", "lam": 0.1})
        sink.log_metrics({"loss": 2.5, "force/alignment": -0.25, "lam": None}, step=0)
        sink.log_metrics({"loss": 1.5, "force/alignment": 0.5}, step=1)

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = events.Scalars("loss")
    assert [event.step for event in loss] == [0, 1]
    assert [event.value for event in loss] == [2.5, 1.5]
    assert [event.value for event in events.Scalars("force/alignment")] == [-0.25, 0.5]
    assert "lam" not in events.Tags()["scalars"]
    assert "params/text_summary" in events.Tags()["tensors"]


def test_mlflow_sink_params_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from hclm.integrations import MLflowSink

    # MLflow 3 accepts a local file store only when its user opts in with this variable.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    sink = MLflowSink(uri, experiment="digits", run_name="logdet")
    with sink:
        sink.log_params({"surrogate": "logdet", "lam": 0.1})
        sink.log_metrics({"loss": 2.5, "regime": "weak"}, step=0)
        sink.log_metrics({"loss": 1.5, "persistence": math.nan}, step=1)
        run_id = sink.run_id

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "loss")
    assert run.data.params == {"surrogate": "logdet", "lam": "0.1"}
    assert [(metric.step, metric.value) for metric in history] == [(0, 2.5), (1, 1.5)]
    assert math.isnan(run.data.metrics["persistence"])
    assert run.data.tags["regime"] == "weak"
    assert run.info.status == "FINISHED"


def test_mlflow_sink_rejects_server_uri():
    pytest.importorskip("mlflow")
    from hclm.integrations import MLflowSink

    with pytest.raises(ValueError, match="local file stores"):
        MLflowSink("http://localhost:5000")


def test_log_run_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hclm.integrations import log_run_to, sinks_from_config

    output = SimpleNamespace(
        spec=SimpleNamespace(surrogate="logdet", lam=0.1, seed=0),
        rows=[{"step": 0, "loss": 2.0, "alignment": None}, {"step": 1, "loss": 1.0, "alignment": 0.5}],
        result={"test_accuracy": 0.9, "diverged": False, "forces": {"regime": "weak", "volatility": 0.2}},
    )
    sinks = sinks_from_config(tensorboard=tmp_path / "tb")
    log_run_to(sinks, output)
    for sink in sinks:
        sink.close()

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.value for event in events.Scalars("loss")] == [2.0, 1.0]
    assert [event.step for event in events.Scalars("alignment")] == [1]
    assert [event.step for event in events.Scalars("test_accuracy")] == [2]
    assert [event.value for event in events.Scalars("forces/volatility")] == pytest.approx([0.2])


def test_sinks_from_config_rejects_type():
    from hclm.integrations import sinks_from_config

    with pytest.raises(ValueError, match="tensorboard must be"):
        sinks_from_config(tensorboard=3)


def test_sweep_logs_each_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from hclm.experiments import parse_config, run_sweep

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    config = parse_config(
        {
            "logging": {"tensorboard": True, "mlflow": uri},
            "sweep": {"surrogates": ["none", "logdet"], "lams": [0.1], "seeds": [0]},
            "train": {"steps": 20},
        }
    )
    run_sweep(config, tmp_path / "out")
    event_folders = sorted(path.name for path in (tmp_path / "out" / "tensorboard").iterdir())
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("hclm")
    runs = MlflowClient(tracking_uri=uri).search_runs([experiment.experiment_id])
    assert event_folders == ["logdet-lam0.1-seed0", "none-seed0"]
    assert sorted(run.info.run_name for run in runs) == ["logdet-lam0.1-seed0", "none-seed0"]
