"""Geometric baselines researchers compare entropy surrogates against: uniformity and variance hinge.

Both are published as losses to minimise. Here they are negated into scores to maximise (higher
means more spread), so they plug into ``L − λ·H`` like every other surrogate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from hclm.surrogates._checks import check_positive
from hclm.surrogates.functional import _prepare


def uniformity(z: torch.Tensor, t: float = 2.0, gather: bool | Any = False) -> torch.Tensor:
    """Compute the uniformity score ``−log mean_{i≠j} exp(−t‖u_i − u_j‖²)`` of ``u = z/‖z‖``.

    This is the negated uniformity loss on the unit hypersphere (log of the mean Gaussian
    potential over distinct pairs). It grows as the rows spread over the sphere, up to about
    ``2t`` for antipodal pairs. Its force fades once the rows are spread evenly, and it ignores
    the norm of each row. Computed with ``logsumexp`` for numerical stability.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``; zero rows stay at the origin.
        t: potential sharpness ``t > 0``.
        gather: use the rows of all ranks.

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.
    """
    name = "uniformity"
    check_positive("t", t, name)
    x = _prepare(z, name, gather)
    unit = F.normalize(x, dim=1)
    n = unit.shape[0]
    # ‖u_i − u_j‖² = ‖u_i‖² + ‖u_j‖² − 2 u_i·u_j, which also holds for zero rows (norm 0),
    # clamped at 0 against rounding.
    norms = unit.pow(2).sum(dim=1)
    squared = (norms[:, None] + norms[None, :] - 2.0 * unit @ unit.T).clamp_min(0.0)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=x.device)
    log_mean = torch.logsumexp(-t * squared[off_diagonal], dim=0) - math.log(n * (n - 1))
    return -log_mean


def variance_hinge(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4, gather: bool | Any = False) -> torch.Tensor:
    """Compute the negated variance hinge ``−mean_j max(0, γ − √(σ_j² + ε))``.

    This is the variance term of variance–covariance regularization: it pushes each coordinate's
    standard deviation up to ``γ`` and no further. The score is at most 0, and its force vanishes
    exactly once every coordinate reaches ``γ``, so it degenerates on representations that are
    already spread, whatever their correlations.

    Args:
        z: representations, shape (n, d), ``n ≥ 2``.
        gamma: target standard deviation ``γ > 0``.
        eps: ``ε > 0`` under the square root, which keeps the gradient finite at zero variance.
        gather: use the rows of all ranks.

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.
    """
    name = "variance_hinge"
    check_positive("gamma", gamma, name)
    check_positive("eps", eps, name)
    x = _prepare(z, name, gather)
    std = torch.sqrt(x.var(dim=0, unbiased=True) + eps)
    return -torch.relu(gamma - std).mean()
