"""Time the default sweep of ``hclm run`` with one and two workers, on the local pool and on Ray.

Each case is a fresh ``hclm run`` process writing to an empty folder, timed from start to exit,
so it includes the imports, the start of the worker processes or the Ray instance, training,
and the report. The speed-up of every case is taken against one local worker, measured in the
same invocation. Every case must write the same ``results`` in summary.json. Target: at least
1.7× with two workers on two cores.

Run: ``python benchmarks/bench_sweep.py [--quick] [--cases local:1,local:2,ray:1,ray:2] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hclm._io import atomic_write_json

TARGET_SPEEDUP = 1.7
DEFAULT_CASES = "local:1,local:2,ray:1,ray:2"


def parse_cases(text: str) -> list[tuple[str, int]]:
    """Parse ``backend:workers`` pairs separated by commas; the first case is the baseline."""
    cases = []
    for item in text.split(","):
        backend, _, workers = item.partition(":")
        if backend not in ("local", "ray") or not workers.isdigit() or int(workers) < 1:
            raise SystemExit(f"invalid case {item!r}; write backend:workers, e.g. local:2 or ray:1")
        cases.append((backend, int(workers)))
    return cases


def time_case(backend: str, workers: int, quick: bool, folder: Path) -> tuple[float, list[dict]]:
    """Run ``hclm run`` once for the case and return its wall time and the summary's results."""
    out = folder / f"{backend}-{workers}"
    command = [sys.executable, "-m", "hclm", "run", "--out", str(out), "--backend", backend, "--workers", str(workers)]
    if quick:
        command.append("--quick")
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    elapsed = time.perf_counter() - start
    return elapsed, json.loads((out / "summary.json").read_text())["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time the --quick sweep instead of the default one")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"backend:workers pairs (default {DEFAULT_CASES})")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    args = parser.parse_args()
    cases = parse_cases(args.cases)

    rows = []
    with tempfile.TemporaryDirectory(prefix="hclm-bench-sweep-") as temporary:
        reference = None
        for backend, workers in cases:
            seconds, results = time_case(backend, workers, args.quick, Path(temporary))
            if reference is None:
                reference = results
            rows.append(
                {"backend": backend, "workers": workers, "seconds": seconds, "same_results": results == reference}
            )
            print(f"{backend}:{workers} took {seconds:.1f} s", file=sys.stderr)

    baseline = rows[0]["seconds"]
    print(f"sweep: {'--quick' if args.quick else 'default'}, machine: {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'backend':<8}{'workers':>8}{'wall s':>9}{'speed-up':>10}  same results")
    for row in rows:
        row["speedup"] = baseline / row["seconds"]
        print(
            f"{row['backend']:<8}{row['workers']:>8}{row['seconds']:>9.1f}{row['speedup']:>9.2f}x  {row['same_results']}"
        )
    best = max((row["speedup"] for row in rows if row["workers"] == 2), default=None)
    if best is not None:
        verdict = "met" if best >= TARGET_SPEEDUP else "missed"
        print(f"target {TARGET_SPEEDUP}x with 2 workers: {verdict} (best {best:.2f}x)")
    if args.json is not None:
        atomic_write_json(args.json, {"quick": args.quick, "cases": rows, "target_speedup": TARGET_SPEEDUP})


if __name__ == "__main__":
    main()
