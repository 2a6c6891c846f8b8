"""Differentiable entropy surrogates ``H(Z)`` of a batch of representations ``Z`` of shape (n, d).

Every surrogate validates its input, computes reductions and linear algebra in at least float32
(half-precision input is upcast), and returns a scalar in ``promote_types(z.dtype, float32)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hclm.surrogates._checks import check_positive, compute_dtype, validate_representations
from hclm.surrogates.linalg import is_numerically_singular, logdet_spd


def softmax_entropy(z: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Compute the mean Shannon entropy of the row-wise softmax distributions.

    ``H = mean_i(−Σ_k p_ik log p_ik)``, ``p_i = softmax(z_i / τ)``, in nats, in ``[0, log d]``.

    The information force ``∂H/∂z_i = −(1/(nτ))·p_i ⊙ (log p_i + H_i)`` vanishes both at the
    uniform maximum and at one-hot saturation, so the force degenerates at both ends.
    ``−inf`` logits are masked classes: they contribute ``0·log 0 = 0`` and get zero gradient.

    Args:
        z: logits, shape (n, d); ``−inf`` entries allowed, NaN and ``+inf`` are not.
        tau: temperature ``τ > 0``.

    Returns:
        Scalar tensor.
    """
    name = "softmax"
    validate_representations(z, name, min_rows=1, allow_negative_infinity=True)
    check_positive("tau", tau, name)
    out_dtype = compute_dtype(z)
    logits = z.to(out_dtype) / tau

    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    # Masked classes have p = 0 and log p = -inf; replacing log p by 0 there keeps 0·log 0 = 0
    # and its gradient finite (a plain product would give 0·inf = NaN in the backward pass).
    safe_log_p = torch.where(torch.isfinite(log_p), log_p, torch.zeros_like(log_p))
    row_entropy = -(p * safe_log_p).sum(dim=1)
    return row_entropy.mean()


def variance_entropy(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Compute the per-coordinate log-variance surrogate ``½ Σ_j log(σ_j² + ε)``.

    ``σ_j²`` is the unbiased variance of column ``j`` over the batch. The surrogate is blind to
    correlation between coordinates, so it cannot see collapse onto a correlated subspace.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``.
        eps: floor ``ε ≥ 0`` added to each variance; with ``ε = 0`` a constant column raises.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: a constant column with ``eps = 0``.
    """
    name = "variance"
    validate_representations(z, name)
    check_positive("eps", eps, name, allow_zero=True)
    dtype = compute_dtype(z)
    x = z.to(dtype)

    variances = x.var(dim=0, unbiased=True)
    if eps == 0:
        constant = (variances <= 0).nonzero()
        if len(constant):
            raise ValueError(
                f"variance: column {int(constant[0])} of representations with shape {tuple(z.shape)} is constant, "
                "so log(0) is undefined with eps = 0; set eps > 0 (for example 1e-4)"
            )
    return 0.5 * torch.log(variances + eps).sum()


def logdet_entropy(z: torch.Tensor, eps: float = 1e-4, precision: str = "float64") -> torch.Tensor:
    """Compute the log-determinant surrogate ``½ log det(Σ + εI)``.

    ``Σ = Z_cᵀZ_c/(n−1)`` with ``Z_c = Z − mean``. Adding ``(d/2)·log(2πe)`` gives the differential
    entropy of a Gaussian with covariance ``Σ + εI``. The force ``Z_c (Σ+εI)⁻¹/(n−1)`` grows along
    collapsing directions, a restoring force that strengthens as collapse nears.

    When ``n ≤ d`` the ``n×n`` Gram matrix is used (matrix determinant lemma):
    ``log det(εI_d + AᵀA) = (d−n)·log ε + log det(εI_n + AAᵀ)`` with ``A = Z_c/√(n−1)``.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``.
        eps: ridge ``ε ≥ 0``. With ``ε = 0`` the covariance must have full rank ``d``.
        precision: dtype of the internal linear algebra, "float64" (default) or "float32".

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.

    Raises:
        ValueError: ``eps = 0`` with ``n ≤ d`` or a rank-deficient covariance.
    """
    name = "logdet"
    validate_representations(z, name)
    check_positive("eps", eps, name, allow_zero=True)
    dtype = compute_dtype(z, precision)
    out_dtype = compute_dtype(z)
    x = z.to(dtype)
    n, d = x.shape

    centered = (x - x.mean(dim=0, keepdim=True)) / math.sqrt(n - 1)
    if n <= d:
        if eps == 0:
            raise ValueError(
                f"logdet: the covariance of {n} samples in {d} dimensions has rank at most {n - 1} < {d}, "
                "so its log-determinant is -inf with eps = 0; set eps > 0 or use a batch with more than d rows"
            )
        gram = centered @ centered.T
        matrix = gram + eps * torch.eye(n, dtype=dtype, device=x.device)
        value = 0.5 * ((d - n) * math.log(eps) + logdet_spd(matrix))
    else:
        covariance = centered.T @ centered
        matrix = covariance + eps * torch.eye(d, dtype=dtype, device=x.device) if eps > 0 else covariance
        if eps == 0 and is_numerically_singular(matrix):
            raise ValueError(
                f"logdet: the covariance of representations with shape {tuple(z.shape)} is rank-deficient, "
                "so its log-determinant is -inf with eps = 0; set eps > 0 (for example 1e-4)"
            )
        value = 0.5 * logdet_spd(matrix)
    return value.to(out_dtype)


def coding_rate(z: torch.Tensor, eps: float = 0.5, precision: str = "float64") -> torch.Tensor:
    """Compute the coding rate ``½ log det(I + (d/(n ε²)) ZᵀZ)`` of row-normalized representations.

    Rows are scaled to unit Euclidean norm first (a zero row stays zero). This is the
    rate–distortion form of the log-determinant: the number of nats needed to code the batch up
    to distortion ``ε``. It is bounded, and not translation invariant. When ``n < d`` the
    ``n×n`` form ``det(I_n + c ZZᵀ) = det(I_d + c ZᵀZ)`` is used.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``.
        eps: distortion ``ε > 0``.
        precision: dtype of the internal linear algebra, "float64" (default) or "float32".

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.
    """
    name = "coding_rate"
    validate_representations(z, name)
    check_positive("eps", eps, name)
    dtype = compute_dtype(z, precision)
    out_dtype = compute_dtype(z)
    x = F.normalize(z.to(dtype), dim=1)
    n, d = x.shape

    scale = d / (n * eps**2)
    if n < d:
        matrix = torch.eye(n, dtype=dtype, device=x.device) + scale * (x @ x.T)
    else:
        matrix = torch.eye(d, dtype=dtype, device=x.device) + scale * (x.T @ x)
    return (0.5 * logdet_spd(matrix)).to(out_dtype)
