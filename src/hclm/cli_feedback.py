"""The ``hclm feedback`` command: change the λ controller of a running training job.

Call :func:`register` with the typer app of the ``hclm`` command to add it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

from hclm._console import console
from hclm._console import fail as _fail
from hclm.control.feedback import write_feedback


def feedback(
    run_dir: Path = typer.Argument(
        ..., metavar="RUN_DIR", help="Folder of the running training job; control.json is written there."
    ),
    lam: Optional[float] = typer.Option(
        None, "--lam", help="New entropy weight λ (dimensionless, >= 0), applied at the job's next poll."
    ),
    band: Optional[Tuple[float, float]] = typer.Option(
        None,
        "--band",
        metavar="LOW HIGH",
        help="New target band of the relative strength ‖F_H‖/‖F_L‖ (dimensionless ratio, 0 < LOW < HIGH).",
    ),
    floor: Optional[float] = typer.Option(
        None, "--floor", help="New entropy floor H in the surrogate's units (nats for most surrogates)."
    ),
    pause: Optional[bool] = typer.Option(
        None, "--pause/--resume", help="Pause the controller so λ stays fixed, or resume it."
    ),
) -> None:
    """Write a change of λ, the target band, the entropy floor or the pause state to RUN_DIR/control.json."""
    if lam is None and band is None and floor is None and pause is None:
        _fail("no change given; pass at least one of --lam, --band, --floor, --pause or --resume")
    try:
        entry = write_feedback(run_dir, lam=lam, band=band, floor=floor, pause=pause, source="cli")
    except (FileNotFoundError, ValueError, OSError) as error:
        _fail(str(error))
    changes = ", ".join(f"{key}={value}" for key, value in entry["changes"].items())
    console.print(f"Wrote entry {entry['sequence']} ({changes}) to [bold]{run_dir / 'control.json'}[/bold]")


def register(app: typer.Typer) -> None:
    """Add the ``feedback`` command to ``app``."""
    app.command("feedback")(feedback)
