"""Time the Langevin particle loop and the finite-volume Fokker–Planck solver.

Langevin: 1e5 particles × 1e3 Euler–Maruyama steps in 2-D for ``V = ½xᵀAx`` with the fused
analytic drift, in float32 and float64; the free energy (k-NN entropy on 4096 particles) is
recorded every 100 steps. Target: at most 5 s for the float32 run. Fokker–Planck: 1e3 cells ×
1e3 backward Euler steps on a double well, one snapshot every 10 steps. Each case runs
``--repeats`` times and the table reports the median wall time.

Run: ``python benchmarks/bench_dynamics.py [--repeats N] [--threads T] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from hclm._io import atomic_write_json
from hclm.dynamics.fokker_planck import solve_fokker_planck
from hclm.dynamics.langevin import QuadraticPotential, gaussian_particles, run_langevin

PARTICLES = 100_000
LANGEVIN_STEPS = 1_000
CELLS = 1_000
FV_STEPS = 1_000
LANGEVIN_TARGET_SECONDS = 5.0
MATRIX = np.array([[1.0, 0.3], [0.3, 2.0]])


def time_langevin(dtype: torch.dtype, repeats: int) -> list[float]:
    """Return the wall times in seconds of ``repeats`` Langevin runs (the initial draw is not timed)."""
    potential = QuadraticPotential(MATRIX, [0.5, -1.0])
    initial = gaussian_particles(PARTICLES, [2.0, 1.0], 0.25 * np.eye(2), seed=0, dtype=dtype)
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        run_langevin(potential, initial, dt=0.01, steps=LANGEVIN_STEPS, beta=2.0, record_every=100, seed=repeat + 1)
        times.append(time.perf_counter() - start)
    return times


def time_fokker_planck(repeats: int) -> list[float]:
    """Return the wall times in seconds of ``repeats`` finite-volume runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        solve_fokker_planck(
            lambda x: (x**2 - 1.0) ** 2,
            (-3.0, 3.0),
            CELLS,
            lambda x: np.exp(-0.5 * ((x - 0.5) / 0.3) ** 2),
            beta=3.0,
            dt=1e-3,
            steps=FV_STEPS,
            record_every=10,
        )
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", type=str, default=None, help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, {args.threads} threads, 1-minute load average {load:.2f} at start"
    )
    rows = []
    for dtype, name in ((torch.float32, "float32"), (torch.float64, "float64")):
        times = time_langevin(dtype, args.repeats)
        target = LANGEVIN_TARGET_SECONDS if dtype == torch.float32 else None
        rows.append(_row(f"langevin {name}", f"{PARTICLES} particles x {LANGEVIN_STEPS} steps, d=2", times, target))
    rows.append(_row("fokker-planck", f"{CELLS} cells x {FV_STEPS} steps", time_fokker_planck(args.repeats), None))

    header = f"{'case':<18} {'size':<34} {'median s':>9} {'min s':>8} {'max s':>8}  target"
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["target_seconds"] is None:
            verdict = "-"
        else:
            verdict = f"<= {row['target_seconds']:g} s {'met' if row['target_met'] else 'MISSED'}"
        print(
            f"{row['case']:<18} {row['size']:<34} {row['median_seconds']:>9.3f} "
            f"{row['min_seconds']:>8.3f} {row['max_seconds']:>8.3f}  {verdict}"
        )
    if args.json:
        atomic_write_json(args.json, {"threads": args.threads, "load_average": load, "rows": rows})
    return 0


def _row(case: str, size: str, times: list[float], target: float | None) -> dict:
    median = statistics.median(times)
    return {
        "case": case,
        "size": size,
        "median_seconds": median,
        "min_seconds": min(times),
        "max_seconds": max(times),
        "target_seconds": target,
        "target_met": None if target is None else median <= target,
    }


if __name__ == "__main__":
    sys.exit(main())
