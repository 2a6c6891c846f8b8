"""Two-process tests of ``gather=True`` on the gloo backend against one process on the concatenated batch.

One module-scoped fixture spawns two ranks once, and they run every case. Each rank has its own
inputs and row count, and, except in the data-parallel mode, its own encoder parameters. The
parent process rebuilds the same encoders and inputs and evaluates the surrogate on
``cat(Z_0, Z_1)`` without gathering.

Convention under test: the backward pass of the all-gather sums the incoming gradient over
ranks, so rank ``r`` receives the gradient of the sum of all ranks' objectives. Every rank computes
the same value ``H``, so that gradient is ``world_size · ∂H/∂θ_r``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hclm.forces import ForceProbe

from _distributed_worker import (
    CASES,
    DATA_PARALLEL,
    INDEPENDENT,
    SINGLE_ROW,
    SINGLE_ROW_CASE,
    NAN_AT,
    PROBE_LAM,
    PROBE_LR,
    PROBE_ROWS,
    PROBE_WIDTH,
    WORLD_SIZE,
    encode,
    make_encoder,
    make_inputs,
    parameter_seed,
    probe_objective,
    rows_per_rank,
    run_worker,
)

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

# Above COLLECTIVE_TIMEOUT_S in the worker, so a stuck collective fails inside the worker first.
JOIN_TIMEOUT_S = 60
# Norm-wise relative error. Both sides run the same float64 operations on the same rows, and with
# torch 2.13 on CPU they agree bitwise. The tolerance allows for other summation orders, for
# example from a different thread count in the BLAS.
RTOL = 1e-6

CASE_NAMES = list(CASES)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected))


def reference(mode: str, case_name: str) -> dict[str, Any]:
    """Evaluate one case in this process on the rows of all ranks concatenated, without gathering.

    Returns the value, the gradients with respect to each rank's parameters (one shared set in
    data-parallel mode), and the gradient with respect to each rank's representations.
    """
    case = CASES[case_name]
    rows = rows_per_rank(mode)
    encoders = [make_encoder(parameter_seed(mode, rank), case.width) for rank in range(WORLD_SIZE)]
    if mode == DATA_PARALLEL:
        encoders = [encoders[0]] * WORLD_SIZE
    representations = [encode(encoders[rank], make_inputs(rank, rows[rank])) for rank in range(WORLD_SIZE)]

    value = case(torch.cat(representations), gather=False)

    distinct_encoders = encoders[:1] if mode == DATA_PARALLEL else encoders
    parameters = [tensor for encoder in distinct_encoders for tensor in encoder.values()]
    grads = torch.autograd.grad(value, parameters + representations)

    parameter_grads = []
    position = 0
    for encoder in distinct_encoders:
        parameter_grads.append(dict(zip(encoder, grads[position : position + len(encoder)])))
        position += len(encoder)
    return {
        "value": value.detach(),
        "parameter_grads": parameter_grads,
        "representation_grads": list(grads[position:]),
    }


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run every case on two spawned gloo ranks and return each rank's saved results."""
    directory = tmp_path_factory.mktemp("distributed")
    store_path = directory / "store"
    context = mp.start_processes(
        run_worker,
        args=(WORLD_SIZE, str(store_path), str(directory)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )

    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        # join raises ProcessRaisedException, with the worker's traceback, when a worker fails.
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                pytest.fail(f"the {WORLD_SIZE} gloo workers did not finish within {JOIN_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()

    exit_codes = [process.exitcode for process in context.processes]
    assert exit_codes == [0] * WORLD_SIZE, f"worker exit codes {exit_codes}"
    return [torch.load(Path(directory) / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_gathered_value_matches_concatenated(distributed_results, case_name):
    expected = reference(INDEPENDENT, case_name)["value"]

    for rank, results in enumerate(distributed_results):
        error = relative_error(results[INDEPENDENT][case_name]["value"], expected)
        assert error <= RTOL, f"rank {rank}: relative error {error:.2e} of the value {float(expected):.6g}"


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_parameter_gradient_sums_over_ranks(distributed_results, case_name):
    expected = reference(INDEPENDENT, case_name)["parameter_grads"]

    for rank, results in enumerate(distributed_results):
        actual = results[INDEPENDENT][case_name]["parameter_grads"]
        assert actual.keys() == expected[rank].keys()
        for name, expected_grad in expected[rank].items():
            assert float(expected_grad.norm()) > 0, f"rank {rank}: reference gradient of {name} is zero"
            error = relative_error(actual[name] / WORLD_SIZE, expected_grad)
            assert error <= RTOL, f"rank {rank}: relative error {error:.2e} of grad({name}) / world_size"


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_representation_gradient_sums_over_ranks(distributed_results, case_name):
    expected = reference(INDEPENDENT, case_name)["representation_grads"]

    for rank, results in enumerate(distributed_results):
        actual = results[INDEPENDENT][case_name]["representation_grad"]
        assert actual.shape == expected[rank].shape, f"rank {rank}: gradient shape"
        error = relative_error(actual / WORLD_SIZE, expected[rank])
        assert error <= RTOL, f"rank {rank}: relative error {error:.2e} of grad(Z_{rank}) / world_size"


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_data_parallel_gradient_matches_concatenated(distributed_results, case_name):
    expected = reference(DATA_PARALLEL, case_name)

    for rank, results in enumerate(distributed_results):
        actual = results[DATA_PARALLEL][case_name]
        value_error = relative_error(actual["value"], expected["value"])
        assert value_error <= RTOL, f"rank {rank}: relative error {value_error:.2e} of the value"
        for name, expected_grad in expected["parameter_grads"][0].items():
            error = relative_error(actual["parameter_grads"][name], expected_grad)
            assert error <= RTOL, f"rank {rank}: relative error {error:.2e} of the rank-averaged grad({name})"


def test_single_row_rank_logdet(distributed_results):
    expected = reference(SINGLE_ROW, SINGLE_ROW_CASE)

    for rank, results in enumerate(distributed_results):
        actual = results[SINGLE_ROW][SINGLE_ROW_CASE]
        value_error = relative_error(actual["value"], expected["value"])
        assert value_error <= RTOL, f"rank {rank}: relative error {value_error:.2e} of the value"
        representation_error = relative_error(
            actual["representation_grad"] / WORLD_SIZE, expected["representation_grads"][rank]
        )
        assert representation_error <= RTOL, f"rank {rank}: relative error {representation_error:.2e} of grad(Z_{rank})"
        for name, expected_grad in expected["parameter_grads"][rank].items():
            error = relative_error(actual["parameter_grads"][name] / WORLD_SIZE, expected_grad)
            assert error <= RTOL, f"rank {rank}: relative error {error:.2e} of grad({name}) / world_size"


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_gather_without_process_group(case_name):
    assert not dist.is_initialized()
    case = CASES[case_name]
    z = encode(make_encoder(0, case.width), make_inputs(0, 6)).detach().requires_grad_()

    gathered = case(z, gather=True)
    (gathered_grad,) = torch.autograd.grad(gathered, z)
    local = case(z, gather=False)
    (local_grad,) = torch.autograd.grad(local, z)

    assert torch.equal(gathered, local)
    assert torch.equal(gathered_grad, local_grad)


def test_reducing_probe_matches_one_process_on_global_batch(distributed_results):
    parameters = make_encoder(parameter_seed(DATA_PARALLEL, 0), PROBE_WIDTH)
    probe = ForceProbe(list(parameters.values()), lr=PROBE_LR)
    inputs = torch.cat([make_inputs(rank, PROBE_ROWS) for rank in range(WORLD_SIZE)])
    expected = []
    for step in range(2):
        for tensor in parameters.values():
            tensor.grad = None
        loss, entropy = probe_objective(encode(parameters, inputs), gather=False)
        probe.backward(loss, entropy, PROBE_LAM, step)
        expected_grads = {name: tensor.grad.detach().clone() for name, tensor in parameters.items()}
        with torch.no_grad():
            for tensor in parameters.values():
                tensor -= PROBE_LR * tensor.grad
            after = probe_objective(encode(parameters, inputs), gather=False)[1]
        expected.append(probe.record_realized(after).as_dict())

    for rank, results in enumerate(distributed_results):
        actual = results["probe"]
        for step, (got, want) in enumerate(zip(actual["records"], expected)):
            for key, value in want.items():
                if isinstance(value, float) and math.isnan(value):
                    assert math.isnan(got[key]), f"rank {rank}, step {step}: {key} = {got[key]}, expected NaN"
                else:
                    assert got[key] == pytest.approx(value, rel=RTOL, abs=1e-12), f"rank {rank}, step {step}: {key}"
        for name, expected_grad in expected_grads.items():
            error = relative_error(actual["last_grads"][name], expected_grad)
            assert error <= RTOL, f"rank {rank}: relative error {error:.2e} of the averaged grad({name})"


def test_non_finite_rank_raises_everywhere(distributed_results):
    messages = [results["non_finite"]["message"] for results in distributed_results]

    assert messages[1].startswith("NonFiniteInputError: logdet: 1 non-finite value(s)")
    assert f"first at row {NAN_AT[0]}, column {NAN_AT[1]}" in messages[1]
    assert messages[0].startswith("NonFiniteInputError: logdet: the representations of rank(s) 1 contain non-finite")
