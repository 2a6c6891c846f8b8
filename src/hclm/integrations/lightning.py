"""Lightning callback that runs the force probe inside ``Trainer.fit``.

Contract with the LightningModule: ``training_step`` returns a dict with ``"loss"``, the task loss
``L`` (a scalar tensor), and ``"z"``, the representations the entropy surrogate is computed on
(a ``(batch, dim)`` tensor still attached to the graph). The module does not add ``−λH`` itself.

Mechanism: in automatic optimization Lightning calls ``training_step``, then ``zero_grad``, then
``LightningModule.backward(loss)``, then ``optimizer.step``. On ``setup`` the callback sets two
instance attributes on the module, which shadow the class methods until ``teardown`` removes them:

* ``training_step`` calls the module's own method and stores ``z`` from its output;
* ``backward`` computes ``H = surrogate(z)`` and calls ``ForceProbe.backward(loss, H, λ, step)``,
  so ``.grad`` equals that of ``(loss − λH).backward()`` and the forces are measured on the same
  graph.

Lightning 2.6 itself patches ``forward`` on the instance when a strategy wraps the module, and
looks ``training_step`` up on the instance, so the override also applies under such strategies.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch

from hclm.forces import REGIMES, ForceProbe, ForceRecord, RegimeThresholds
from hclm.surrogates import check_surrogate_parameters, get_surrogate

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'hclm.integrations.lightning needs the Lightning package; install it with pip install "hclm[lightning]"'
    ) from error

logger = logging.getLogger(__name__)

#: Fields of :class:`~hclm.forces.ForceRecord` logged as ``force/<field>`` on every step (NaN when not measured).
LOGGED_RECORD_FIELDS = (
    "relative_strength",
    "alignment",
    "novelty",
    "persistence",
    "injection",
    "dissipation",
    "strength",
    "entropy",
)

#: Fields of :class:`~hclm.forces.ForceSummary` logged as ``force/epoch_<field>`` at each epoch end.
LOGGED_SUMMARY_FIELDS = (
    "relative_strength_median",
    "alignment_median",
    "persistence_median",
    "volatility",
    "injection_total",
    "dissipation_total",
)


class ForceProbeCallback(pl.Callback):
    """Train on ``L − λ·H(z)`` and log the force diagnostics of :class:`~hclm.forces.ForceProbe`.

    Logged through ``pl_module.log``, so they reach every logger of the trainer:

    * every step: ``force/lam``;
    * every step: ``force/<field>`` for each name in :data:`LOGGED_RECORD_FIELDS`, NaN on steps
      the schedule does not measure;
    * every epoch end: ``force/epoch_<field>`` for each name in :data:`LOGGED_SUMMARY_FIELDS`, and
      ``force/regime_index``, the position of the regime of that epoch's records in
      :data:`hclm.forces.REGIMES` (loggers only take numbers). :attr:`regimes` keeps the names.

    How often step metrics reach the logger is set by ``Trainer(log_every_n_steps=...)``. The
    probe's ``schedule`` sets which steps are measured.

    Args:
        surrogate: registered surrogate name, see :func:`hclm.surrogates.available_surrogates`.
        lam: constant weight ``λ ≥ 0`` of the entropy term, used when ``controller`` is None.
        schedule: measure every ``k``-th optimizer step (an int) or a schedule object, as in
            :class:`~hclm.forces.ForceProbe`.
        controller: object with a ``lam`` attribute and an ``update(step, record) -> float``
            method. Its ``lam`` is the first weight, and after every optimizer step the callback
            calls ``update`` with the step index and the step's record (None on steps that are
            not measured) and uses the returned value as the next weight.
        surrogate_params: keyword arguments of the surrogate.
        thresholds: regime thresholds of the epoch summaries.

    Raises:
        ValueError: unknown surrogate or parameter, ``lam`` negative or not finite, or a
            ``controller`` without ``lam`` and ``update``.
    """

    def __init__(
        self,
        surrogate: str = "logdet",
        lam: float = 0.1,
        schedule: object = 1,
        controller: Any = None,
        surrogate_params: Mapping[str, Any] | None = None,
        thresholds: RegimeThresholds = RegimeThresholds(),
    ) -> None:
        super().__init__()
        self.surrogate_name = surrogate
        self.surrogate = get_surrogate(surrogate)
        self.surrogate_params = dict(surrogate_params or {})
        check_surrogate_parameters(surrogate, self.surrogate_params)
        if controller is not None:
            if not hasattr(controller, "lam") or not callable(getattr(controller, "update", None)):
                raise ValueError(
                    f"controller must have a lam attribute and an update(step, record) method, "
                    f"got {type(controller).__name__}; pass controller=None to keep lam constant"
                )
            lam = controller.lam
        self.lam = _checked_lam(lam, "lam" if controller is None else "controller.lam")
        self.schedule = schedule
        self.controller = controller
        self.thresholds = thresholds
        self.probe: ForceProbe | None = None
        self.regimes: list[str] = []
        self._z: torch.Tensor | None = None
        self._record: ForceRecord | None = None
        self._epoch_start = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the trainer settings and install the ``training_step`` and ``backward`` overrides."""
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                "ForceProbeCallback needs automatic optimization, got automatic_optimization=False; "
                "with manual optimization call ForceProbe.backward in training_step instead"
            )
        if trainer.accumulate_grad_batches != 1:
            # NOTE: with accumulation Lightning divides the loss by the number of batches, and the
            # probe would need the same factor on H and a step index per optimizer step.
            raise ValueError(
                f"ForceProbeCallback supports accumulate_grad_batches=1 only, got {trainer.accumulate_grad_batches}"
            )
        precision = str(trainer.precision)
        if precision not in ("32-true", "64-true", "32", "64"):
            # Mixed precision scales the loss before backward, so loss − λH would mix scaled and unscaled terms.
            raise ValueError(f"ForceProbeCallback supports precision '32-true' or '64-true' only, got {precision!r}")

        original_training_step = pl_module.training_step

        def training_step(*args: Any, **kwargs: Any) -> Any:
            output = original_training_step(*args, **kwargs)
            self._z = _representations_of(output)
            return output

        def backward(loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            self._probe_backward(trainer, loss, *args, **kwargs)

        pl_module.training_step = training_step  # type: ignore[method-assign]
        pl_module.backward = backward  # type: ignore[method-assign]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the overrides so the module's own methods apply again."""
        if stage != "fit":
            return
        for name in ("training_step", "backward"):
            pl_module.__dict__.pop(name, None)
        self._z = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Create the probe on the parameters of the trainer's single optimizer."""
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"ForceProbeCallback needs exactly one optimizer, got {len(trainer.optimizers)}; "
                "return a single optimizer from configure_optimizers"
            )
        self.probe = ForceProbe(optimizer=trainer.optimizers[0], schedule=self.schedule, thresholds=self.thresholds)
        self.regimes = []
        self._epoch_start = 0
        logger.info("force probe on %d parameter tensors, surrogate %s", len(self.probe.params), self.surrogate_name)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log ``λ`` and the step's record, then ask the controller for the next ``λ``."""
        record, self._record = self._record, None
        step = trainer.global_step - 1
        pl_module.log("force/lam", self.lam, on_step=True, on_epoch=False)
        # Lightning sends the last value of a step metric again on later steps that do not log
        # it, so unmeasured steps log NaN rather than repeat an old measurement.
        values = {
            f"force/{name}": math.nan if record is None else float(getattr(record, name))
            for name in LOGGED_RECORD_FIELDS
        }
        pl_module.log_dict(values, on_step=True, on_epoch=False)
        if self.controller is not None:
            self.lam = _checked_lam(self.controller.update(step, record), "controller.update()")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Summarize the records of this epoch, log the summary and keep the regime name."""
        if self.probe is None:
            return
        records = self.probe.all_records()[self._epoch_start :]
        self._epoch_start += len(records)
        if not records:
            return
        summary = self.probe.summary(window=len(records))
        self.regimes.append(summary.regime)
        values = {f"force/epoch_{name}": float(getattr(summary, name)) for name in LOGGED_SUMMARY_FIELDS}
        values["force/regime_index"] = float(REGIMES.index(summary.regime))
        pl_module.log_dict(values, on_step=False, on_epoch=True)
        logger.info("epoch %d: regime %s over %d measured steps", trainer.current_epoch, summary.regime, len(records))

    def _probe_backward(self, trainer: pl.Trainer, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self.probe is None or self._z is None:
            raise RuntimeError("ForceProbeCallback.backward ran before training_step returned z; use Trainer.fit")
        z, self._z = self._z, None
        entropy = self.surrogate(z, **self.surrogate_params)
        retain_graph = bool(kwargs.pop("retain_graph", False))
        if args or kwargs:
            raise ValueError(f"ForceProbeCallback does not pass backward arguments {args} {kwargs} to the probe")
        self._record = self.probe.backward(loss, entropy, self.lam, trainer.global_step, retain_graph=retain_graph)


def _representations_of(output: Any) -> torch.Tensor:
    if not isinstance(output, Mapping) or "z" not in output or "loss" not in output:
        raise ValueError(
            f"training_step must return a dict with 'loss' and 'z' for ForceProbeCallback, got {type(output).__name__}"
            + (f" with keys {sorted(output)}" if isinstance(output, Mapping) else "")
        )
    z = output["z"]
    if not isinstance(z, torch.Tensor) or not z.requires_grad:
        raise ValueError("training_step output 'z' must be a tensor attached to the graph; do not detach it")
    return z


def _checked_lam(value: Any, source: str) -> float:
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a finite number >= 0, got {value!r}") from None
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"{source} must be a finite number >= 0, got {value}")
    return lam
