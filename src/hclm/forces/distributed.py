"""Averaging over the ranks of ``torch.distributed`` for data-parallel training with the probe.

DDP averages gradients inside ``loss.backward()``. The probe takes ``∇H`` with
``torch.autograd.grad``, which DDP's reducer does not see, so the probe averages the gradients
itself with the same arithmetic: an all-reduce sum divided by the number of ranks.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist


def reduce_group(reduce: bool | Any) -> tuple[bool, Any]:
    """Resolve a ``reduce`` option to ``(active, group)``.

    ``reduce`` is False (no averaging), True (the default process group) or a process group.
    Averaging is inactive when ``torch.distributed`` is not initialized or has one rank.
    """
    if reduce is False or reduce is None:
        return False, None
    if not (dist.is_available() and dist.is_initialized()):
        return False, None
    group = None if reduce is True else reduce
    return dist.get_world_size(group) > 1, group


def all_reduce_mean_(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Replace ``tensor`` in place by its mean over the ranks of ``group`` and return it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor.div_(dist.get_world_size(group))


def average_gradients(params: Iterable[torch.nn.Parameter], group: Any = None) -> None:
    """Average ``.grad`` of ``params`` over the ranks of ``group``, one all-reduce per dtype.

    Every rank must pass the same parameters with gradients in the same places, as data-parallel
    replicas of one model running the same code do. Parameters without a gradient are skipped.
    """
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for param in params:
        if param.grad is not None:
            by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
    for grads in by_dtype.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        all_reduce_mean_(flat, group)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def broadcast_parameters(module: torch.nn.Module, source: int = 0, group: Any = None) -> None:
    """Copy the parameters and buffers of ``module`` on rank ``source`` to every rank, as DDP does at start."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=source, group=group)
