"""Batch statistics over all ranks of ``torch.distributed``: a differentiable all-gather of rows."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def gather_rows(z: torch.Tensor, gather: bool | Any = False) -> torch.Tensor:
    """Concatenate the rows of ``z`` from every rank, in rank order, keeping the autograd graph.

    Each rank may hold a different number of rows. The backward pass sums the incoming
    gradients over ranks and returns each rank its own slice, so it differentiates the sum of the
    per-rank objectives. Under data-parallel training, where gradients are averaged over ranks,
    the parameter gradient then equals that of the surrogate on the concatenated batch in one
    process.

    Args:
        z: local rows, shape (n_local, d).
        gather: False to return ``z`` as it is; True to gather over the default process group;
            or a process group. Ignored (``z`` is returned) when ``torch.distributed`` is not
            initialized or has a single rank.

    Returns:
        Shape (Σ n_rank, d) when gathering, else ``z``.
    """
    if gather is False or gather is None:
        return z
    if not (dist.is_available() and dist.is_initialized()):
        logger.debug("gather requested but torch.distributed is not initialized; using the local batch")
        return z
    group = None if gather is True else gather
    if dist.get_world_size(group) == 1:
        return z
    return _AllGatherRows.apply(z, group)


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        world_size = dist.get_world_size(group)
        rank = dist.get_rank(group)
        local_rows = torch.tensor([z.shape[0]], dtype=torch.long, device=z.device)
        row_counts = [torch.zeros_like(local_rows) for _ in range(world_size)]
        dist.all_gather(row_counts, local_rows, group=group)
        sizes = [int(count) for count in row_counts]

        # all_gather needs equal shapes, so every rank pads to the largest row count.
        padded = z.new_zeros((max(sizes), *z.shape[1:]))
        padded[: z.shape[0]] = z
        pieces = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(pieces, padded.contiguous(), group=group)

        ctx.group = group
        ctx.sizes = sizes
        ctx.rank = rank
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        total = grad_output.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None
