"""Console, logging setup and the one-line error exit shared by the hclm commands."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
error_console = Console(stderr=True)

# Options shared by the commands that train runs on a backend (hclm run, hclm scaling).
WORKERS_OPTION = typer.Option(
    None,
    "--workers",
    min=1,
    help="Runs trained in parallel. Local: worker processes (default 1). Ray: CPUs of the local Ray "
    "instance (default: all), or with --address the most runs in flight (default: no limit).",
)
BACKEND_OPTION = typer.Option(
    "local", "--backend", help="Where runs train: 'local' (this machine) or 'ray' (one Ray task per run)."
)
ADDRESS_OPTION = typer.Option(
    None, "--address", help="Address of a running Ray cluster, e.g. 'auto' or 'ray://HEAD:10001' (needs --backend ray)."
)


def run_progress_columns() -> tuple[ProgressColumn, ...]:
    """Return the columns of a progress bar over runs: description, bar, done/total, elapsed and left."""
    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )


def configure_logging(verbose: bool) -> None:
    """Send library logs to stderr through rich: INFO with ``verbose``, else WARNING and above."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=error_console, show_path=False)],
        force=True,
    )


def fail(message: str) -> NoReturn:
    """Print ``error: message`` in one red line on stderr and exit with code 2."""
    # The message may contain square brackets (paths, YAML errors), which rich would read as markup.
    error_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
