"""Log-determinants of symmetric positive-definite matrices with a stable gradient."""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)


class _LogDetSPD(torch.autograd.Function):
    """``log det M`` for symmetric positive-definite ``M`` with gradient ``M⁻¹``.

    The forward pass uses a Cholesky factorisation. If it fails (the matrix is numerically
    indefinite), it falls back to an eigendecomposition with eigenvalues clamped at
    ``‖M‖·k·machine epsilon``. The backward pass returns ``grad·M⁻¹`` from the same factors, so it
    never differentiates eigenvectors and stays finite at repeated eigenvalues.
    """

    @staticmethod
    def forward(ctx, matrix: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        factor, info = torch.linalg.cholesky_ex(matrix)
        if int(info) == 0:
            ctx.save_for_backward(factor)
            ctx.from_cholesky = True
            return 2.0 * torch.log(torch.diagonal(factor)).sum()

        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        floor = clamp_floor(eigenvalues, matrix.shape[-1])
        clamped = eigenvalues.clamp_min(floor)
        logger.debug(
            "Cholesky failed at leading minor %d; using eigenvalues clamped at %.3g (smallest was %.3g)",
            int(info),
            float(floor),
            float(eigenvalues.min()),
        )
        ctx.save_for_backward(eigenvectors, clamped)
        ctx.from_cholesky = False
        return torch.log(clamped).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if ctx.from_cholesky:
            (factor,) = ctx.saved_tensors
            inverse = torch.cholesky_inverse(factor)
        else:
            eigenvectors, clamped = ctx.saved_tensors
            inverse = (eigenvectors / clamped) @ eigenvectors.transpose(-1, -2)
        return grad_output * inverse


def logdet_spd(matrix: torch.Tensor) -> torch.Tensor:
    """Return ``log det M`` of a symmetric positive-definite matrix, shape (k, k) → scalar.

    The gradient is ``M⁻¹`` (symmetric). Differentiable once; second derivatives are not supported.
    """
    return _LogDetSPD.apply(matrix)


def clamp_floor(eigenvalues: torch.Tensor, size: int) -> torch.Tensor:
    """Return the smallest eigenvalue treated as non-zero: ``max|λ|·size·machine epsilon``."""
    tiny = torch.finfo(eigenvalues.dtype).eps
    scale = eigenvalues.abs().max().clamp_min(torch.finfo(eigenvalues.dtype).tiny)
    return scale * size * tiny


def is_numerically_singular(matrix: torch.Tensor) -> bool:
    """Return True when the symmetric ``matrix`` has an eigenvalue at or below the clamp floor."""
    with torch.no_grad():
        eigenvalues = torch.linalg.eigvalsh(matrix)
        return bool(eigenvalues.min() <= clamp_floor(eigenvalues, matrix.shape[-1]))


def logdet_gram(rows: torch.Tensor, ridge: float, factor_dtype: torch.dtype) -> torch.Tensor:
    """Return ``log det(AᵀA + ridge·I_d)`` for ``A`` of shape (n, d), from the smaller Gram matrix.

    When ``n < d`` it uses ``log det(AᵀA + rI_d) = (d−n)·log r + log det(AAᵀ + rI_n)`` (matrix
    determinant lemma), which needs ``r > 0``. The product runs in the dtype of ``rows`` and the
    factorization in ``factor_dtype``. The backward pass is one matrix product,
    ``∂/∂A = 2·A (AᵀA + rI)⁻¹`` (or ``2·(AAᵀ + rI)⁻¹ A``), instead of the two that autograd would
    take through ``AᵀA``.
    """
    n, d = rows.shape
    value = _LogDetGram.apply(rows, float(ridge), factor_dtype)
    if n < d:
        value = value + (d - n) * math.log(ridge)
    return value


class _LogDetGram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, ridge: float, factor_dtype: torch.dtype) -> torch.Tensor:  # type: ignore[override]
        n, d = rows.shape
        wide = n < d
        product = rows @ rows.T if wide else rows.T @ rows
        matrix = product.to(factor_dtype)
        if ridge:
            matrix.diagonal().add_(ridge)
        factor, info = torch.linalg.cholesky_ex(matrix)
        if int(info) == 0:
            value = 2.0 * torch.log(torch.diagonal(factor)).sum()
            ctx.save_for_backward(rows, factor)
            ctx.eigen = False
        else:
            eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
            clamped = eigenvalues.clamp_min(clamp_floor(eigenvalues, matrix.shape[-1]))
            logger.debug("Cholesky failed at leading minor %d; using clamped eigenvalues", int(info))
            value = torch.log(clamped).sum()
            ctx.save_for_backward(rows, eigenvectors, clamped)
            ctx.eigen = True
        ctx.wide = wide
        return value.to(rows.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        if ctx.eigen:
            rows, eigenvectors, clamped = ctx.saved_tensors
            inverse = (eigenvectors / clamped) @ eigenvectors.transpose(-1, -2)
        else:
            rows, factor = ctx.saved_tensors
            inverse = torch.cholesky_inverse(factor)
        inverse = (2.0 * grad_output.to(inverse.dtype) * inverse).to(rows.dtype)
        grad_rows = inverse @ rows if ctx.wide else rows @ inverse
        return grad_rows, None, None
