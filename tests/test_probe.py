"""Tests of ForceProbe against forces re-derived from separate autograd passes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from hclm.forces import EveryK, ForceProbe, LogSpaced
from hclm.surrogates import logdet_entropy

# The probe and the naive oracle run the same float64 graph and differ only in summation order.
# With at most a few thousand terms they agree to about n·2⁻⁵² ≈ 1e-12, so 1e-10 leaves margin.
FORCE_RTOL = 1e-10
ENTROPY_EPS = 1e-3


class Model(nn.Module):
    """Two-layer MLP encoder and a linear classification head, in float64."""

    def __init__(self, inputs: int = 6, hidden: int = 8, features: int = 4, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        # fork_rng keeps the seed from leaking into the global generator of later tests.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, features)).double()
            self.head = nn.Linear(features, classes).double()

    def objective_terms(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the cross-entropy loss and the logdet entropy of the encoder output."""
        z = self.encoder(x)
        loss = F.cross_entropy(self.head(z), y)
        entropy = logdet_entropy(z, eps=ENTROPY_EPS)
        return loss, entropy


def make_batch(n: int = 16, inputs: int = 6, classes: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inputs, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=generator)
    return x, y


def flat_gradients(output: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Return the gradient of output for each parameter, with zeros where output does not depend on it."""
    grads = torch.autograd.grad(output, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def naive_forces(loss: torch.Tensor, entropy: torch.Tensor, params: list[nn.Parameter]) -> tuple[torch.Tensor, ...]:
    """Return the flattened ∇L and ∇H and their per-parameter pieces, from two separate passes."""
    grad_loss = flat_gradients(loss, params)
    grad_entropy = flat_gradients(entropy, params)
    return (
        torch.cat([g.reshape(-1) for g in grad_loss]),
        torch.cat([g.reshape(-1) for g in grad_entropy]),
        grad_loss,
        grad_entropy,
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def grads_of(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


# Forces against a naive re-derivation ---------------------------------------------------------


def test_record_matches_naive_forces() -> None:
    model = Model()
    x, y = make_batch()
    lam, lr = 0.3, 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    probe = ForceProbe(optimizer=optimizer)
    params = list(model.parameters())

    loss, entropy = model.objective_terms(x, y)
    grad_loss, grad_entropy, _, _ = naive_forces(loss, entropy, params)
    record = probe.backward(loss, entropy, lam, step=0)

    info_force = lam * grad_entropy
    loss_force = -grad_loss
    unit = loss_force / loss_force.norm()
    orthogonal = info_force - (info_force @ unit) * unit
    expected = {
        "strength": float(info_force.norm()),
        "loss_force_norm": float(grad_loss.norm()),
        "relative_strength": float(info_force.norm() / grad_loss.norm()),
        "alignment": cosine(info_force, loss_force),
        "novelty": float(orthogonal.norm() / loss_force.norm()),
        "injection": lr * lam * float(grad_entropy @ grad_entropy),
        "dissipation": -lr * float(grad_entropy @ grad_loss),
    }

    assert record is not None
    for field, value in expected.items():
        assert getattr(record, field) == pytest.approx(value, rel=FORCE_RTOL, abs=0.0), field
    assert record.step == 0
    assert record.lam == lam
    assert record.loss == float(loss.detach())
    assert record.entropy == float(entropy.detach())
    assert math.isnan(record.persistence)
    assert math.isnan(record.delta_h)


def test_record_without_step_size() -> None:
    # With neither optimizer nor lr the step size is unknown, so the flow terms are undefined.
    model = Model()
    x, y = make_batch()
    probe = ForceProbe(model.parameters())

    loss, entropy = model.objective_terms(x, y)
    record = probe.backward(loss, entropy, 0.1)

    assert record is not None
    assert math.isnan(record.injection)
    assert math.isnan(record.dissipation)
    assert record.strength > 0


def test_lr_overrides_optimizer() -> None:
    model = Model()
    x, y = make_batch()
    lam, lr = 0.2, 0.003
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    probe = ForceProbe(optimizer=optimizer, lr=lr)

    loss, entropy = model.objective_terms(x, y)
    grad_loss, grad_entropy, _, _ = naive_forces(loss, entropy, list(model.parameters()))
    record = probe.backward(loss, entropy, lam)

    assert record.injection == pytest.approx(lr * lam * float(grad_entropy @ grad_entropy), rel=FORCE_RTOL, abs=0.0)
    assert record.dissipation == pytest.approx(-lr * float(grad_entropy @ grad_loss), rel=FORCE_RTOL, abs=0.0)


def test_per_group_learning_rates() -> None:
    model = Model()
    x, y = make_batch()
    lam = 0.25
    first_layer = list(model.encoder[0].parameters())
    rest = list(model.encoder[2].parameters()) + list(model.head.parameters())
    optimizer = torch.optim.SGD([{"params": first_layer, "lr": 0.1}, {"params": rest, "lr": 0.02}])
    probe = ForceProbe(optimizer=optimizer)
    params = first_layer + rest
    rates = [0.1] * len(first_layer) + [0.02] * len(rest)

    loss, entropy = model.objective_terms(x, y)
    _, _, loss_pieces, entropy_pieces = naive_forces(loss, entropy, params)
    record = probe.backward(loss, entropy, lam)

    injection = sum(rate * lam * float((gh * gh).sum()) for rate, gh in zip(rates, entropy_pieces))
    dissipation = -sum(rate * float((gh * gl).sum()) for rate, gh, gl in zip(rates, entropy_pieces, loss_pieces))
    assert record.injection == pytest.approx(injection, rel=FORCE_RTOL, abs=0.0)
    assert record.dissipation == pytest.approx(dissipation, rel=FORCE_RTOL, abs=0.0)


def test_persistence_matches_naive_cosine() -> None:
    model = Model()
    x, y = make_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    probe = ForceProbe(optimizer=optimizer)
    params = list(model.parameters())
    lams = (0.1, 0.2, 0.4)

    info_forces = []
    records = []
    for step, lam in enumerate(lams):
        optimizer.zero_grad()
        loss, entropy = model.objective_terms(x, y)
        _, grad_entropy, _, _ = naive_forces(loss, entropy, params)
        info_forces.append(lam * grad_entropy)
        records.append(probe.backward(loss, entropy, lam, step=step))
        optimizer.step()

    assert math.isnan(records[0].persistence)
    for index in (1, 2):
        expected = cosine(info_forces[index], info_forces[index - 1])
        assert records[index].persistence == pytest.approx(expected, rel=FORCE_RTOL, abs=0.0), index


# Gradients left in .grad ----------------------------------------------------------------------


def test_grad_matches_plain_backward() -> None:
    probed = Model()
    plain = copy.deepcopy(probed)
    x, y = make_batch()
    lam = 0.3
    probe_optimizer = torch.optim.SGD(probed.parameters(), lr=0.1)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    probe = ForceProbe(optimizer=probe_optimizer, schedule=2)

    for step in range(4):
        probe_optimizer.zero_grad(set_to_none=True)
        plain_optimizer.zero_grad(set_to_none=True)

        loss, entropy = probed.objective_terms(x, y)
        record = probe.backward(loss, entropy, lam, step=step)
        plain_loss, plain_entropy = plain.objective_terms(x, y)
        (plain_loss - lam * plain_entropy).backward()

        assert (record is not None) == (step % 2 == 0), step
        for index, (expected, actual) in enumerate(zip(grads_of(plain), grads_of(probed))):
            message = f"step {step}, parameter {index}"
            torch.testing.assert_close(actual, expected, rtol=FORCE_RTOL, atol=0.0, msg=message)

        probe_optimizer.step()
        plain_optimizer.step()


@pytest.mark.parametrize("step", [0, 1])
def test_grad_accumulates_like_backward(step: int) -> None:
    # Step 0 is measured and step 1 is not, with schedule=2.
    probed = Model()
    plain = copy.deepcopy(probed)
    x, y = make_batch()
    generator = torch.Generator().manual_seed(3)
    for p, q in zip(probed.parameters(), plain.parameters()):
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        q.grad = p.grad.clone()
    probe = ForceProbe(probed.parameters(), schedule=2)

    loss, entropy = probed.objective_terms(x, y)
    probe.backward(loss, entropy, 0.3, step=step)
    plain_loss, plain_entropy = plain.objective_terms(x, y)
    (plain_loss - 0.3 * plain_entropy).backward()

    for index, (expected, actual) in enumerate(zip(grads_of(plain), grads_of(probed))):
        torch.testing.assert_close(actual, expected, rtol=FORCE_RTOL, atol=0.0, msg=f"parameter {index}")


def test_grad_of_unmeasured_parameters() -> None:
    probed = Model()
    plain = copy.deepcopy(probed)
    x, y = make_batch()
    probe = ForceProbe(probed.encoder.parameters())

    loss, entropy = probed.objective_terms(x, y)
    record = probe.backward(loss, entropy, 0.3, step=0)
    plain_loss, plain_entropy = plain.objective_terms(x, y)
    (plain_loss - 0.3 * plain_entropy).backward()

    assert record is not None
    assert probed.head.weight.grad is not None
    torch.testing.assert_close(probed.head.weight.grad, plain.head.weight.grad, rtol=FORCE_RTOL, atol=0.0)


def test_retain_graph_allows_second_backward() -> None:
    model = Model()
    x, y = make_batch()
    probe = ForceProbe(model.parameters())

    loss, entropy = model.objective_terms(x, y)
    probe.backward(loss, entropy, 0.1, step=0, retain_graph=True)
    loss.backward()

    assert model.head.weight.grad is not None


# Schedules ------------------------------------------------------------------------------------


def test_schedule_every_third_step() -> None:
    model = Model()
    x, y = make_batch()
    probe = ForceProbe(model.parameters(), schedule=3)

    returned = []
    for _ in range(8):
        loss, entropy = model.objective_terms(x, y)
        returned.append(probe.backward(loss, entropy, 0.1) is not None)

    assert returned == [step % 3 == 0 for step in range(8)]
    assert [record.step for record in probe.all_records()] == [0, 3, 6]


def test_every_k_rejects_zero() -> None:
    with pytest.raises(ValueError, match="k"):
        EveryK(0)


def test_probe_rejects_zero_schedule() -> None:
    model = Model()

    with pytest.raises(ValueError):
        ForceProbe(model.parameters(), schedule=0)


def test_every_k_with_start() -> None:
    schedule = EveryK(k=4, start=2)

    assert [step for step in range(15) if schedule(step)] == [2, 6, 10, 14]


@pytest.mark.parametrize("per_decade", [1, 3, 10])
def test_log_spaced_steps(per_decade: int) -> None:
    schedule = LogSpaced(per_decade)
    # Steps 0 and 1 are always measured. A later step t is measured when some grid point
    # 10^(m/per_decade) lies in (t − 1, t], which means t = ceil(10^(m/per_decade)).
    expected = {0, 1} | {math.ceil(10 ** (m / per_decade)) for m in range(1, 3 * per_decade + 1)}

    assert {step for step in range(1001) if schedule(step)} == expected


def test_log_spaced_rejects_zero() -> None:
    with pytest.raises(ValueError, match="per_decade"):
        LogSpaced(0)


def test_probe_with_log_spaced_schedule() -> None:
    model = Model()
    x, y = make_batch()
    probe = ForceProbe(model.parameters(), schedule=LogSpaced(1))

    for step in range(12):
        loss, entropy = model.objective_terms(x, y)
        probe.backward(loss, entropy, 0.1, step=step)

    assert [record.step for record in probe.all_records()] == [0, 1, 10]


# Entropy-flow bookkeeping ---------------------------------------------------------------------


def digits_batch(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    # Pixels range over 0..16, so scaling by 1/16 and centering keeps tanh out of saturation.
    x = torch.tensor(digits.data[:n], dtype=torch.float64) / 16.0
    x = x - x.mean(dim=0)
    y = torch.tensor(digits.target[:n], dtype=torch.int64)
    return x, y


def test_residual_shrinks_quadratically() -> None:
    x, y = digits_batch()
    initial = Model(inputs=64, hidden=32, features=8, classes=10, seed=4)
    lam = 0.1
    rates = (1e-2, 5e-3, 2.5e-3, 1.25e-3)

    residuals = []
    first_order = []
    for lr in rates:
        model = copy.deepcopy(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        probe = ForceProbe(optimizer=optimizer)

        loss, entropy = model.objective_terms(x, y)
        probe.backward(loss, entropy, lam)
        optimizer.step()
        with torch.no_grad():
            entropy_after = logdet_entropy(model.encoder(x), eps=ENTROPY_EPS)
        record = probe.record_realized(entropy_after)

        delta_h = float(entropy_after) - float(entropy.detach())
        assert record.delta_h == pytest.approx(delta_h, rel=1e-12, abs=0.0)
        residuals.append(abs(record.residual))
        first_order.append(abs(record.injection + record.dissipation))

    slope = np.polyfit(np.log(rates), np.log(residuals), 1)[0]
    assert 1.8 <= slope <= 2.2, f"log-log slope of |residual| against lr is {slope:.3f}, expected 2"
    for lr, residual, linear in zip(rates, residuals, first_order):
        # I + D is O(η) and the residual O(η²), so the first-order prediction must dominate.
        assert residual < 0.1 * linear, f"lr {lr}: |residual| {residual:.3g} vs |I + D| {linear:.3g}"


def test_record_realized_sets_residual() -> None:
    model = Model()
    x, y = make_batch()
    probe = ForceProbe(model.parameters(), lr=0.01)

    loss, entropy = model.objective_terms(x, y)
    record = probe.backward(loss, entropy, 0.1)
    realized = probe.record_realized(float(entropy.detach()) + 0.125)

    assert realized is record
    assert record.delta_h == pytest.approx(0.125, rel=1e-12, abs=0.0)
    assert record.residual == pytest.approx(0.125 - record.injection - record.dissipation, rel=1e-12, abs=0.0)
    assert probe.records == [record]
    assert not probe.awaiting_realized


def test_record_realized_without_measurement() -> None:
    model = Model()
    probe = ForceProbe(model.parameters())

    with pytest.raises(RuntimeError, match="backward"):
        probe.record_realized(0.0)


def test_record_realized_twice_raises() -> None:
    model = Model()
    x, y = make_batch()
    probe = ForceProbe(model.parameters())
    loss, entropy = model.objective_terms(x, y)
    probe.backward(loss, entropy, 0.1)
    probe.record_realized(float(entropy.detach()))

    with pytest.raises(RuntimeError):
        probe.record_realized(float(entropy.detach()))


# Records and summary --------------------------------------------------------------------------


def run_measured_steps(probe: ForceProbe, model: Model, steps: int) -> list:
    x, y = make_batch()
    records = []
    for step in range(steps):
        loss, entropy = model.objective_terms(x, y)
        records.append(probe.backward(loss, entropy, 0.1 * (step + 1), step=step))
    return records


def test_keep_records_false_keeps_last() -> None:
    model = Model()
    probe = ForceProbe(model.parameters(), keep_records=False)

    records = run_measured_steps(probe, model, 4)

    assert probe.all_records() == records[-2:]


def test_last_is_newest_record() -> None:
    model = Model()
    probe = ForceProbe(model.parameters())

    records = run_measured_steps(probe, model, 3)

    assert probe.last is records[-1]


def test_summary_window() -> None:
    model = Model()
    probe = ForceProbe(model.parameters())
    records = run_measured_steps(probe, model, 5)

    summary = probe.summary(window=2)

    assert summary.measurements == 2
    assert summary.strength_median == pytest.approx(0.5 * (records[3].strength + records[4].strength), rel=1e-12)
    assert probe.summary().measurements == 5


def test_summary_rejects_zero_window() -> None:
    model = Model()
    probe = ForceProbe(model.parameters())
    run_measured_steps(probe, model, 2)

    with pytest.raises(ValueError, match="window"):
        probe.summary(window=0)


# Invalid arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [-0.1, math.nan, math.inf])
def test_invalid_lam_raises(lam: float) -> None:
    model = Model()
    x, y = make_batch()
    probe = ForceProbe(model.parameters())
    loss, entropy = model.objective_terms(x, y)

    with pytest.raises(ValueError, match="lam"):
        probe.backward(loss, entropy, lam)


def test_probe_without_parameters_raises() -> None:
    with pytest.raises(ValueError, match="params"):
        ForceProbe()


def test_probe_with_frozen_parameters_raises() -> None:
    frozen = nn.Linear(3, 2)
    frozen.requires_grad_(False)

    with pytest.raises(ValueError, match="no parameters"):
        ForceProbe(frozen.parameters())


@pytest.mark.parametrize("lr", [-0.1, math.nan])
def test_invalid_lr_raises(lr: float) -> None:
    model = Model()

    with pytest.raises(ValueError, match="lr"):
        ForceProbe(model.parameters(), lr=lr)
