"""Time forward + backward of ``logdet_entropy`` against the naive ``torch.logdet(torch.cov(z.T) + εI)``.

For each shape (n, d) the two float32 implementations run interleaved in rounds, and the ratio
is the median over rounds of naive time / hclm time (above 1 means hclm is faster). Both are
compared with a float64 reference of ``log det(Σ + εI)`` computed with the naive formula in
float64. The naive value is doubled back from ``½ log det`` so both report the same quantity.

Run: ``python benchmarks/bench_logdet.py [--rounds N] [--threads T] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from hclm.surrogates import logdet_entropy

SHAPES = ((256, 64), (4096, 256), (256, 1024), (1024, 2048))
EPS = 1e-4
OFFSET = 100.0
# Speed-up targets (naive time / hclm time) by shape; every shape must be at least 1.
TARGET_SPEEDUP = {(256, 1024): 10.0, (1024, 2048): 2.5}
# Accuracy target: on shapes where naive float32 is off by more than NAIVE_OFF, hclm float32 must be within ERROR_TARGET.
NAIVE_OFF = 1e-2
ERROR_TARGET = 1e-3


def naive_logdet(z: torch.Tensor) -> torch.Tensor:
    """Return ``½ log det(cov(z) + εI)`` the direct way."""
    eye = torch.eye(z.shape[1], dtype=z.dtype)
    return 0.5 * torch.logdet(torch.cov(z.T) + EPS * eye)


def hclm_logdet(z: torch.Tensor) -> torch.Tensor:
    """Return ``logdet_entropy`` with the default float64 factorization."""
    return logdet_entropy(z, eps=EPS)


def make_data(n: int, d: int, seed: int) -> torch.Tensor:
    """Draw float32 rows with standard deviations from 1 down to 1e-3 along random directions, offset by 100.

    The offset and the small directions are where float32 arithmetic loses digits.
    """
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -3, d, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    z = torch.randn(n, d, generator=generator, dtype=torch.float64) * scales @ basis.T
    return (z + OFFSET).float()


def time_forward_backward(fn, z: torch.Tensor) -> float:
    """Return the seconds one forward + backward pass of ``fn`` takes on a fresh leaf copy of ``z``."""
    leaf = z.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    value = fn(leaf)
    value.backward()
    return time.perf_counter() - start


def measure(n: int, d: int, rounds: int) -> dict:
    """Time both implementations on one shape and compare their values with the float64 reference."""
    z = make_data(n, d, seed=n + d)
    reference = float(naive_logdet(z.double()))
    naive_value = float(naive_logdet(z))
    hclm_value = float(hclm_logdet(z))

    repeats = max(1, int(2e8 // (n * d * max(n, d))))  # more repeats for small shapes
    for fn in (naive_logdet, hclm_logdet):
        time_forward_backward(fn, z)
    ratios, naive_times, hclm_times = [], [], []
    for round_index in range(rounds):
        pair = (naive_logdet, hclm_logdet) if round_index % 2 == 0 else (hclm_logdet, naive_logdet)
        elapsed = {}
        for fn in pair:
            elapsed[fn] = sum(time_forward_backward(fn, z) for _ in range(repeats)) / repeats
        naive_times.append(elapsed[naive_logdet])
        hclm_times.append(elapsed[hclm_logdet])
        ratios.append(elapsed[naive_logdet] / elapsed[hclm_logdet])

    speedup = statistics.median(ratios)
    naive_error = abs(naive_value - reference)
    hclm_error = abs(hclm_value - reference)
    row = {
        "n": n,
        "d": d,
        "naive_ms": 1e3 * statistics.median(naive_times),
        "hclm_ms": 1e3 * statistics.median(hclm_times),
        "speedup": speedup,
        "naive_abs_error": naive_error,
        "hclm_abs_error": hclm_error,
        "speed_target": TARGET_SPEEDUP.get((n, d), 1.0),
    }
    row["speed_met"] = speedup >= row["speed_target"]
    row["error_met"] = None if naive_error <= NAIVE_OFF else hclm_error <= ERROR_TARGET
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per shape (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", type=str, default=None, help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, {args.threads} threads; float32 input, eps {EPS}"
    )
    header = f"{'n':>5} {'d':>5} {'naive ms':>9} {'hclm ms':>9} {'speed-up':>9} {'naive err':>10} {'hclm err':>10}  targets"
    print(header)
    print("-" * len(header))
    rows = []
    for n, d in SHAPES:
        row = measure(n, d, args.rounds)
        rows.append(row)
        speed = f">= {row['speed_target']:g}x {'met' if row['speed_met'] else 'MISSED'}"
        if row["error_met"] is None:
            error = "error: naive within 1e-2"
        else:
            error = f"error <= 1e-3 {'met' if row['error_met'] else 'MISSED'}"
        print(
            f"{n:>5} {d:>5} {row['naive_ms']:>9.2f} {row['hclm_ms']:>9.2f} {row['speedup']:>8.2f}x "
            f"{row['naive_abs_error']:>10.2e} {row['hclm_abs_error']:>10.2e}  {speed}; {error}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(rows, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
