"""Backends that train the runs of a sweep: this process, a local process pool, or Ray tasks.

Every backend calls the same function with the same arguments, so a run's numbers do not depend
on the backend. Only the order in which finished runs come back does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
import signal
import socket
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Hashable

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")

Job = tuple[Hashable, tuple[Any, ...]]
# Seconds to wait for a TCP connection to a Ray address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0


def check_backend(backend: str, workers: int | None, address: str | None) -> None:
    """Check the backend options and that Ray imports when it is the backend.

    Raises:
        ValueError: an unknown backend, a worker count below 1 or an address without Ray.
        ImportError: the ray backend without Ray installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if address is not None and backend != "ray":
        raise ValueError(f"an address ({address!r}) needs the ray backend; add --backend ray or drop --address")
    if backend == "ray":
        import_ray()


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
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        futures = _submit_ignoring_interrupts(pool, function, jobs)
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BaseException:
        # Finished runs are on disk already, so drop the queue and let an interrupt return at once.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _submit_ignoring_interrupts(
    pool: ProcessPoolExecutor, function: Callable[..., Any], jobs: Sequence[Job]
) -> dict[Future, Hashable]:
    """Submit every job while SIGINT is ignored, so that the workers these submits spawn ignore it too.

    Ctrl-C in a terminal reaches every process of the group. The command handles it and cancels
    the queue, so a worker must not also print a traceback of its own. An ignored signal stays
    ignored across exec, and Python then installs no KeyboardInterrupt handler in the child.
    """
    if threading.current_thread() is not threading.main_thread():
        return {pool.submit(function, *args): key for key, args in jobs}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return {pool.submit(function, *args): key for key, args in jobs}
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_with_parent(parent: int) -> None:
    """Start a thread in the worker that ends it once the process ``parent`` is gone (after ``kill -9``)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="hclm-parent-watch", daemon=True).start()


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
            # "local" starts a private instance even when a cluster runs on this machine.
            ray.init(
                address="local",
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        else:
            _connect_ray(ray, address)
        logger.info("Ray cluster resources: %s", ray.cluster_resources())
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


def _connect_ray(ray: Any, address: str) -> None:
    """Connect to the Ray cluster at ``address``, failing fast when nothing listens at a HOST:PORT address."""
    host, separator, port = address.rpartition(":")
    if separator and "://" not in address and port.isdigit():
        # Ray itself retried an unreachable address for more than 10 minutes (Ray 2.60).
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as error:
            raise ConnectionError(
                f"no Ray cluster responds at {address} ({error}); start one with `ray start --head` "
                "or check the address (`ray status` on a cluster node prints it)"
            ) from None
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise ConnectionError(
            f"could not connect to the Ray cluster at {address}: {error}. If the cluster uses token "
            "authentication, set RAY_AUTH_MODE=token or pass --address auto on a cluster node"
        ) from error


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
