"""Controllers of the entropy weight ``λ``: fixed values, schedules and a PI feedback loop.

Every controller follows :class:`Controller`. The training loop reads ``controller.lam`` for the
next step and calls ``controller.update(step, record)`` after every step, where ``record`` is the
:class:`~hclm.forces.probe.ForceRecord` of a measured step and None otherwise::

    controller = PIController(target=("relative_strength", 0.05, 0.2), lam_init=0.1)
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        record = probe.backward(loss, entropy, lam=controller.lam, step=step)
        optimizer.step()
        controller.update(step, record)
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Iterable, Mapping, Protocol, runtime_checkable

from hclm.forces.probe import ForceRecord

logger = logging.getLogger(__name__)

RELATIVE_STRENGTH = "relative_strength"
ENTROPY = "entropy"


@runtime_checkable
class Controller(Protocol):
    """Source of the entropy weight ``λ`` for each training step.

    Attributes:
        lam: the weight to use at the next step.
    """

    lam: float

    def update(self, step: int, record: ForceRecord | None) -> float:
        """Advance past ``step`` (its probe record, or None on unmeasured steps) and return the new ``λ``."""
        ...


def check_lam(value: object, name: str = "lam") -> float:
    """Validate a weight ``λ`` and return it as a float.

    Raises:
        ValueError: if ``value`` is not a finite number ``>= 0``.
    """
    number = _as_float(value, name)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}; pass a value such as 0.1")
    return number


def check_band(low: object, high: object) -> tuple[float, float]:
    """Validate a target band ``[low, high]`` of the relative strength and return it as floats.

    Raises:
        ValueError: if a bound is not finite and positive, or if ``low >= high`` (an empty band).
    """
    low_value = _as_float(low, "band low")
    high_value = _as_float(high, "band high")
    for name, number in (("low", low_value), ("high", high_value)):
        if not (math.isfinite(number) and number > 0):
            raise ValueError(f"band {name} must be a finite number > 0, got {number!r}")
    if low_value >= high_value:
        raise ValueError(f"band is empty: low {low_value!r} >= high {high_value!r}; pass low < high, e.g. 0.05 0.2")
    return low_value, high_value


def check_floor(value: object) -> float:
    """Validate an entropy floor (in the surrogate's units, nats for most) and return it as a float.

    Raises:
        ValueError: if ``value`` is not a finite number.
    """
    number = _as_float(value, "floor")
    if not math.isfinite(number):
        raise ValueError(f"floor must be a finite number, got {value!r}")
    return number


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


class ConstantController:
    """Fixed ``λ`` that changes only through :meth:`set_lam`.

    Args:
        lam: weight ``λ >= 0``.
    """

    def __init__(self, lam: float) -> None:
        self.lam = check_lam(lam)
        self.paused = False

    def update(self, step: int, record: ForceRecord | None) -> float:
        """Return the fixed ``λ``, ignoring ``step`` and ``record``."""
        return self.lam

    def set_lam(self, value: float) -> str:
        """Replace ``λ`` and return a description of the change.

        Raises:
            ValueError: if ``value`` is negative, infinite or NaN.
        """
        new = check_lam(value)
        message = f"lam {self.lam:g} -> {new:g}"
        self.lam = new
        logger.info("controller change accepted: %s", message)
        return message

    def pause(self) -> str:
        """Mark the controller paused. A constant ``λ`` stays fixed either way."""
        self.paused = True
        return "paused"

    def resume(self) -> str:
        """Clear the paused mark."""
        self.paused = False
        return "resumed"


class _Schedule:
    """Base of schedules that compute ``λ`` from the step index and may be paused."""

    def __init__(self) -> None:
        self.paused = False
        self.lam = self.value_at(0)

    def value_at(self, step: int) -> float:
        raise NotImplementedError

    def update(self, step: int, record: ForceRecord | None) -> float:
        """Set ``λ`` to the schedule's value at ``step + 1`` unless paused, and return it."""
        if not self.paused:
            self.lam = self.value_at(step + 1)
        return self.lam

    def pause(self) -> str:
        """Hold ``λ`` at its current value until :meth:`resume`."""
        self.paused = True
        logger.info("controller change accepted: schedule paused at lam %g", self.lam)
        return f"paused at lam {self.lam:g}"

    def resume(self) -> str:
        """Follow the schedule again from the next update on, which may jump to the scheduled value."""
        self.paused = False
        logger.info("controller change accepted: schedule resumed")
        return "resumed"


class StepSchedule(_Schedule):
    """Piecewise constant ``λ``: the value of the latest milestone at or before the step.

    Args:
        milestones: mapping ``{step: lam}`` or pairs ``(step, lam)``. One of them must be at step 0.

    Raises:
        ValueError: if there is no milestone at step 0, a step is negative or repeated, or a
            weight is invalid.
    """

    def __init__(self, milestones: Mapping[int, float] | Iterable[tuple[int, float]]) -> None:
        pairs = list(milestones.items()) if isinstance(milestones, Mapping) else list(milestones)
        steps: list[int] = []
        values: list[float] = []
        for step, lam in sorted(pairs, key=lambda pair: pair[0]):
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"milestone step must be an integer >= 0, got {step!r}")
            if steps and step == steps[-1]:
                raise ValueError(f"milestone step {step} appears twice; give each step one value")
            steps.append(step)
            values.append(check_lam(lam, f"lam at milestone {step}"))
        if not steps or steps[0] != 0:
            raise ValueError(f"milestones need a value at step 0, got steps {steps}; add (0, lam)")
        self.steps = steps
        self.values = values
        super().__init__()

    def value_at(self, step: int) -> float:
        """Return the weight scheduled at ``step``."""
        index = bisect.bisect_right(self.steps, step) - 1
        return self.values[max(index, 0)]


