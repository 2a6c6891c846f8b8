"""Time one training step with and without the force probe.

The model is an MLP encoder 64-512-512-64 (ReLU) with a linear head 64→10, trained with Adam on
scikit-learn's handwritten digits (batches of 256 rows) against ``L − λ·H``, where ``H`` is the
log-determinant surrogate and ``λ = 0.1``. Five variants of the step are timed:

* ``plain``: one ``(loss − λ·h).backward()`` and ``optimizer.step()``, the cost without a probe.
* ``naive_split``: two ``torch.autograd.grad`` calls (loss, then entropy), ``.grad = gL − λ·gH``
  and the force norms and inner product. This is the simplest exact way to get both forces
  separately, and each force needs its own reverse pass, so it is the baseline that already pays
  for the second pass. The gap from ``naive_split`` to ``probe_every_1`` is the probe's own cost:
  its float64 bookkeeping and the realized-ΔH forward pass.
* ``probe_every_1``: ``ForceProbe(schedule=1)`` plus the realized-ΔH forward pass on every step.
* ``probe_no_realized``: ``ForceProbe(schedule=1)`` without the realized-ΔH forward pass, which
  is optional (``probe.realized: false`` in the experiment config).
* ``probe_every_16``: the same as ``probe_every_1`` with ``schedule=16``, so one step in 16 is measured.

Each variant trains its own copy of the same initial model on the same seeded batches. A round
runs ``--steps-per-round`` steps of every variant interleaved step by step (ABCDE ABCDE …), and
the order rotates each round (ABCDE, BCDEA, …), so a burst of load from other processes
hits all variants alike. Batches are drawn outside the timed steps, and the Python garbage collector
is off during a round. The reported time per step is the median over rounds. The ratio is the
median over rounds of the variant's time divided by ``plain``'s time in the same round.

NOTE: with ``--threads`` equal to the CPU count, another busy process slowed single rounds by
10–100× (2-CPU VM, torch 2.13 CPU build). The median hides such rounds only while they are a
minority, so check the p25–p75 column and the printed load average before trusting a ratio.

Run: ``python benchmarks/bench_probe.py [--rounds N] [--steps-per-round K] [--warmup-rounds W]
[--threads T] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from hclm.forces import ForceProbe
from hclm.surrogates import logdet_entropy

LAM = 0.1
LEARNING_RATE = 1e-3
BATCH_SIZE = 256
PROBE_INTERVAL = 16
SEED = 0

# Overhead targets: the maximum time per step relative to ``plain``.
TARGET_RATIOS = {"probe_every_1": 1.3, "probe_every_16": 1.02}

Batch = tuple[torch.Tensor, torch.Tensor]


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Load the digits, scale pixels from 0..16 to [0, 1], then standardize each column."""
    digits = load_digits()
    scaled = digits.data / 16.0
    # StandardScaler leaves constant columns (always-blank pixels) at 0 instead of dividing by 0.
    standardized = StandardScaler().fit_transform(scaled)
    features = torch.tensor(standardized, dtype=torch.float32)
    labels = torch.tensor(digits.target, dtype=torch.long)
    return features, labels


def build_model() -> tuple[torch.nn.Module, torch.nn.Module]:
    """Build the encoder and the head with fixed-seed initial weights."""
    torch.manual_seed(SEED)
    encoder = torch.nn.Sequential(
        torch.nn.Linear(64, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 64),
    )
    head = torch.nn.Linear(64, 10)
    return encoder, head


@dataclass
class Variant:
    """One timed variant: its own model copy, optimizer, batch generator and step function."""

    name: str
    encoder: torch.nn.Module
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    run_step: Callable[["Variant", Batch, int], None]
    probe: ForceProbe | None = None
    step: int = 0
    round_seconds: list[float] = field(default_factory=list)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [*self.encoder.parameters(), *self.head.parameters()]


def plain_step(variant: Variant, batch: Batch, step: int) -> None:
    x, y = batch
    variant.optimizer.zero_grad()
    z = variant.encoder(x)
    loss = F.cross_entropy(variant.head(z), y)
    entropy = logdet_entropy(z)
    (loss - LAM * entropy).backward()
    variant.optimizer.step()


