"""Batch statistics over all ranks of ``torch.distributed``: a differentiable all-gather of rows."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from hclm.surrogates._checks import NonFiniteInputError

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


def raise_on_every_rank(error: Exception | None, gather: bool | Any, name: str) -> None:
    """Raise on every rank when the local check of any rank raised, instead of only on that rank.

    A rank that raised would never reach the all-gather that its peers wait in, so every rank
    first shares whether its check passed. Ranks whose own rows were fine raise a
    :class:`NonFiniteInputError` that names the failing ranks.
    """
    if gather is False or gather is None or not (dist.is_available() and dist.is_initialized()):
        if error is not None:
            raise error
        return
    group = None if gather is True else gather
    world_size = dist.get_world_size(group)
    if world_size == 1:
        if error is not None:
            raise error
        return
    failed = torch.tensor([0 if error is None else 1], dtype=torch.long)
    flags = [torch.zeros_like(failed) for _ in range(world_size)]
    dist.all_gather(flags, failed, group=group)
    failing = [rank for rank, flag in enumerate(flags) if int(flag)]
    if error is not None:
        raise error
    if failing:
        raise NonFiniteInputError(
            f"{name}: the representations of rank(s) {', '.join(map(str, failing))} contain non-finite values, "
            "so the gathered batch has them too; see the error raised on those ranks"
        )


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