class CosineSchedule(_Schedule):
    """Linear warmup from 0, then a cosine curve from ``lam_start`` to ``lam_end``.

    ``λ_t = lam_start·t/warmup`` for ``t < warmup``, then
    ``λ_t = lam_end + (lam_start − lam_end)·(1 + cos(π·(t − warmup)/(steps − warmup)))/2`` up to
    ``t = steps``, and ``lam_end`` after.

    Args:
        lam_start: weight at the end of the warmup.
        lam_end: weight at step ``steps`` and after.
        steps: step index where the curve reaches ``lam_end``.
        warmup: steps of linear warmup from 0, ``0 <= warmup < steps``.
    """

    def __init__(self, lam_start: float, lam_end: float, steps: int, warmup: int = 0) -> None:
        self.lam_start = check_lam(lam_start, "lam_start")
        self.lam_end = check_lam(lam_end, "lam_end")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
            raise ValueError(f"warmup must be an integer with 0 <= warmup < steps ({steps}), got {warmup!r}")
        self.steps = steps
        self.warmup = warmup
        super().__init__()

    def value_at(self, step: int) -> float:
        """Return the weight scheduled at ``step``."""
        if step < self.warmup:
            return self.lam_start * step / self.warmup
        progress = min((step - self.warmup) / (self.steps - self.warmup), 1.0)
        return self.lam_end + (self.lam_start - self.lam_end) * (1.0 + math.cos(math.pi * progress)) / 2.0


