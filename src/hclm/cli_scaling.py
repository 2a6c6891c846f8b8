"""The ``hclm scaling`` command: a thin layer over :mod:`hclm.experiments.scaling`.

Call :func:`register` with the typer app of the ``hclm`` command to add it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.progress import Progress
from rich.table import Table

from hclm._console import configure_logging as _configure_logging
from hclm._console import (
    ADDRESS_OPTION,
    BACKEND_OPTION,
    WORKERS_OPTION,
    console,
    error_console,
    run_progress_columns,
)
from hclm._console import fail as _fail
from hclm.experiments.backends import check_backend
from hclm.experiments.scaling import (
    ScalingConfig,
    count_finished_scaling,
    load_scaling_config,
    quick_scaling_config,
    run_scaling,
)
from hclm.experiments.sweep import check_output_folder


def scaling(
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        help="Output folder for runs/, summary.json, report.md and plots/. Default: runs/scaling-<timestamp>.",
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="YAML file with the scaling config (keys of ScalingConfig); unknown keys and invalid values are errors.",
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help=(
            "Small run for a smoke test: one seed, 4 training-set shares at 80 steps, 10 to 80 steps, "
            "100 resamples, a mixture of 800 samples."
        ),
    ),
    workers: Optional[int] = WORKERS_OPTION,
    backend: str = BACKEND_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each run's result and each fit (INFO level)."),
) -> None:
    """Fit power laws to test error against training-set size and steps, and check the entropy balance."""
    _configure_logging(verbose)
    try:
        settings = load_scaling_config(config) if config is not None else ScalingConfig()
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    if quick:
        settings = quick_scaling_config(settings)
    folder = out if out is not None else Path("runs") / datetime.now().strftime("scaling-%Y%m%d-%H%M%S")
    try:
        check_output_folder(folder)
        check_backend(backend, workers, address)
    except (ValueError, ImportError) as error:
        _fail(str(error))

    finished, total = count_finished_scaling(settings, folder)
    console.print(f"Writing to [bold]{folder}[/bold]: {total} runs on {', '.join(settings.datasets)}")
    if finished:
        console.print(f"Resuming: {finished} of {total} runs are already finished there and are kept.")
    with Progress(*run_progress_columns(), console=console, transient=False) as progress:
        task = progress.add_task("training", total=total)

        def advance(done: int, _total: int, run_id: str) -> None:
            progress.update(task, completed=done, description=f"{run_id:<44}")

        try:
            summary = run_scaling(
                settings, folder, workers=workers, backend=backend, address=address, progress=advance
            )
        except (FileNotFoundError, ValueError, OSError) as error:
            _fail(str(error))
        except KeyboardInterrupt:
            progress.stop()
            error_console.print(f"Interrupted. Finished runs are saved in {folder}; run the same command again to resume.")
            raise typer.Exit(code=130) from None

    _print_fits(summary)
    console.print(f"Report: [bold]{folder / 'report.md'}[/bold]")
    console.print(f"Output folder: [bold]{folder}[/bold]")


def register(app: typer.Typer) -> None:
    """Add the ``scaling`` command to ``app``."""
    app.command("scaling")(scaling)


def _print_fits(summary: dict[str, Any]) -> None:
    table = Table(
        title="Power-law fits R∞ + A·x^(−α) of the test error", box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False
    )
    for column in ("dataset", "surrogate", "axis", r"α \[interval]", "R∞", "resid.", "credible"):
        justify = "left" if column in ("dataset", "surrogate", "axis", "credible") else "right"
        table.add_column(column, justify=justify, no_wrap=True, min_width=len(column))
    for row in summary["fits"]:
        fit = row["fit"]
        if fit is None:
            table.add_row(row["dataset"], row["surrogate"], row["axis"], "—", "—", "—", "no fit")
            continue
        low, high = fit["intervals"]["alpha"]
        table.add_row(
            row["dataset"],
            row["surrogate"],
            row["axis"],
            f"{_fmt(fit['alpha'])} [{_fmt(low)}, {_fmt(high)}]",
            _fmt_r_inf(fit["r_inf"]),
            f"{fit['residual_scale']:.2g}",
            "yes" if row["credible"] else "no",
        )
    console.print(table)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _fmt_r_inf(value: float | None) -> str:
    # The solver keeps R∞ strictly above its bound 0, so an estimate at the bound prints as 1e-20 or so.
    if value is not None and value < 1e-12:
        return "0"
    return _fmt(value)