def naive_split_step(variant: Variant, batch: Batch, step: int) -> None:
    x, y = batch
    params = variant.params
    variant.optimizer.zero_grad()
    z = variant.encoder(x)
    loss = F.cross_entropy(variant.head(z), y)
    entropy = logdet_entropy(z)

    loss_grads = torch.autograd.grad(loss, params, retain_graph=True)
    # The head does not feed the entropy, so its entropy gradients are None (zero).
    entropy_grads = torch.autograd.grad(entropy, params, allow_unused=True)

    loss_force_sq = torch.zeros((), dtype=torch.float64)
    info_force_sq = torch.zeros((), dtype=torch.float64)
    inner = torch.zeros((), dtype=torch.float64)
    for param, loss_grad, entropy_grad in zip(params, loss_grads, entropy_grads):
        # F_L = −gL and F_H = λ·gH.
        loss_force_sq += loss_grad.double().square().sum()
        if entropy_grad is None:
            param.grad = loss_grad
            continue
        param.grad = loss_grad - LAM * entropy_grad
        info_force_sq += (LAM * entropy_grad.double()).square().sum()
        inner -= LAM * (entropy_grad.double() * loss_grad.double()).sum()
    # Convert to Python floats, as the probe does for its record.
    _ = (float(loss_force_sq.sqrt()), float(info_force_sq.sqrt()), float(inner))
    variant.optimizer.step()


def probe_step(variant: Variant, batch: Batch, step: int) -> None:
    x, y = batch
    probe = variant.probe
    assert probe is not None
    variant.optimizer.zero_grad()
    z = variant.encoder(x)
    loss = F.cross_entropy(variant.head(z), y)
    entropy = logdet_entropy(z)
    record = probe.backward(loss, entropy, LAM, step)
    variant.optimizer.step()
    if record is not None:
        with torch.no_grad():
            probe.record_realized(logdet_entropy(variant.encoder(x)))


def probe_forces_step(variant: Variant, batch: Batch, step: int) -> None:
    x, y = batch
    probe = variant.probe
    assert probe is not None
    variant.optimizer.zero_grad()
    z = variant.encoder(x)
    loss = F.cross_entropy(variant.head(z), y)
    probe.backward(loss, logdet_entropy(z), LAM, step)
    variant.optimizer.step()


def make_variants() -> list[Variant]:
    encoder, head = build_model()
    variants = []
    specs = [
        ("plain", plain_step, None),
        ("naive_split", naive_split_step, None),
        ("probe_every_1", probe_step, 1),
        ("probe_no_realized", probe_forces_step, 1),
        ("probe_every_16", probe_step, PROBE_INTERVAL),
    ]
    for name, run_step, schedule in specs:
        variant_encoder = copy.deepcopy(encoder)
        variant_head = copy.deepcopy(head)
        params = [*variant_encoder.parameters(), *variant_head.parameters()]
        optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
        probe = None if schedule is None else ForceProbe(optimizer=optimizer, schedule=schedule)
        generator = torch.Generator().manual_seed(SEED)
        variants.append(Variant(name, variant_encoder, variant_head, optimizer, generator, run_step, probe))
    return variants


def draw_batches(variant: Variant, features: torch.Tensor, labels: torch.Tensor, count: int) -> list[Batch]:
    batches = []
    for _ in range(count):
        rows = torch.randint(len(features), (BATCH_SIZE,), generator=variant.generator)
        batches.append((features[rows], labels[rows]))
    return batches


def run_round(variants: list[Variant], batches: dict[str, list[Batch]]) -> dict[str, float]:
    """Run one round, one step of each variant in turn, and return each variant's wall time in seconds."""
    elapsed = {variant.name: 0.0 for variant in variants}
    steps = len(batches[variants[0].name])
    gc.collect()
    gc.disable()
    try:
        for index in range(steps):
            for variant in variants:
                start = time.perf_counter()
                variant.run_step(variant, batches[variant.name][index], variant.step)
                elapsed[variant.name] += time.perf_counter() - start
                variant.step += 1
    finally:
        gc.enable()
    return elapsed


def run_benchmark(
    features: torch.Tensor, labels: torch.Tensor, rounds: int, steps_per_round: int, warmup_rounds: int
) -> list[Variant]:
    variants = make_variants()
    measured_before: dict[str, int] = {}
    for round_index in range(warmup_rounds + rounds):
        if round_index == warmup_rounds:
            measured_before = {v.name: len(v.probe.all_records()) for v in variants if v.probe is not None}
        # Batches are drawn before the round, outside the timed steps.
        batches = {v.name: draw_batches(v, features, labels, steps_per_round) for v in variants}
        offset = round_index % len(variants)
        elapsed = run_round(variants[offset:] + variants[:offset], batches)
        if round_index >= warmup_rounds:
            for variant in variants:
                variant.round_seconds.append(elapsed[variant.name])

    # Every round contains whole multiples of PROBE_INTERVAL steps, so each probe variant must have
    # measured exactly steps / interval of the timed steps.
    for variant in variants:
        if variant.probe is None:
            continue
        measured = len(variant.probe.all_records()) - measured_before[variant.name]
        interval = variant.probe.schedule.k
        expected = rounds * steps_per_round // interval
        if measured != expected:
            raise RuntimeError(
                f"{variant.name} measured {measured} of the timed steps, expected {expected}, "
                "so the timed rounds do not cover whole probe intervals"
            )
    return variants


