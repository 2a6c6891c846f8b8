"""Kozachenko–Leonenko k-nearest-neighbour estimate of differential entropy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from hclm.surrogates.functional import _prepare

# A k-d tree beats the blocked brute-force search only in low dimension with many rows.
_TREE_MAX_DIM = 8
_TREE_MIN_ROWS = 4096
_BLOCK_ROWS = 1024


def knn_entropy(
    z: torch.Tensor,
    k: int = 3,
    min_distance: float = 1e-8,
    gather: bool | Any = False,
) -> torch.Tensor:
    """Estimate the differential entropy of the rows of ``z`` with the Kozachenko–Leonenko formula.

    ``H = ψ(n) − ψ(k) + log V_d + (d/n)·Σ_i log ρ_i``, in nats, where ``ρ_i`` is the Euclidean
    distance from row ``i`` to its ``k``-th nearest other row, ``ψ`` the digamma function and
    ``V_d = π^{d/2}/Γ(d/2 + 1)`` the volume of the unit ball. The estimate is consistent for
    continuous densities and is the reference the other surrogates are validated against.

    The neighbours are found without gradient, by a blocked search in torch or, for ``d ≤ 8``
    and ``n ≥ 4096``, a k-d tree from SciPy. The gradient then flows through the distances
    ``ρ_i = ‖z_i − z_{j(i)}‖``, so each row is pushed away from its ``k``-th neighbour. The force is
    local, so it weakens where the neighbour distances are already even.

    Duplicate rows: a distance below ``min_distance × (median of the positive distances)`` is
    raised to that floor (in log space, so it cannot underflow), so duplicates give a finite
    estimate and no gradient along their zero-length difference. If every ``k``-th neighbour
    distance is zero the entropy is ``−inf`` and the call raises.

    Args:
        z: samples, shape (n, d), ``n ≥ k + 1``.
        k: neighbour order ``k ≥ 1``.
        min_distance: floor on distances, relative to their median, ``> 0``.
        gather: use the rows of all ranks.

    Returns:
        Scalar tensor in ``promote_types(z.dtype, float32)``.

    Raises:
        ValueError: ``k < 1``, fewer than ``k + 1`` rows, or every row with ``k`` or more duplicates.
    """
    name = "knn"
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"knn: k must be an integer >= 1, got {k!r}")
    if not (min_distance > 0 and math.isfinite(min_distance)):
        raise ValueError(f"knn: min_distance must be a finite number > 0, got {min_distance}")
    x = _prepare(z, name, gather, min_rows=k + 1)
    n, d = x.shape

    neighbours = kth_neighbour_indices(x.detach(), k)
    squared = (x - x[neighbours]).pow(2).sum(dim=1)
    positive = squared > 0
    if not bool(positive.any()):
        if bool((x == x[0]).all()):
            raise ValueError(
                f"knn: all {n} rows of shape {tuple(x.shape)} are identical, so the entropy estimate is -inf; "
                "pass samples with spread"
            )
        raise ValueError(
            f"knn: every row of shape {tuple(x.shape)} has a {k}-th nearest neighbour at distance 0 "
            "(each row has at least k duplicates), so the estimate is -inf; remove duplicates or raise k"
        )
    # The floor lives in log space, so it cannot underflow for tiny spreads. Masked entries take
    # log 1 inside the log, which keeps the backward pass free of log(0) and of sqrt at 0.
    log_floor = math.log(min_distance) + 0.5 * float(torch.log(squared.detach()[positive]).median())
    safe = torch.where(positive, squared, torch.ones_like(squared))
    log_distance = 0.5 * torch.log(safe)
    log_distance = torch.where(positive & (log_distance > log_floor), log_distance, torch.full_like(log_distance, log_floor))

    constant = float(digamma(n) - digamma(k)) + log_unit_ball_volume(d)
    return constant + d * log_distance.mean()


def log_unit_ball_volume(d: int) -> float:
    """Return ``log V_d = (d/2)·log π − log Γ(d/2 + 1)``."""
    return 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d + 1.0))


def kth_neighbour_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Return, for each row, the index of its ``k``-th nearest other row (ties broken by index)."""
    n, d = x.shape
    if d <= _TREE_MAX_DIM and n >= _TREE_MIN_ROWS:
        points = x.double().cpu().numpy()
        _, index = cKDTree(points).query(points, k=k + 1)
        # Column 0 is the point itself unless duplicates tie with it, so drop the self index.
        return torch.from_numpy(_drop_self(np.asarray(index), k)).to(x.device)

    # Centered float64 coordinates keep ‖a‖² − 2a·b + ‖b‖² from cancelling for rows far from
    # the origin, where float32 would rank near neighbours wrongly.
    x = x.double()
    x = x - x.mean(dim=0, keepdim=True)
    result = torch.empty(n, dtype=torch.long, device=x.device)
    squared_norms = x.pow(2).sum(dim=1)
    for start in range(0, n, _BLOCK_ROWS):
        block = x[start : start + _BLOCK_ROWS]
        distances = squared_norms[start : start + _BLOCK_ROWS, None] - 2.0 * block @ x.T + squared_norms[None, :]
        rows = torch.arange(block.shape[0], device=x.device)
        distances[rows, start + rows] = math.inf
        result[start : start + block.shape[0]] = distances.topk(k, dim=1, largest=False).indices[:, k - 1]
    return result


def _drop_self(index: np.ndarray, k: int) -> np.ndarray:
    """Pick the ``k``-th entry of each row of ``index`` that is not the row's own index."""
    others = index != np.arange(index.shape[0])[:, None]
    # A stable sort of "is self" puts the other points first, in their distance order.
    order = np.argsort(~others, axis=1, kind="stable")
    return np.take_along_axis(index, order[:, k - 1 : k], axis=1)[:, 0].astype(np.int64)
