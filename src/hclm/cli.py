"""Command line of hclm: a thin layer over :mod:`hclm.experiments` and :mod:`hclm.report`."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Optional

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
from hclm.experiments.config import ExperimentConfig, load_config, quick_config
from hclm.experiments.data import Dataset, load_dataset
from hclm.experiments.sweep import check_output_folder, count_finished, run_sweep

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure the information force of entropy surrogates during training and compare them on real data.",
)


@app.command()
def run(
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder for records, summary.json and the report. Default: runs/<timestamp>."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file with the experiment config; unknown keys and invalid values are errors."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Small sweep for a smoke run: one seed, λ in {0.01, 0.1}, at most 150 steps per run."
    ),
    workers: Optional[int] = WORKERS_OPTION,
    backend: str = BACKEND_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each run's result (INFO level)."),
) -> None:
    """Run the surrogate comparison (default: handwritten digits) and write the report."""
    _configure_logging(verbose)
    try:
        settings = load_config(config) if config is not None else ExperimentConfig()
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    if quick:
        settings = quick_config(settings)
    folder = out if out is not None else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        check_backend(backend, workers, address)
        check_output_folder(folder)
        dataset = load_dataset(settings.data)
    except (FileNotFoundError, ValueError, ImportError) as error:
        _fail(str(error))

    rank = _join_torchrun()
    if rank is not None:
        try:
            _run_data_parallel(rank, settings, folder, workers, backend, address, dataset)
        finally:
            _leave_torchrun()
        return

    _run_with_progress(settings, folder, workers, backend, address, dataset)


def _join_torchrun() -> int | None:
    """Join the process group when ``torchrun`` started several ranks; return this rank, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed

    if not torch.distributed.is_initialized():
        # gloo runs on CPUs, which is where the comparison trains.
        torch.distributed.init_process_group(backend="gloo")
    return torch.distributed.get_rank()


def _leave_torchrun() -> None:
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _run_data_parallel(
    rank: int,
    settings: ExperimentConfig,
    folder: Path,
    workers: int | None,
    backend: str,
    address: str | None,
    dataset: Dataset,
) -> None:
    """Train every run on all ranks; rank 0 shows the progress and writes the files and the report."""
    if rank == 0:
        world_size = int(os.environ["WORLD_SIZE"])
        console.print(f"Data-parallel training on {world_size} ranks; each rank takes 1/{world_size} of every batch.")
        _run_with_progress(settings, folder, workers, backend, address, dataset)
        return
    try:
        run_sweep(settings, folder, workers=workers, backend=backend, address=address, dataset=dataset)
    except (FileNotFoundError, ValueError, OSError) as error:
        _fail(f"rank {rank}: {error}")


def _run_with_progress(
    settings: ExperimentConfig,
    folder: Path,
    workers: int | None,
    backend: str,
    address: str | None,
    dataset: Dataset,
) -> None:
    """Train the sweep with a progress bar, then render the report and print the summary table."""
    finished, total = count_finished(settings, folder)
    console.print(f"Writing to [bold]{folder}[/bold]: {total} runs on {dataset.name}")
    if finished:
        console.print(f"Resuming: {finished} of {total} runs are already finished there and are kept.")
    with Progress(*run_progress_columns(), console=console, transient=False) as progress:
        task = progress.add_task("training", total=total)

        def advance(done: int, _total: int, result: dict) -> None:
            progress.update(task, completed=done, description=f"{result['run_id']:<28}")

        try:
            summary = run_sweep(
                settings,
                folder,
                workers=workers,
                backend=backend,
                address=address,
                progress=advance,
                dataset=dataset,
            )
        except (FileNotFoundError, ValueError, OSError) as error:
            _fail(str(error))
        except KeyboardInterrupt:
            progress.stop()
            error_console.print(
                f"Interrupted. Finished runs are saved in {folder}; run the same command again to resume."
            )
            raise typer.Exit(code=130) from None

    from hclm.report import render_report

    try:
        paths = render_report(folder)
    except KeyboardInterrupt:
        error_console.print(
            f"Interrupted while writing the report. Every run and summary.json are saved in {folder}; "
            f"`hclm report {folder}` writes the report again."
        )
        raise typer.Exit(code=130) from None
    _print_summary(summary)
    console.print(f"Report: [bold]{paths.get('html', folder / 'report.html')}[/bold]")
    console.print(f"Output folder: [bold]{folder}[/bold]")


@app.command()
def report(
    folder: Path = typer.Argument(
        ..., metavar="FOLDER", help="Output folder of an earlier `hclm run` (contains summary.json and runs/)."
    ),
) -> None:
    """Render report.md, report.html and the plots again from the stored records in FOLDER."""
    _configure_logging(False)
    from hclm.report import render_report

    try:
        paths = render_report(folder)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    for name, path in paths.items():
        console.print(f"{name}: {path}")


def _print_summary(summary: dict) -> None:
    table = Table(title="Surrogate comparison (mean over seeds)", box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("surrogate", "λ", "regime", "rel. str.", "test acc", "probe acc", "eff. rank"):
        justify = "left" if column in ("surrogate", "regime") else "right"
        table.add_column(column, justify=justify, no_wrap=True, min_width=len(column))
    for row in summary["results"]:
        table.add_row(
            row["surrogate"],
            f"{row['lam']:g}",
            row["regime"] or "—",
            _fmt(row["relative_strength_median"]),
            _fmt(row["test_accuracy_mean"]),
            _fmt(row["probe_accuracy_mean"]),
            _fmt(row["effective_rank_mean"]),
        )
    console.print(table)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _register_subcommands() -> None:
    from hclm import cli_feedback, cli_scaling, cli_theory
    from hclm.cli_simulate import simulate_app

    app.add_typer(simulate_app, name="simulate")
    cli_scaling.register(app)
    cli_theory.register(app)
    cli_feedback.register(app)


_register_subcommands()


def main() -> None:
    """Entry point of the ``hclm`` command."""
    app()


if __name__ == "__main__":
    main()
