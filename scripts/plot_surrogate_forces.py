"""Plot the force norm ‖∇_Z H‖ of every registered surrogate against collapse and against scale.

Collapse: ``Z(α) = (1 − α)·Z₀ + α·Z₀uuᵀ`` moves isotropic Gaussian rows ``Z₀`` (n = 256, d = 16)
onto one direction ``u``; ``α = 1`` is rank one. Scale: ``Z(s) = s·Z₀`` for ``s`` from 1e-3 to
1e3, which for the softmax family is the logit scale (uniform at small ``s``, one-hot at large).

Run: ``python scripts/plot_surrogate_forces.py [--out docs/figures]``. Writes
``force_vs_collapse.png``, ``force_vs_scale.png`` and ``surrogate_forces.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hclm.surrogates import available_surrogates, get_surrogate

ROWS, DIM = 256, 16


def force_norm(name: str, z: torch.Tensor) -> float:
    """Return ``‖∇_Z H‖`` (Frobenius) of surrogate ``name`` at ``z`` with default parameters."""
    leaf = z.detach().clone().requires_grad_(True)
    value = get_surrogate(name)(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return float(grad.norm())


def sweep(names: list[str]) -> dict:
    """Compute the force norms over the collapse and scale grids."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(ROWS, DIM, generator=generator, dtype=torch.float64)
    direction = torch.nn.functional.normalize(torch.randn(DIM, 1, generator=generator, dtype=torch.float64), dim=0)
    collapsed = base @ direction @ direction.T

    alphas = np.linspace(0.0, 1.0, 41)
    scales = np.logspace(-3, 3, 49)
    result = {"alpha": alphas.tolist(), "scale": scales.tolist(), "collapse": {}, "saturation": {}}
    for name in names:
        result["collapse"][name] = [force_norm(name, (1 - a) * base + a * collapsed) for a in alphas]
        result["saturation"][name] = [force_norm(name, s * base) for s in scales]
    return result


def plot(result: dict, key: str, x_key: str, xlabel: str, title: str, path: Path, log_x: bool) -> None:
    """Draw one panel of force norms, one line per surrogate, on a log y-axis."""
    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, values in result[key].items():
        series = np.array(values, dtype=float)
        series[series <= 0] = np.nan
        axes.plot(result[x_key], series, label=name, linewidth=1.8)
    axes.set_yscale("log")
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("force norm ‖∇_Z H‖ (Frobenius)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot surrogate force norms against collapse and scale.")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"), help="output folder (default docs/figures)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    result = sweep(list(available_surrogates()))
    plot(
        result,
        "collapse",
        "alpha",
        "collapse α (0: isotropic Gaussian rows, 1: all rows on one line)",
        f"Force norm against collapse (n = {ROWS}, d = {DIM}, default parameters)",
        args.out / "force_vs_collapse.png",
        log_x=False,
    )
    plot(
        result,
        "saturation",
        "scale",
        "scale s of the rows (for softmax: logit scale)",
        f"Force norm against scale (n = {ROWS}, d = {DIM}, default parameters)",
        args.out / "force_vs_scale.png",
        log_x=True,
    )
    (args.out / "surrogate_forces.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'force_vs_collapse.png'}, {args.out / 'force_vs_scale.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
