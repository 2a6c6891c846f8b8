"""Worker process and shared fixtures for the two-process ``gather=True`` tests.

The worker lives in its own module because the spawn start method imports the target function
by name in each child process. The test module imports the same case table, encoders and inputs,
so the parent builds its single-process reference from identical tensors.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from hclm.surrogates import (
    coding_rate,
    knn_entropy,
    logdet_entropy,
    softmax_entropy,
    softmax_marginal_entropy,
    uniformity,
    variance_entropy,
    variance_hinge,
    von_neumann_entropy,
)

WORLD_SIZE = 2
# Unequal row counts per rank, because gather_rows pads to the largest count and must drop the padding.
ROWS_PER_RANK = (7, 5)
# Rank 1 has a single row in the single-row case. The global batch still has 8 rows.
SINGLE_ROW_ROWS_PER_RANK = (7, 1)
INPUT_WIDTH = 4
HIDDEN_WIDTH = 8
# A stuck collective raises after this many seconds, so a worker never waits forever for its peer.
COLLECTIVE_TIMEOUT_S = 30

# Modes of the worker. "independent": each rank has its own encoder parameters.
# "data_parallel": both ranks share the parameters, as replicas under DDP do.
# "single_row": independent parameters, and rank 1 has one row.
INDEPENDENT = "independent"
DATA_PARALLEL = "data_parallel"
SINGLE_ROW = "single_row"
SINGLE_ROW_CASE = "logdet"


class Case:
    """One surrogate call: the function, its keyword arguments and the representation width ``d``."""

    def __init__(self, surrogate: Callable[..., torch.Tensor], width: int, **kwargs: Any) -> None:
        self.surrogate = surrogate
        self.width = width
        self.kwargs = kwargs

    def __call__(self, z: torch.Tensor, gather: bool) -> torch.Tensor:
        return self.surrogate(z, gather=gather, **self.kwargs)


# The global batch has 12 rows. A width of 3 takes the d×d branch of logdet, coding_rate and
# von_neumann, and a width of 16 takes their n×n branch.
CASES = {
    "variance": Case(variance_entropy, 3),
    "logdet": Case(logdet_entropy, 3, eps=1e-2),
    "logdet_gram": Case(logdet_entropy, 16, eps=1e-2),
    "coding_rate": Case(coding_rate, 3),
    "coding_rate_wide": Case(coding_rate, 16),
    "von_neumann": Case(von_neumann_entropy, 3),
    "von_neumann_wide": Case(von_neumann_entropy, 16),
    # Continuous random rows have no tied neighbour distances (almost surely).
    "knn": Case(knn_entropy, 3, k=2),
    "uniformity": Case(uniformity, 3),
    # The column standard deviations of the global batch range from 0.34 to 1.17 here, so with
    # gamma = 0.6 some columns are inside the hinge and some are not, in both modes.
    "variance_hinge": Case(variance_hinge, 3, gamma=0.6),
    "softmax_marginal": Case(softmax_marginal_entropy, 4),
    "softmax": Case(softmax_entropy, 4),
}


def parameter_seed(mode: str, rank: int) -> int:
    """Return the encoder seed: shared by all ranks in data-parallel mode, distinct otherwise."""
    if mode == DATA_PARALLEL:
        return 1000
    return 1000 + rank


def input_seed(rank: int) -> int:
    return 2000 + rank


def rows_per_rank(mode: str) -> tuple[int, ...]:
    return SINGLE_ROW_ROWS_PER_RANK if mode == SINGLE_ROW else ROWS_PER_RANK


def make_encoder(seed: int, width: int) -> dict[str, torch.Tensor]:
    """Build the float64 parameters of a one-hidden-layer tanh MLP from ``INPUT_WIDTH`` to ``width``."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "hidden.weight": (INPUT_WIDTH, HIDDEN_WIDTH),
        "hidden.bias": (HIDDEN_WIDTH,),
        "output.weight": (HIDDEN_WIDTH, width),
        "output.bias": (width,),
    }
    parameters = {}
    for name, shape in shapes.items():
        fan_in = shape[0] if len(shape) == 2 else 1
        values = torch.randn(*shape, generator=generator, dtype=torch.float64) / math.sqrt(fan_in)
        parameters[name] = values.requires_grad_()
    return parameters


