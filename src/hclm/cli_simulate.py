"""The ``simulate`` commands: Langevin particles, the Gaussian (OU) flow and the 1-D Fokker–Planck solver."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from hclm._console import configure_logging as _configure_logging
from hclm._console import console, error_console
from hclm._console import fail as _fail

simulate_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate Wasserstein gradient flows of the free energy F(ρ) = ∫V dρ + β⁻¹∫ρ log ρ and check them against closed forms.",
)

_OUT_HELP = "Output folder for summary.json and the PNG plots. Default: runs/simulate-{kind}-<timestamp>."


@simulate_app.command()
def langevin(
    out: Optional[Path] = typer.Option(None, "--out", help=_OUT_HELP.format(kind="langevin")),
    dim: int = typer.Option(2, "--dim", help="Dimension d of the particles (count, >= 1)."),
    particles: int = typer.Option(20_000, "--particles", help="Number of Langevin particles N (count, > 3)."),
    steps: int = typer.Option(500, "--steps", help="Euler–Maruyama steps (count, >= 1)."),
    dt: float = typer.Option(0.01, "--dt", help="Time step (time units, 0 < dt < 2/stiffness_max)."),
    beta: float = typer.Option(1.0, "--beta", help="Inverse temperature β (1/energy units, > 0)."),
    stiffness_min: float = typer.Option(1.0, "--stiffness-min", help="Smallest eigenvalue of A in V = ½xᵀAx (energy/length², > 0)."),
    stiffness_max: float = typer.Option(4.0, "--stiffness-max", help="Largest eigenvalue of A (energy/length², >= stiffness-min)."),
    rotation: float = typer.Option(30.0, "--rotation", help="Rotation of A's eigenvectors in the plane of the first two axes (degrees)."),
    start: float = typer.Option(2.0, "--start", help="Initial mean of every coordinate (length units)."),
    start_std: float = typer.Option(0.3, "--start-std", help="Initial standard deviation of every coordinate (length units, > 0)."),
    entropy_samples: int = typer.Option(4096, "--entropy-samples", help="Particles in the k-NN entropy estimate of the free energy (count, > 3)."),
    float64: bool = typer.Option(False, "--float64", help="Simulate in float64 instead of float32 (slower)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial draw; the noise uses seed + 1."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress messages (INFO level)."),
) -> None:
    """Run Langevin particles in a quadratic potential and compare their moments with the exact OU solution."""
    from hclm.dynamics.simulate import simulate_langevin

    _run(
        "langevin",
        out,
        verbose,
        lambda folder, progress: simulate_langevin(
            folder,
            dim=dim,
            particles=particles,
            steps=steps,
            dt=dt,
            beta=beta,
            stiffness_min=stiffness_min,
            stiffness_max=stiffness_max,
            rotation=rotation,
            start=start,
            start_std=start_std,
            entropy_samples=entropy_samples,
            float64=float64,
            seed=seed,
            progress=progress,
        ),
    )


@simulate_app.command()
def ou(
    out: Optional[Path] = typer.Option(None, "--out", help=_OUT_HELP.format(kind="ou")),
    dim: int = typer.Option(2, "--dim", help="Dimension d (count, >= 1)."),
    particles: int = typer.Option(20_000, "--particles", help="Number of Langevin particles compared with the flow (count, > 3)."),
    steps: int = typer.Option(400, "--steps", help="Langevin steps; the flow runs to steps·dt (count, >= 1)."),
    dt: float = typer.Option(0.005, "--dt", help="Langevin time step (time units, 0 < dt < 2/stiffness_max)."),
    beta: float = typer.Option(1.0, "--beta", help="Inverse temperature β (1/energy units, > 0)."),
    stiffness_min: float = typer.Option(0.5, "--stiffness-min", help="Smallest eigenvalue of A in V = ½xᵀAx (energy/length², > 0)."),
    stiffness_max: float = typer.Option(2.0, "--stiffness-max", help="Largest eigenvalue of A (energy/length², >= stiffness-min)."),
    rotation: float = typer.Option(30.0, "--rotation", help="Rotation of A's eigenvectors in the plane of the first two axes (degrees)."),
    start: float = typer.Option(1.5, "--start", help="Initial mean of every coordinate (length units)."),
    start_std: float = typer.Option(1.5, "--start-std", help="Initial standard deviation of every coordinate (length units, > 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the particles."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress messages (INFO level)."),
) -> None:
    """Compare the Bures–Wasserstein ODE, the closed-form OU flow and Langevin particles on Gaussians."""
    from hclm.dynamics.simulate import simulate_ou

    _run(
        "ou",
        out,
        verbose,
        lambda folder, progress: simulate_ou(
            folder,
            dim=dim,
            particles=particles,
            steps=steps,
            dt=dt,
            beta=beta,
            stiffness_min=stiffness_min,
            stiffness_max=stiffness_max,
            rotation=rotation,
            start=start,
            start_std=start_std,
            seed=seed,
            progress=progress,
        ),
    )


@simulate_app.command("fokker-planck")
def fokker_planck(
    out: Optional[Path] = typer.Option(None, "--out", help=_OUT_HELP.format(kind="fokker-planck")),
    potential: str = typer.Option("double-well", "--potential", help="'double-well' for barrier·(x²−1)² or 'quadratic' for ½·stiffness·x²."),
    barrier: float = typer.Option(1.0, "--barrier", help="Height of the double-well barrier at x = 0 (energy units, > 0)."),
    stiffness: float = typer.Option(1.0, "--stiffness", help="Curvature of the quadratic potential (energy/length², > 0)."),
    left: float = typer.Option(-3.0, "--left", help="Left end a of the interval a ≤ x ≤ b (length units)."),
    right: float = typer.Option(3.0, "--right", help="Right end b of the interval (length units, > a)."),
    cells: int = typer.Option(400, "--cells", help="Finite-volume cells (count, >= 3)."),
    steps: int = typer.Option(6000, "--steps", help="Backward Euler steps (count, >= 1)."),
    dt: float = typer.Option(0.005, "--dt", help="Finite-volume time step (time units, > 0; any size is stable)."),
    beta: float = typer.Option(3.0, "--beta", help="Inverse temperature β (1/energy units, > 0)."),
    start: float = typer.Option(0.5, "--start", help="Mean of the initial Gaussian density (length units)."),
    start_std: float = typer.Option(0.3, "--start-std", help="Standard deviation of the initial density (length units, > 0)."),
    jko_steps: int = typer.Option(300, "--jko-steps", help="JKO steps over the same time; must divide --steps (count, >= 1)."),
    jko_quantiles: int = typer.Option(400, "--jko-quantiles", help="Quantile levels of the JKO discretization (count, >= 3)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress messages (INFO level)."),
) -> None:
    """Solve the 1-D Fokker–Planck equation by finite volumes and by JKO steps, and compare with the Gibbs density."""
    from hclm.dynamics.simulate import simulate_fokker_planck

    _run(
        "fokker-planck",
        out,
        verbose,
        lambda folder, progress: simulate_fokker_planck(
            folder,
            potential=potential,
            barrier=barrier,
            stiffness=stiffness,
            interval=(left, right),
            cells=cells,
            steps=steps,
            dt=dt,
            beta=beta,
            start=start,
            start_std=start_std,
            jko_steps=jko_steps,
            jko_quantiles=jko_quantiles,
            progress=progress,
        ),
    )


def _run(
    kind: str,
    out: Optional[Path],
    verbose: bool,
    simulate: Callable[[Path, Callable[[int, int], None]], dict[str, Any]],
) -> None:
    _configure_logging(verbose)
    folder = out if out is not None else Path("runs") / f"simulate-{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    # The progress bar starts with the first step, after the options have been validated, so an
    # invalid option prints only its error line.
    progress = Progress(*columns, console=console, transient=False)
    task = progress.add_task(kind, total=None, start=False)

    def advance(done: int, total: int) -> None:
        if not progress.live.is_started:
            console.print(f"Writing to [bold]{folder}[/bold]")
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done, total=total)

    try:
        summary = simulate(folder, advance)
    except (ValueError, OSError) as error:
        progress.stop()
        _fail(str(error))
    except KeyboardInterrupt:
        progress.stop()
        error_console.print("Interrupted; no summary.json was written.")
        raise typer.Exit(code=130) from None
    progress.stop()

    for name, value in summary["results"].items():
        if isinstance(value, float):
            console.print(f"{name}: {value:.6g}")
        elif not isinstance(value, list):
            console.print(f"{name}: {value}")
    for file_name in summary["plots"].values():
        console.print(f"plot: {folder / file_name}")
    console.print(f"Output folder: [bold]{folder}[/bold]")
