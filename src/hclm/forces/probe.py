"""The force probe: exact loss and information forces in parameter space during training.

For the regularized objective ``J(θ) = L(θ) − λ·H(f_θ(X))`` the probe measures, on scheduled
steps, the loss force ``F_L = −∇_θL`` and the information force ``F_H = λ·∇_θH`` from two
reverse-mode passes over the same graph, and fills ``.grad`` with ``∇_θJ`` exactly as
``J.backward()`` would. Unscheduled steps cost one plain backward pass.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch

from hclm.forces.distributed import all_reduce_mean_, average_gradients, reduce_group
from hclm.forces.regimes import ForceSummary, RegimeThresholds, summarize_records
from hclm.forces.schedule import as_schedule

logger = logging.getLogger(__name__)


@dataclass
class ForceRecord:
    """Force diagnostics of one measured step.

    Attributes:
        step: training step index.
        lam: weight ``λ`` of the entropy term at this step.
        loss: task loss ``L``.
        entropy: surrogate value ``H`` before the update.
        strength: ``s_t = ‖F_H‖``.
        loss_force_norm: ``‖F_L‖``.
        relative_strength: ``r_t = ‖F_H‖/‖F_L‖``.
        alignment: ``c_t = cos(F_H, F_L)``; negative means the two forces fight.
        novelty: ``‖F_H − (F_H·u)u‖/‖F_L‖`` with ``u = F_L/‖F_L‖``: the part of the information
            force orthogonal to the loss force, relative to ``‖F_L‖``.
        persistence: ``cos(F_H(t), F_H(t′))`` with the previous measurement ``t′`` (NaN at the first).
        injection: information injection ``I_t = Σ_p η_p·λ‖∇_pH‖² ≥ 0``.
        dissipation: entropy change driven by the loss, ``D_t = Σ_p η_p·⟨∇_pH, F_L,p⟩``.
        delta_h: realized change ``H(θ_{t+1}) − H(θ_t)`` on the same batch, once recorded.
        residual: ``ΔH_t − (I_t + D_t)``, ``O(η²)`` for plain SGD.
    """

    step: int
    lam: float
    loss: float
    entropy: float
    strength: float
    loss_force_norm: float
    relative_strength: float
    alignment: float
    novelty: float
    persistence: float
    injection: float
    dissipation: float
    delta_h: float = math.nan
    residual: float = math.nan

    def as_dict(self) -> dict[str, float | int]:
        """Return the record as a plain dict."""
        return asdict(self)


class ForceProbe:
    """Measure the loss force and the information force on a schedule.

    Use it in place of ``(loss - lam * entropy).backward()``::

        probe = ForceProbe(optimizer=optimizer, schedule=1)
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            z = encoder(x)
            loss = F.cross_entropy(head(z), y)
            entropy = hclm.surrogates.logdet_entropy(z)
            probe.backward(loss, entropy, lam=0.1, step=step)
            optimizer.step()
        print(probe.summary().regime)

    The forces are taken before the optimizer transforms the gradient. Injection and dissipation
    use the step size ``η`` of each parameter's optimizer group (or ``lr``). For optimizers other
    than plain SGD they describe the SGD flow at that step size, so the realized ``ΔH`` differs
    from ``I_t + D_t`` by more than ``O(η²)``.

    A measured step costs one more reverse pass than a plain step, plus the bookkeeping, and the
    probe keeps five float64 vectors as long as the measured parameters (40 bytes per parameter).

    Args:
        params: parameters whose forces are measured; defaults to all parameters of ``optimizer``.
        schedule: an integer ``k`` (measure every ``k``-th step) or a schedule object called with
            the step index.
        optimizer: optimizer whose per-group ``lr`` gives the step size ``η``.
        lr: step size ``η`` for all parameters; overrides the optimizer's.
        thresholds: regime thresholds used by :meth:`summary`.
        keep_records: keep every record in :attr:`records` (set False to keep only the last one).
        reduce: data-parallel training. True (the default process group) or a process group:
            average ``∇L``, ``∇H``, ``L``, ``H`` and the realized ``H`` over the ranks before
            measuring, and leave the rank-averaged ``∇J`` in ``.grad`` on every step, as DDP
            would. Use it with a model that is not wrapped in DDP, with the surrogate called with
            ``gather=True``; then the records equal those of one process on the global batch.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | None = None,
        schedule: object = 1,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float | None = None,
        thresholds: RegimeThresholds = RegimeThresholds(),
        keep_records: bool = True,
        reduce: bool | Any = False,
    ) -> None:
        if params is None:
            if optimizer is None:
                raise ValueError("ForceProbe needs params or an optimizer to know which parameters to measure")
            params = [p for group in optimizer.param_groups for p in group["params"]]
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("ForceProbe got no parameters that require gradients")
        if lr is not None and not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number >= 0, got {lr}")
        self.schedule = as_schedule(schedule)
        self.optimizer = optimizer
        self.lr = lr
        self.thresholds = thresholds
        self.keep_records = keep_records
        self.reduce = reduce
        self.records: list[ForceRecord] = []
        self._sizes = [p.numel() for p in self.params]
        self._previous_direction: torch.Tensor | None = None
        self._previous_norm = 0.0
        self._direction_slot = 0
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}
        self._pending: ForceRecord | None = None
        self._step_counter = 0

    def should_measure(self, step: int) -> bool:
        """Return True when the schedule measures ``step``."""
        return bool(self.schedule(step))

    @property
    def awaiting_realized(self) -> bool:
        """True after a measured step whose realized ``ΔH`` has not been recorded yet."""
        return self._pending is not None

    @property
    def last(self) -> ForceRecord | None:
        """The most recent record, or None before the first measurement."""
        if self._pending is not None:
            return self._pending
        return self.records[-1] if self.records else None

    def backward(
        self,
        loss: torch.Tensor,
        entropy: torch.Tensor,
        lam: float,
        step: int | None = None,
        *,
        retain_graph: bool = False,
    ) -> ForceRecord | None:
        """Accumulate ``∇_θ(L − λH)`` into ``.grad`` and measure the forces if ``step`` is scheduled.

        Args:
            loss: scalar task loss ``L``.
            entropy: scalar surrogate value ``H`` of the same batch.
            lam: weight ``λ ≥ 0``.
            step: training step index; defaults to a counter of calls.
            retain_graph: keep the graph after the call, as in ``Tensor.backward``.

        Returns:
            The new record on a measured step, otherwise None.
        """
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        if step is None:
            step = self._step_counter
        self._step_counter = step + 1
        objective = loss - lam * entropy

        reducing, group = reduce_group(self.reduce)
        if not self.should_measure(step):
            objective.backward(retain_graph=retain_graph)
            if reducing:
                average_gradients(self.params, group)
            return None

        entropy_grads = torch.autograd.grad(entropy, self.params, retain_graph=True, allow_unused=True)
        # A plain backward pass fills every leaf of the graph, including parameters outside
        # self.params; ∇J of the measured ones is what it added to their .grad.
        accumulated = [None if param.grad is None else param.grad.detach().clone() for param in self.params]
        objective.backward(retain_graph=retain_graph)
        objective_grads: list[torch.Tensor | None] = []
        for param, before in zip(self.params, accumulated):
            if param.grad is None or before is None:
                objective_grads.append(param.grad)
            else:
                objective_grads.append(param.grad - before)

        with torch.no_grad():
            grad_h = self._flatten_into(entropy_grads, self._buffer("grad_h", self._direction_slot))
            grad_j = self._flatten_into(objective_grads, self._buffer("grad_j"))
            values = torch.tensor([float(loss.detach()), float(entropy.detach())], dtype=torch.float64)
            if reducing:
                # The forces of the global batch are the rank means of the local gradients.
                all_reduce_mean_(grad_h, group)
                all_reduce_mean_(grad_j, group)
                all_reduce_mean_(values, group)
                self._write_back(objective_grads, accumulated, grad_j)
        record = self._measure(step, lam, float(values[0]), float(values[1]), grad_h, grad_j)
        if self._pending is not None:
            self._store(self._pending)
        self._pending = record
        return record

    def record_realized(self, entropy_after: torch.Tensor | float) -> ForceRecord:
        """Record the realized ``ΔH`` of the last measured step.

        Call it after ``optimizer.step()`` with the surrogate recomputed on the same batch with
        the updated parameters (under ``torch.no_grad()``).
        """
        if self._pending is None:
            raise RuntimeError("record_realized() called without a measured step waiting for it; call backward() first")
        record = self._pending
        after = float(entropy_after)
        reducing, group = reduce_group(self.reduce)
        if reducing:
            after = float(all_reduce_mean_(torch.tensor([after], dtype=torch.float64), group))
        record.delta_h = after - record.entropy
        record.residual = record.delta_h - (record.injection + record.dissipation)
        self._store(record)
        self._pending = None
        return record

    def summary(self, window: int | None = None, thresholds: RegimeThresholds | None = None) -> ForceSummary:
        """Summarize the last ``window`` records (all by default) and classify the regime."""
        records = self.all_records()
        if window is not None:
            if window < 1:
                raise ValueError(f"window must be >= 1, got {window}")
            records = records[-window:]
        return summarize_records(records, thresholds or self.thresholds)

    def all_records(self) -> list[ForceRecord]:
        """Return the stored records plus the one waiting for its realized ``ΔH``."""
        records = list(self.records)
        if self._pending is not None:
            records.append(self._pending)
        return records

    def _store(self, record: ForceRecord) -> None:
        if self.keep_records:
            self.records.append(record)
        else:
            self.records[:] = [record]

    def _write_back(
        self,
        objective_grads: Sequence[torch.Tensor | None],
        accumulated: Sequence[torch.Tensor | None],
        grad_j: torch.Tensor,
    ) -> None:
        """Set ``.grad`` to what it held before this step plus the rank-averaged ``∇J`` in ``grad_j``."""
        offset = 0
        for param, local, before, size in zip(self.params, objective_grads, accumulated, self._sizes):
            if local is not None and param.grad is not None:
                averaged = grad_j[offset : offset + size].view_as(param.grad)
                param.grad.copy_(averaged if before is None else before + averaged)
            offset += size

    def _measure(
        self,
        step: int,
        lam: float,
        loss: float,
        entropy: float,
        grad_h: torch.Tensor,
        grad_j: torch.Tensor,
    ) -> ForceRecord:
        """Compute the record from the flat ``∇H`` and ``∇J``; ``grad_j`` is overwritten with ``F_L``."""
        with torch.no_grad():
            info_force = torch.mul(grad_h, lam, out=self._buffer("info_force"))
            # ∇J = ∇L − λ∇H, so F_L = −∇L = −(∇J + λ∇H), built in place in the ∇J buffer.
            loss_force = grad_j.add_(info_force).neg_()

            strength = float(info_force.norm())
            loss_norm = float(loss_force.norm())
            inner = float(info_force @ loss_force)
            relative = strength / loss_norm if loss_norm > 0 else math.nan
            if strength > 0 and loss_norm > 0:
                alignment = max(-1.0, min(1.0, inner / (strength * loss_norm)))
                orthogonal_sq = max(strength**2 - (inner / loss_norm) ** 2, 0.0)
                novelty = math.sqrt(orthogonal_sq) / loss_norm
            else:
                alignment = math.nan
                novelty = 0.0 if loss_norm > 0 else math.nan

            persistence = math.nan
            grad_h_norm = float(grad_h.norm())
            if self._previous_direction is not None and grad_h_norm > 0 and self._previous_norm > 0:
                persistence = float(grad_h @ self._previous_direction) / (grad_h_norm * self._previous_norm)
            if grad_h_norm > 0:
                self._previous_direction = grad_h
                self._previous_norm = grad_h_norm
                self._direction_slot = 1 - self._direction_slot

            step_sizes = self._step_sizes(grad_h)
            if step_sizes is None:
                injection = dissipation = math.nan
            else:
                scaled = torch.mul(grad_h, step_sizes, out=self._buffer("scaled"))
                injection = float(scaled @ info_force)
                dissipation = float(scaled @ loss_force)

        record = ForceRecord(
            step=step,
            lam=float(lam),
            loss=loss,
            entropy=entropy,
            strength=strength,
            loss_force_norm=loss_norm,
            relative_strength=relative,
            alignment=alignment,
            novelty=novelty,
            persistence=persistence,
            injection=injection,
            dissipation=dissipation,
        )
        logger.debug("force probe step %d: %s", step, record)
        return record

    def _buffer(self, name: str, slot: int = 0) -> torch.Tensor:
        """Return a float64 vector with one entry per measured parameter entry, allocated once.

        Reusing the buffers keeps a measured step free of large allocations (and page faults).
        """
        key = (name, slot)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = torch.empty(sum(self._sizes), dtype=torch.float64, device=self.params[0].device)
            self._buffers[key] = buffer
        return buffer

    def _flatten_into(self, grads: Sequence[torch.Tensor | None], out: torch.Tensor) -> torch.Tensor:
        offset = 0
        for grad, size in zip(grads, self._sizes):
            piece = out[offset : offset + size]
            if grad is None:
                piece.zero_()
            else:
                piece.copy_(grad.reshape(-1))
            offset += size
        return out

    def _step_sizes(self, like: torch.Tensor) -> torch.Tensor | float | None:
        if self.lr is not None:
            return float(self.lr)
        if self.optimizer is None:
            return None
        rates = {}
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                rates[id(param)] = float(group["lr"])
        values = [rates.get(id(param), 0.0) for param in self.params]
        if len(set(values)) == 1:
            return values[0]
        return torch.repeat_interleave(
            torch.tensor(values, dtype=like.dtype, device=like.device),
            torch.tensor(self._sizes, device=like.device),
        )
