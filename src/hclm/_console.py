"""Console, logging setup and the one-line error exit shared by the hclm commands."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

console = Console()
error_console = Console(stderr=True)


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
