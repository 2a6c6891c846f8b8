"""Spectral (von Neumann) entropy of the trace-normalized autocorrelation of the representations."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hclm.surrogates._checks import compute_dtype
from hclm.surrogates.functional import _prepare
from hclm.surrogates.linalg import clamp_floor


def von_neumann_entropy(z: torch.Tensor, precision: str = "float64", gather: bool | Any = False) -> torch.Tensor:
    """Compute the von Neumann entropy ``−Σ_k λ_k log λ_k`` of ``ρ = ẐᵀẐ/n``.

    ``Ẑ`` is ``Z`` with rows scaled to unit norm, so ``ρ`` is positive semi-definite with trace 1
    and ``λ_k`` are its eigenvalues. The result lies in ``[0, log min(n, d)]``: 0 when all rows
    are parallel, ``log d`` when ``ρ = I/d``. When ``n < d`` the eigenvalues come from the ``n×n``
    matrix ``ẐẐᵀ/n``, which has the same non-zero spectrum.

    The gradient ``∂S/∂ρ = −(log ρ + I)`` is taken in the eigenbasis, which needs no eigenvector
    derivatives and so stays finite at repeated eigenvalues (where differentiating ``eigh``
    directly is unstable). Eigenvalues at or below ``λ_max·k·machine epsilon`` count as zero: they
    add nothing and get no gradient, because ``λ log λ → 0`` as ``λ → 0``. The force fades as ``ρ``
    approaches ``I/d`` and along directions the batch has already left.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``; a zero row stays zero and adds nothing.
        precision: dtype of the eigendecomposition, "float64" (default) or "float32".
        gather: use the rows of all ranks.

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.
    """
    x = _prepare(z, "von_neumann", gather)
    out_dtype = x.dtype
    unit = F.normalize(x, dim=1)
    n, d = unit.shape
    product = unit @ unit.T if n < d else unit.T @ unit
    density = product.to(compute_dtype(x, precision)) / n
    return _SpectralEntropy.apply(density).to(out_dtype)


class _SpectralEntropy(torch.autograd.Function):
    """``S(ρ) = −tr(ρ log ρ)`` of a symmetric PSD matrix, with gradient ``−V diag(log λ + 1) Vᵀ``."""

    @staticmethod
    def forward(ctx, density: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        symmetric = 0.5 * (density + density.transpose(-1, -2))
        eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
        positive = eigenvalues > clamp_floor(eigenvalues, density.shape[-1])
        safe = torch.where(positive, eigenvalues, torch.ones_like(eigenvalues))
        log_values = torch.log(safe)
        ctx.save_for_backward(eigenvectors, positive, log_values)
        return -(torch.where(positive, eigenvalues, torch.zeros_like(eigenvalues)) * log_values).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        eigenvectors, positive, log_values = ctx.saved_tensors
        derivative = torch.where(positive, -(log_values + 1.0), torch.zeros_like(log_values))
        return grad_output * (eigenvectors * derivative) @ eigenvectors.transpose(-1, -2)