class PIController:
    """Proportional-integral control of ``log λ`` that keeps a force measurement on target.

    Two targets are supported:

    * ``("relative_strength", low, high)`` keeps ``r_t = ‖F_H‖/‖F_L‖`` inside ``[low, high]``.
      Because ``r_t`` is proportional to ``λ``, the error is taken in log space:
      ``e = log(low/r)`` below the band, ``e = log(high/r)`` above it, and 0 inside, so
      ``kp + ki = 1`` moves ``r`` onto the nearer edge in one step when the plant is ``r = c·λ``.
    * ``("entropy", floor)`` keeps the surrogate value ``H`` above ``floor``:
      ``e = floor − H`` when ``H < floor`` and 0 otherwise, so ``λ`` only grows while ``H`` is low.

    The output is ``log λ = log λ_ref + kp·e_t + ki·Σe``, where ``λ_ref`` is ``lam_init`` or the
    last value given to :meth:`set_lam`. It is clipped to ``[lam_min, lam_max]`` and then to the
    rate limit ``|λ_{t+1} − λ_t| <= max_rate·λ_t``. Anti-windup uses back-calculation: after a
    clipped update the integral is recomputed so that the unclipped output equals the applied
    ``λ``, so a long saturation leaves no excess integral behind. Without anti-windup the
    integral keeps the whole error sum.

    Updates with no record (unmeasured steps), a NaN measurement, or while paused leave ``λ``
    and the integral unchanged.

    Args:
        target: ``("relative_strength", low, high)`` or ``("entropy", floor)``.
        kp: proportional gain on the log error.
        ki: integral gain on the log error sum.
        lam_init: starting weight, inside ``[lam_min, lam_max]``.
        lam_min: lower bound of ``λ``, ``> 0`` because the controller works on ``log λ``.
        lam_max: upper bound of ``λ``.
        max_rate: maximum relative change of ``λ`` per update, in ``(0, 1)``; None for no limit.
        anti_windup: use back-calculation; False lets the integral wind up during saturation.
    """

    def __init__(
        self,
        target: tuple = (RELATIVE_STRENGTH, 0.05, 0.2),
        *,
        kp: float = 0.2,
        ki: float = 0.3,
        lam_init: float = 0.1,
        lam_min: float = 1e-4,
        lam_max: float = 10.0,
        max_rate: float | None = 0.5,
        anti_windup: bool = True,
    ) -> None:
        for name, gain in (("kp", kp), ("ki", ki)):
            if not (math.isfinite(_as_float(gain, name)) and gain >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {gain!r}")
        lam_min = check_lam(lam_min, "lam_min")
        lam_max = check_lam(lam_max, "lam_max")
        if not 0 < lam_min < lam_max:
            raise ValueError(f"bounds must satisfy 0 < lam_min < lam_max, got lam_min={lam_min!r}, lam_max={lam_max!r}")
        if max_rate is not None and not (math.isfinite(_as_float(max_rate, "max_rate")) and 0 < max_rate < 1):
            raise ValueError(f"max_rate must be in (0, 1) or None for no rate limit, got {max_rate!r}")
        self.kp = float(kp)
        self.ki = float(ki)
        self.lam_min = lam_min
        self.lam_max = lam_max
        self.max_rate = max_rate
        self.anti_windup = anti_windup
        self.mode = RELATIVE_STRENGTH
        self.band: tuple[float, float] | None = None
        self.floor: float | None = None
        self._set_target(target)
        self.lam = self._check_in_bounds(lam_init, "lam_init")
        self._log_reference = math.log(self.lam)
        self.integral = 0.0
        self.error = 0.0
        self.paused = False
        self.saturation: str | None = None

    def update(self, step: int, record: ForceRecord | None) -> float:
        """Compute ``λ`` for the step after ``step`` from ``record`` and return it."""
        if self.paused or record is None:
            return self.lam
        error = self._error(record)
        if error is None:
            logger.debug("step %d: %s is NaN, lam stays %g", step, self.mode, self.lam)
            return self.lam
        self.error = error

        integral = self.integral + error
        log_unclipped = self._log_reference + self.kp * error + self.ki * integral
        lam, saturation = self._clip(math.exp(log_unclipped))
        if saturation is not None and self.anti_windup and self.ki > 0:
            # Back-calculation: choose the integral that would have produced the applied λ.
            integral = (math.log(lam) - self._log_reference - self.kp * error) / self.ki
        self.integral = integral

        if saturation is not None and saturation != self.saturation:
            logger.warning(
                "step %d: lam saturated at the %s (requested %.4g, applied %.4g)",
                step,
                saturation,
                math.exp(log_unclipped),
                lam,
            )
        self.saturation = saturation
        self.lam = lam
        return lam

    def set_lam(self, value: float) -> str:
        """Replace ``λ`` now, bypassing the rate limit, and restart the integral from it.

        Raises:
            ValueError: if ``value`` is negative, NaN, or outside ``[lam_min, lam_max]``.
        """
        new = self._check_in_bounds(value, "lam")
        message = f"lam {self.lam:g} -> {new:g}"
        self.lam = new
        self._log_reference = math.log(new)
        self.integral = 0.0
        self.saturation = None
        logger.info("controller change accepted: %s", message)
        return message

    def set_band(self, low: float, high: float) -> str:
        """Target the relative strength band ``[low, high]`` from the next update on.

        Switching from an entropy floor restarts the integral, because the old sum has other units.

        Raises:
            ValueError: if a bound is not positive and finite or ``low >= high``.
        """
        return self._change_target((RELATIVE_STRENGTH, low, high))

    def set_floor(self, value: float) -> str:
        """Target an entropy floor ``H >= value`` from the next update on.

        Switching from a relative strength band restarts the integral.

        Raises:
            ValueError: if ``value`` is not finite.
        """
        return self._change_target((ENTROPY, value))

    def pause(self) -> str:
        """Hold ``λ`` and the integral fixed until :meth:`resume`."""
        self.paused = True
        logger.info("controller change accepted: paused at lam %g", self.lam)
        return f"paused at lam {self.lam:g}"

    def resume(self) -> str:
        """Resume control from the current ``λ`` at the next measured step."""
        self.paused = False
        logger.info("controller change accepted: resumed at lam %g", self.lam)
        return f"resumed at lam {self.lam:g}"

    def _change_target(self, target: tuple) -> str:
        old_mode = self.mode
        old = self._describe_target()
        self._set_target(target)
        if self.mode != old_mode:
            self._restart_from_current()
        message = f"target {old} -> {self._describe_target()}"
        logger.info("controller change accepted: %s", message)
        return message

    def _set_target(self, target: tuple) -> None:
        if not isinstance(target, (tuple, list)) or not target:
            raise ValueError(f"target must be ('relative_strength', low, high) or ('entropy', floor), got {target!r}")
        kind = target[0]
        if kind == RELATIVE_STRENGTH and len(target) == 3:
            self.band = check_band(target[1], target[2])
            self.floor = None
        elif kind == ENTROPY and len(target) == 2:
            self.floor = check_floor(target[1])
            self.band = None
        else:
            raise ValueError(f"target must be ('relative_strength', low, high) or ('entropy', floor), got {target!r}")
        self.mode = kind

    def _describe_target(self) -> str:
        if self.band is not None:
            return f"band [{self.band[0]:g}, {self.band[1]:g}]"
        return f"floor {self.floor:g}"

    def _restart_from_current(self) -> None:
        self._log_reference = math.log(self.lam)
        self.integral = 0.0

    def _error(self, record: ForceRecord) -> float | None:
        if self.band is not None:
            ratio = record.relative_strength
            if not math.isfinite(ratio) or ratio <= 0:
                return None
            low, high = self.band
            if ratio < low:
                return math.log(low / ratio)
            if ratio > high:
                return math.log(high / ratio)
            return 0.0
        entropy = record.entropy
        if not math.isfinite(entropy):
            return None
        return max(self.floor - entropy, 0.0)

    def _clip(self, requested: float) -> tuple[float, str | None]:
        """Apply the bounds, then the rate limit; return ``λ`` and which limit was hit, if any."""
        lam = requested
        saturation = None
        if lam < self.lam_min:
            lam, saturation = self.lam_min, "lower bound"
        elif lam > self.lam_max:
            lam, saturation = self.lam_max, "upper bound"
        if self.max_rate is not None:
            low = self.lam * (1.0 - self.max_rate)
            high = self.lam * (1.0 + self.max_rate)
            if lam < low:
                lam, saturation = low, "rate limit"
            elif lam > high:
                lam, saturation = high, "rate limit"
        return lam, saturation

    def _check_in_bounds(self, value: object, name: str) -> float:
        number = check_lam(value, name)
        if not self.lam_min <= number <= self.lam_max:
            raise ValueError(
                f"{name} {number:g} is outside the controller bounds [{self.lam_min:g}, {self.lam_max:g}]; "
                "pass a value inside them"
            )
        return number