def encode(parameters: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    hidden = torch.tanh(inputs @ parameters["hidden.weight"] + parameters["hidden.bias"])
    return hidden @ parameters["output.weight"] + parameters["output.bias"]


def make_inputs(rank: int, rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(input_seed(rank))
    return torch.randn(rows, INPUT_WIDTH, generator=generator, dtype=torch.float64)


def _loopback_interface() -> str:
    return "lo0" if sys.platform == "darwin" else "lo"


def _run_case(case: Case, mode: str, rank: int, world_size: int) -> dict[str, Any]:
    """Evaluate one case with ``gather=True`` on this rank and return its value and gradients."""
    parameters = make_encoder(parameter_seed(mode, rank), case.width)
    inputs = make_inputs(rank, rows_per_rank(mode)[rank])
    z = encode(parameters, inputs)
    z.retain_grad()

    value = case(z, gather=True)
    value.backward()

    parameter_grads = {name: tensor.grad.detach().clone() for name, tensor in parameters.items()}
    if mode == DATA_PARALLEL:
        # Average the gradients over ranks, as DistributedDataParallel does after backward.
        for grad in parameter_grads.values():
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            grad /= world_size
    return {
        "value": value.detach().clone(),
        "parameter_grads": parameter_grads,
        "representation_grad": z.grad.detach().clone(),
    }


# The probe case: equal rows per rank, so the rank mean of the local mean losses is the global mean.
PROBE_ROWS = 6
PROBE_WIDTH = 3
PROBE_LAM = 0.5
PROBE_LR = 0.1
# Rank 1 puts a NaN at this row and column of its representations in the non-finite case.
NAN_AT = (2, 1)


def probe_objective(z: torch.Tensor, gather: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the loss (mean squared representation) and the logdet entropy of ``z``."""
    return z.pow(2).sum(dim=1).mean(), logdet_entropy(z, eps=1e-2, gather=gather)


def _run_probe(rank: int) -> dict[str, Any]:
    """Measure two steps with a ``reduce=True`` probe on shared parameters and this rank's rows."""
    from hclm.forces import ForceProbe

    parameters = make_encoder(parameter_seed(DATA_PARALLEL, rank), PROBE_WIDTH)
    probe = ForceProbe(list(parameters.values()), lr=PROBE_LR, reduce=True)
    records = []
    for step in range(2):
        for tensor in parameters.values():
            tensor.grad = None
        z = encode(parameters, make_inputs(rank, PROBE_ROWS))
        loss, entropy = probe_objective(z, gather=True)
        records.append(probe.backward(loss, entropy, PROBE_LAM, step).as_dict())
        grads = {name: tensor.grad.detach().clone() for name, tensor in parameters.items()}
        with torch.no_grad():
            for tensor in parameters.values():
                tensor -= PROBE_LR * tensor.grad
            after = probe_objective(encode(parameters, make_inputs(rank, PROBE_ROWS)), gather=True)[1]
        records[-1] = probe.record_realized(after).as_dict()
    return {"records": records, "last_grads": grads}


def _run_non_finite(rank: int) -> str:
    """Call logdet with gather=True while rank 1 has a NaN; return the message raised on this rank."""
    z = make_inputs(rank, PROBE_ROWS)
    if rank == 1:
        z[NAN_AT] = math.nan
    try:
        logdet_entropy(z, gather=True)
    except ValueError as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def run_worker(rank: int, world_size: int, store_path: str, output_dir: str) -> None:
    """Join the gloo group, run every case in every mode and save the results to ``output_dir``.

    The file ``rank{rank}.pt`` is written only after every case succeeded. Any exception ends the
    process with a non-zero exit code, which the parent reports.
    """
    # Keep the gloo connections between the two processes on the loopback interface.
    os.environ["GLOO_SOCKET_IFNAME"] = _loopback_interface()
    # Two processes share the test machine, so one thread each avoids oversubscription.
    torch.set_num_threads(1)
    dist.init_process_group(
        backend="gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    try:
        results: dict[str, dict[str, Any]] = {INDEPENDENT: {}, DATA_PARALLEL: {}, SINGLE_ROW: {}}
        for name, case in CASES.items():
            results[INDEPENDENT][name] = _run_case(case, INDEPENDENT, rank, world_size)
            results[DATA_PARALLEL][name] = _run_case(case, DATA_PARALLEL, rank, world_size)
        results[SINGLE_ROW][SINGLE_ROW_CASE] = _run_case(CASES[SINGLE_ROW_CASE], SINGLE_ROW, rank, world_size)
        results["probe"] = _run_probe(rank)
        results["non_finite"] = {"message": _run_non_finite(rank)}

        partial = Path(output_dir) / f"rank{rank}.pt.partial"
        torch.save(results, partial)
        partial.rename(Path(output_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
