"""Where the runs of a sweep train: in this process, in a local process pool, or as Ray tasks.

Every backend calls the same function with the same arguments, so a run's numbers do not depend
on the backend. Only the order in which finished runs come back does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Hashable

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")

Job = tuple[Hashable, tuple[Any, ...]]


def check_backend(backend: str, workers: int | None, address: str | None) -> None:
    """Raise ``ValueError`` for an unknown backend, a worker count below 1 or an address without Ray."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if address is not None and backend != "ray":
        raise ValueError(f"an address ({address!r}) needs the ray backend; add --backend ray or drop --address")


def map_runs(
    function: Callable[..., Any],
    jobs: Sequence[Job],
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    cpus_per_run: int = 1,
) -> Iterator[tuple[Hashable, Any]]:
    """Call ``function(*args)`` for every ``(key, args)`` job and yield ``(key, result)`` as each finishes.

    Args:
        function: a module-level function (it is pickled for worker processes and Ray tasks).
        jobs: keys and positional arguments.
        backend: "local" (this process when ``workers`` is 1, else a spawned process pool) or
            "ray" (one Ray task per job).
        workers: local: worker processes (default 1). Ray without ``address``: CPUs of the Ray
            instance started here (default: all of this machine's). Ray with ``address``: the most
            runs in flight at once (default: as many as the cluster schedules).
        address: address of a running Ray cluster, e.g. "ray://head:10001" or "auto".
        cpus_per_run: CPUs each Ray task requests (the torch threads of one run).

    Closing the iterator early (an exception or an interrupt in the caller) cancels the jobs not
    yet started.
    """
    check_backend(backend, workers, address)
    if not jobs:
        return
    if backend == "ray":
        yield from _ray_runs(function, jobs, workers, address, cpus_per_run)
        return
    count = workers or 1
    if count == 1 or len(jobs) <= 1:
        for key, args in jobs:
            yield key, function(*args)
        return
    yield from _pool_runs(function, jobs, count)


def _pool_runs(function: Callable[..., Any], jobs: Sequence[Job], workers: int) -> Iterator[tuple[Hashable, Any]]:
    # Spawned workers start from a fresh interpreter, so no torch thread pool is inherited by fork.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    try:
        futures = {pool.submit(function, *args): key for key, args in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BaseException:
        # Finished runs are on disk already, so drop the queue and let an interrupt return at once.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def import_ray() -> Any:
    """Import Ray, or raise an ``ImportError`` with the install command."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "the ray backend needs Ray, which is not installed; install it with: pip install 'hclm[ray]'"
        ) from error
    return ray


def _ray_runs(
    function: Callable[..., Any],
    jobs: Sequence[Job],
    workers: int | None,
    address: str | None,
    cpus_per_run: int,
) -> Iterator[tuple[Hashable, Any]]:
    ray = import_ray()
    # Ray sends usage statistics unless this variable is 0, and a sweep must not contact other hosts.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            # A local instance listens on loopback only and gets the CPUs it may use.
            ray.init(
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=False,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
            )
        else:
            ray.init(address=address, logging_level=logging.WARNING)
        logger.info("ray: %s", ray.cluster_resources())
    in_flight = workers if address is not None and workers is not None else len(jobs)

    remote = ray.remote(num_cpus=cpus_per_run, max_retries=0)(function)
    shared = _shared_arguments(ray, jobs)
    queue = list(jobs)
    running: dict[Any, Hashable] = {}
    try:
        while queue or running:
            while queue and len(running) < in_flight:
                key, args = queue.pop(0)
                running[remote.remote(*(shared.get(id(arg), arg) for arg in args))] = key
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                key = running.pop(ref)
                yield key, ray.get(ref)
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()


def _shared_arguments(ray: Any, jobs: Sequence[Job]) -> dict[int, Any]:
    """Put each argument object that several jobs pass (the data set) into Ray's object store once."""
    seen: dict[int, tuple[Any, int]] = {}
    for _key, args in jobs:
        for arg in args:
            if isinstance(arg, (str, int, float, bool, type(None))):
                continue
            value, count = seen.get(id(arg), (arg, 0))
            seen[id(arg)] = (value, count + 1)
    return {identity: ray.put(value) for identity, (value, count) in seen.items() if count > 1}
