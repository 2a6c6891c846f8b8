"""Differentiable entropy surrogates ``H(Z)`` of a batch of representations ``Z`` of shape (n, d).

Every surrogate validates its input and computes reductions and linear algebra in at least
float32 (half-precision input is upcast). The result is a scalar in
``promote_types(z.dtype, float32)``: float32 for float16, bfloat16 and float32 input, float64 for
float64 input. With ``gather=True`` the batch statistics cover the rows of every rank of
``torch.distributed``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from hclm.surrogates._checks import NonFiniteInputError, check_positive, compute_dtype, validate_representations
from hclm.surrogates.distributed import gather_rows, raise_on_every_rank
from hclm.surrogates.linalg import is_numerically_singular, logdet_gram


def softmax_entropy(z: torch.Tensor, tau: float = 1.0, gather: bool | Any = False) -> torch.Tensor:
    """Compute the mean Shannon entropy of the row-wise softmax distributions.

    ``H = mean_i(−Σ_k p_ik log p_ik)``, ``p_i = softmax(z_i / τ)``, in nats, in ``[0, log d]``.

    The force ``∂H/∂z_i = −(1/(nτ))·p_i ⊙ (log p_i + H_i)`` vanishes both at the uniform maximum
    and at one-hot saturation (large ``‖z‖/τ``), so the force degenerates at both ends.
    ``−inf`` logits are masked classes: they contribute ``0·log 0 = 0`` and get zero gradient.

    Args:
        z: logits, shape (n, d); ``−inf`` entries allowed, NaN and ``+inf`` are not.
        tau: temperature ``τ > 0``.
        gather: average over the rows of all ranks (see :func:`gather_rows`).

    Returns:
        Scalar tensor.
    """
    name = "softmax"
    check_positive("tau", tau, name)
    x = _prepare(z, name, gather, min_rows=1, allow_negative_infinity=True)
    log_p = torch.log_softmax(x / tau, dim=1)
    return -_p_log_p(log_p.exp(), log_p).sum(dim=1).mean()


def softmax_marginal_entropy(z: torch.Tensor, tau: float = 1.0, gather: bool | Any = False) -> torch.Tensor:
    """Compute the entropy of the batch-mean softmax distribution, ``−Σ_k p̄_k log p̄_k``.

    ``p̄ = mean_i softmax(z_i / τ)``, in nats, in ``[0, log d]``. This is the diversity term of
    information maximisation: it is high when the batch uses all classes evenly, whatever each
    row's own entropy. Its force saturates like :func:`softmax_entropy` at large ``‖z‖/τ``, and it
    vanishes when the batch already uses the classes evenly.

    Args:
        z: logits, shape (n, d); ``−inf`` entries allowed (masked classes), NaN and ``+inf`` not.
        tau: temperature ``τ > 0``.
        gather: average over the rows of all ranks.

    Returns:
        Scalar tensor.
    """
    name = "softmax_marginal"
    check_positive("tau", tau, name)
    x = _prepare(z, name, gather, min_rows=1, allow_negative_infinity=True)
    marginal = torch.softmax(x / tau, dim=1).mean(dim=0)
    # A class masked in every row has p̄_k = 0. Taking the log of 1 there keeps 0·log 0 = 0 and
    # avoids the 0·(1/0) = NaN that log(0) would put into the backward pass.
    log_marginal = torch.log(torch.where(marginal > 0, marginal, torch.ones_like(marginal)))
    return -(marginal * log_marginal).sum()


def variance_entropy(z: torch.Tensor, eps: float = 1e-4, gather: bool | Any = False) -> torch.Tensor:
    """Compute the per-coordinate log-variance surrogate ``½ Σ_j log(σ_j² + ε)``.

    ``σ_j²`` is the unbiased variance of column ``j`` over the batch. The force
    ``(z_ij − μ_j)/((n−1)(σ_j² + ε))`` only spreads each coordinate on its own: the surrogate is
    blind to correlation, so it cannot see collapse onto a correlated subspace.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``.
        eps: floor ``ε ≥ 0`` added to each variance; with ``ε = 0`` a constant column raises.
        gather: use the rows of all ranks.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: a constant column with ``eps = 0``.
    """
    name = "variance"
    check_positive("eps", eps, name, allow_zero=True)
    x = _prepare(z, name, gather)
    variances = x.var(dim=0, unbiased=True)
    if eps == 0:
        constant = (variances <= 0).nonzero()
        if len(constant):
            raise ValueError(
                f"variance: column {int(constant[0])} of representations with shape {tuple(x.shape)} is constant, "
                "so log(0) is undefined with eps = 0; set eps > 0 (for example 1e-4)"
            )
    return 0.5 * torch.log(variances + eps).sum()


def logdet_entropy(
    z: torch.Tensor, eps: float = 1e-4, precision: str = "float64", gather: bool | Any = False
) -> torch.Tensor:
    """Compute the log-determinant surrogate ``½ log det(Σ + εI)``.

    ``Σ = Z_cᵀZ_c/(n−1)`` with ``Z_c = Z − mean``. Adding ``(d/2)·log(2πe)`` gives the differential
    entropy of a Gaussian with covariance ``Σ + εI``. The force ``Z_c (Σ+εI)⁻¹/(n−1)`` grows along
    collapsing directions, a restoring force that strengthens as collapse nears (up to ``1/ε``).

    When ``n ≤ d`` the ``n×n`` Gram matrix is used (matrix determinant lemma):
    ``log det(εI_d + AᵀA) = (d−n)·log ε + log det(εI_n + AAᵀ)`` with ``A = Z_c/√(n−1)``.
    The product ``AᵀA`` (or ``AAᵀ``) is formed in the compute dtype of ``z``, which is float32 for
    float32 and half input. The factorization and its inverse run in ``precision``.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``.
        eps: ridge ``ε ≥ 0``. With ``ε = 0`` the covariance must have full rank ``d``.
        precision: dtype of the factorization, "float64" (default) or "float32".
        gather: use the rows of all ranks.

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.

    Raises:
        ValueError: ``eps = 0`` with ``n ≤ d`` or a rank-deficient covariance.
    """
    name = "logdet"
    check_positive("eps", eps, name, allow_zero=True)
    x = _prepare(z, name, gather)
    out_dtype = x.dtype
    factor_dtype = compute_dtype(x, precision)
    n, d = x.shape

    centered = _center(x)
    if eps == 0:
        if n <= d:
            raise ValueError(
                f"logdet: the covariance of {n} samples in {d} dimensions has rank at most {n - 1} < {d}, "
                "so its log-determinant is -inf with eps = 0; set eps > 0 or use a batch with more than d rows"
            )
        if is_numerically_singular((centered.T @ centered).detach().to(factor_dtype)):
            raise ValueError(
                f"logdet: the covariance of representations with shape {tuple(x.shape)} is rank-deficient, "
                "so its log-determinant is -inf with eps = 0; set eps > 0 (for example 1e-4)"
            )
    # log det(Z_cᵀZ_c/(n−1) + εI) = −d·log(n−1) + log det(Z_cᵀZ_c + ε(n−1)I): scaling the ridge
    # instead of the rows saves a pass over Z. n < d uses the n×n Gram matrix inside logdet_gram.
    value = 0.5 * (logdet_gram(centered, eps * (n - 1), factor_dtype) - d * math.log(n - 1))
    return value.to(out_dtype)


def coding_rate(
    z: torch.Tensor, eps: float = 0.5, precision: str = "float64", gather: bool | Any = False
) -> torch.Tensor:
    """Compute the coding rate ``½ log det(I + (d/(n ε²)) ZᵀZ)`` of row-normalized representations.

    Rows are scaled to unit Euclidean norm first (a zero row stays zero). This is the
    rate–distortion form of the log-determinant: the number of nats needed to code the batch up
    to distortion ``ε``. It is bounded by ``(d/2)·log(1 + 1/ε²)`` and not translation invariant;
    its force fades as the rows spread evenly over the sphere. When ``n < d`` the ``n×n`` form
    ``det(I_n + c ZZᵀ) = det(I_d + c ZᵀZ)`` is used.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``.
        eps: distortion ``ε > 0``.
        precision: dtype of the factorization, "float64" (default) or "float32".
        gather: use the rows of all ranks.

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.
    """
    name = "coding_rate"
    check_positive("eps", eps, name)
    x = _prepare(z, name, gather)
    out_dtype = x.dtype
    factor_dtype = compute_dtype(x, precision)
    unit = F.normalize(x, dim=1)
    n, d = unit.shape

    # log det(I + cUᵀU) = d·log c + log det(UᵀU + I/c), so the ridge form applies with r = 1/c.
    scale = d / (n * eps**2)
    value = d * math.log(scale) + logdet_gram(unit, 1.0 / scale, factor_dtype)
    return (0.5 * value).to(out_dtype)


def _prepare(
    z: torch.Tensor,
    name: str,
    gather: bool | Any,
    *,
    min_rows: int = 2,
    allow_negative_infinity: bool = False,
) -> torch.Tensor:
    """Validate the local rows, upcast half precision, gather over ranks, and check the row count."""
    gathering = gather is not False and gather is not None
    local_error: NonFiniteInputError | None = None
    try:
        validate_representations(
            z, name, min_rows=1 if gathering else min_rows, allow_negative_infinity=allow_negative_infinity
        )
    except NonFiniteInputError as error:
        local_error = error
    raise_on_every_rank(local_error, gather, name)
    x = gather_rows(z.to(compute_dtype(z)), gather)
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{name}: needs at least {min_rows} rows over all ranks to estimate batch statistics, "
            f"got shape {tuple(x.shape)}; use a larger batch"
        )
    return x


def _center(x: torch.Tensor) -> torch.Tensor:
    # Two passes: the mean of rows far from the origin is off by more than the spread of small
    # directions, and the second pass removes what the first left, now computed on small values.
    centered = x - x.mean(dim=0, keepdim=True)
    return centered - centered.mean(dim=0, keepdim=True)


def _add_ridge(matrix: torch.Tensor, eps: float) -> torch.Tensor:
    if eps == 0:
        return matrix
    return matrix + eps * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)


def _p_log_p(p: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Return ``p·log p`` with ``0·log 0 = 0`` and a finite gradient where ``p = 0``.

    Replacing ``log p`` by 0 where it is ``−inf`` (instead of multiplying through) keeps the
    backward pass free of ``0·inf = NaN``.
    """
    safe_log_p = torch.where(torch.isfinite(log_p), log_p, torch.zeros_like(log_p))
    return p * safe_log_p