def summarize(variants: list[Variant], steps_per_round: int) -> list[dict]:
    plain = next(v for v in variants if v.name == "plain")
    rows = []
    for variant in variants:
        per_step_ms = [1000.0 * seconds / steps_per_round for seconds in variant.round_seconds]
        ratios = [mine / base for mine, base in zip(variant.round_seconds, plain.round_seconds)]
        quartiles = np.percentile(per_step_ms, [25, 75])
        row = {
            "variant": variant.name,
            "median_ms_per_step": statistics.median(per_step_ms),
            "p25_ms_per_step": float(quartiles[0]),
            "p75_ms_per_step": float(quartiles[1]),
            "ratio_to_plain": statistics.median(ratios),
            "per_round_ms_per_step": per_step_ms,
        }
        target = TARGET_RATIOS.get(variant.name)
        if target is not None:
            row["target_ratio"] = target
            row["target_met"] = row["ratio_to_plain"] <= target
        rows.append(row)
    return rows


def describe_machine(threads: int) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        # 1-, 5- and 15-minute load averages when the timing ended. They include this benchmark's
        # own threads, so values well above the thread count mean other processes used the CPUs.
        "load_average": list(os.getloadavg()),
    }


def print_report(machine: dict, args: argparse.Namespace, rows: list[dict]) -> None:
    print(
        f"machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs, "
        f"python {machine['python']}, torch {machine['torch']}, {machine['threads']} threads"
    )
    load = ", ".join(f"{value:.2f}" for value in machine["load_average"])
    print(f"load average (1, 5, 15 min) after timing: {load}")
    print(
        f"rounds: {args.rounds} x {args.steps_per_round} steps per variant "
        f"(+{args.warmup_rounds} warm-up rounds), batch {BATCH_SIZE}, lambda {LAM}"
    )
    header = f"{'variant':<16} {'median ms/step':>14} {'p25-p75 ms':>15} {'ratio':>7}  target"
    print(header)
    print("-" * len(header))
    for row in rows:
        spread = f"{row['p25_ms_per_step']:.2f}-{row['p75_ms_per_step']:.2f}"
        line = f"{row['variant']:<16} {row['median_ms_per_step']:>14.2f} {spread:>15} {row['ratio_to_plain']:>6.3f}x"
        if "target_ratio" in row:
            verdict = "met" if row["target_met"] else "MISSED"
            line += f"  <= {row['target_ratio']:.2f}x: {verdict}"
        print(line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="number of timed rounds (default 100)")
    parser.add_argument(
        "--steps-per-round",
        type=int,
        default=16,
        help=f"training steps per variant in each round, a multiple of {PROBE_INTERVAL} (default 16)",
    )
    parser.add_argument("--warmup-rounds", type=int, default=2, help="untimed rounds run before the timed ones (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the machine, settings and results to PATH as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.steps_per_round < PROBE_INTERVAL or args.steps_per_round % PROBE_INTERVAL:
        parser.error(
            f"--steps-per-round must be a positive multiple of {PROBE_INTERVAL} so every timed block holds "
            f"whole probe intervals, got {args.steps_per_round}"
        )
    if args.warmup_rounds < 0:
        parser.error(f"--warmup-rounds must be >= 0, got {args.warmup_rounds}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    features, labels = load_data()

    variants = run_benchmark(features, labels, args.rounds, args.steps_per_round, args.warmup_rounds)
    rows = summarize(variants, args.steps_per_round)
    machine = describe_machine(torch.get_num_threads())
    print_report(machine, args, rows)

    if args.json:
        result = {
            "machine": machine,
            "settings": {
                "rounds": args.rounds,
                "steps_per_round": args.steps_per_round,
                "warmup_rounds": args.warmup_rounds,
                "batch_size": BATCH_SIZE,
                "lam": LAM,
                "learning_rate": LEARNING_RATE,
            },
            "results": rows,
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
