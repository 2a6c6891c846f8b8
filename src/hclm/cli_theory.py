"""Commands ``generalization`` and ``convergence``: the theory checks of :mod:`hclm.dynamics` on digits.

Call :func:`register` on a ``typer.Typer`` app to add them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from hclm._console import configure_logging as _configure_logging
from hclm._console import console
from hclm._console import fail as _fail


def register(app: typer.Typer) -> None:
    """Add the ``generalization`` and ``convergence`` commands to ``app``."""
    app.command("generalization")(generalization)
    app.command("convergence")(convergence)


def generalization(
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder for summary.json, generalization.png and report.md. Default: runs/generalization-<timestamp>."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Small sweep for a smoke run: 4 noise levels (or --sigmas), 2 seeds, 150 training steps."
    ),
    sigmas: Optional[str] = typer.Option(
        None,
        "--sigmas",
        help="Comma-separated noise standard deviations σ > 0, e.g. 0.1,0.3,1, relative to a per-coordinate RMS of 1 "
        "of the representation. Default: 0.03,0.1,0.3,1,3.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each run's result (INFO level)."),
) -> None:
    """Train on digits with Gaussian noise on the representation and compare the gaps with an information bound."""
    from hclm.dynamics.generalization import NoiseSweepConfig, run_noise_sweep

    _configure_logging(verbose)
    levels = _parse_sigmas(sigmas) if sigmas is not None else None
    try:
        if quick:
            config = NoiseSweepConfig.quick(levels)
        else:
            config = NoiseSweepConfig() if levels is None else NoiseSweepConfig(sigmas=levels)
    except ValidationError as error:
        _fail("; ".join(problem["msg"].removeprefix("Value error, ") for problem in error.errors()))
    folder = _output_folder(out, "generalization")
    total = len(config.sigmas) * len(config.seeds)
    console.print(f"Writing to [bold]{folder}[/bold]: {total} runs ({len(config.sigmas)} noise levels × {len(config.seeds)} seeds)")

    with _progress() as progress:
        task = progress.add_task("training", total=total, unit="runs")

        def advance(done: int, _total: int, row: dict[str, Any]) -> None:
            progress.update(task, completed=done, description=f"σ = {row['sigma']:<8g} seed {row['seed']}")

        try:
            summary = run_noise_sweep(config, folder, progress=advance)
        except (FileNotFoundError, ValueError, OSError) as error:
            _fail(str(error))

    table = Table(title="Nearest-class-mean head on noisy representations (mean over seeds)", box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("σ", "train acc", "test acc", "gap", "bound", "end-to-end gap"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for row in summary["by_sigma"]:
        table.add_row(
            f"{row['sigma']:g}",
            f"{row['head_train_accuracy_mean']:.3f}",
            f"{row['head_test_accuracy_mean']:.3f}",
            f"{row['head_gap_mean']:+.3f}",
            f"{row['head_bound_mean']:.3f}",
            f"{row['end_to_end_gap_mean']:+.3f}",
        )
    console.print(table)
    console.print(f"Report: [bold]{folder / 'report.md'}[/bold]")


def convergence(
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder for summary.json and one PNG per case. Default: runs/convergence-<timestamp>."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Smaller run for a smoke test: fewer gradient-descent and SGD steps, 6 SGD seeds."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log the constants and fitted rates (INFO level)."),
) -> None:
    """Compare gradient descent and SGD with the predicted linear rates on a strongly convex and a PL problem."""
    from hclm.dynamics.convergence import ConvergenceSettings, run_convergence

    _configure_logging(verbose)
    settings = ConvergenceSettings.quick() if quick else ConvergenceSettings()
    folder = _output_folder(out, "convergence")
    console.print(f"Writing to [bold]{folder}[/bold]")

    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, unit="runs")
            progress.update(tasks[stage], completed=done)

        try:
            summary = run_convergence(folder, settings, progress=advance)
        except (FileNotFoundError, ValueError, OSError) as error:
            _fail(str(error))

    table = Table(title="Gradient descent: predicted vs fitted factor q of J − J*", box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("case", "η·L", "q predicted", "q fitted", "bound at every step"):
        table.add_column(column, justify="left" if column == "case" else "right", no_wrap=True, min_width=len(column))
    for case in summary["cases"]:
        smoothness = case["constants"]["smoothness"]
        for run in case["gradient_descent"]:
            table.add_row(
                case["name"],
                f"{run['step_size'] * smoothness:.2g}",
                f"{run['predicted_contraction']:.6f}",
                f"{run['measured_contraction']:.6f}",
                "held" if run["bound_holds"] else "VIOLATED",
            )
    console.print(table)
    for case in summary["cases"]:
        constants, sgd = case["constants"], case["sgd"]
        console.print(
            f"{case['name']}: μ = {constants['mu']:.4g}, L = {constants['smoothness']:.4g}, J* = {constants['optimum']:.6g}; "
            f"SGD bound {'held' if sgd['bound_holds'] else 'VIOLATED'} over {len(sgd['seeds'])} seeds"
        )
    for name, file in summary["plots"].items():
        console.print(f"{name}: [bold]{folder / file}[/bold]")
    console.print(f"Output folder: [bold]{folder}[/bold]")


def _parse_sigmas(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            values.append(float(part))
        except ValueError:
            _fail(f"--sigmas: {part.strip()!r} is not a number; pass comma-separated values such as 0.1,0.3,1")
    if not values:
        _fail("--sigmas is empty; pass comma-separated values such as 0.1,0.3,1")
    return values


def _output_folder(out: Optional[Path], prefix: str) -> Path:
    folder = out if out is not None else Path("runs") / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if folder.exists() and not folder.is_dir():
        _fail(f"output path {folder} exists and is not a folder; pass a folder to --out")
    return folder


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
