"""Where a stage's data-parallel work runs: local processes (default) or a Ray cluster.

A stage maps a module-level function over work items (shards, row groups, batches) and gets the
results back in input order; the stage's own process writes its outputs from them, so outputs
are byte-identical whichever executor and worker count ran the work. The executor is chosen at
run time (`runtime.executor`, or the `SLM_EXECUTOR` environment variable), never by a declared
param, so switching changes no stage's identity: `dvc status` and Dagster's staleness stay put.

- `local`: `runtime.workers` spawned processes on this machine (one item or one worker: this
  process), at most `2 x workers` items ahead of the caller; after each item the heap memory it
  freed goes back to the OS (glibc's `malloc_trim`).
- `ray`: tasks on a Ray cluster: `runtime.ray_address` (or Ray's own `RAY_ADDRESS`) joins a
  running one (`ray start --head` on one node, `ray start --address` on the others), unset
  starts a local one for the stage with `runtime.workers` CPUs. One CPU per task; a task whose
  worker process or node dies is re-run by Ray (`runtime.ray_task_retries`); an exception in the
  function fails the stage as it would locally. Workers import the project's code from
  `PYTHONPATH` (set to this checkout): every node needs the repository at the same path, and the
  stage's inputs and outputs on a filesystem all nodes share.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
ENV = "SLM_EXECUTOR"
ROOT = Path(__file__).resolve().parent.parent
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back
    _malloc_trim = None


class Executor(Protocol):
    workers: int  # how many items run at once

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Results in input order, fetched lazily; with workers, the first items are submitted
        now, so the caller can do other work while they run."""

    def __enter__(self) -> Executor: ...
    def __exit__(self, *exc) -> None: ...


class LocalProcesses:
    """Worker processes for one stage run, started once when first needed (spawned: safe under
    threads; a run whose maps have at most one item each, e.g. a refresh, starts none)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """`2 x workers` items in flight: one more is submitted as each result is taken, so
        results waiting for a slower caller never pile up in this process (`Pool.imap` queued
        every item's result: unbounded in the number of items)."""
        items, call = list(items), partial(_call, fn)
        if self.workers <= 1 or len(items) <= 1:
            return map(call, items)
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
        todo = iter(items)
        running = deque(self._pool.apply_async(call, (item,))
                        for item in islice(todo, 2 * self.workers))
        return self._results(call, todo, running)

    def _results(self, call: Callable[[T], R], todo: Iterator[T], running: deque
                 ) -> Iterator[R]:
        while running:
            result = running.popleft().get()
            running.extend(self._pool.apply_async(call, (item,)) for item in islice(todo, 1))
            yield result

    def __enter__(self) -> LocalProcesses:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


def _call(fn: Callable[[T], R], item: T) -> R:
    """`fn(item)`, then the heap memory it freed handed back to the OS. glibc keeps freed blocks
    for reuse, fragmented by the next item's different sizes, so a process running many items
    grew with their count (dedup's scan at 16x the demo corpus: 57 MB held, free); Dask's
    workers trim the same way."""
    result = fn(item)
    if _malloc_trim is not None:
        _malloc_trim(0)
    return result


class RayTasks:
    """One Ray task per item, all submitted at once; results fetched in input order."""

    def __init__(self, address: str | None, workers: int, retries: int):
        import ray

        self._ray, self._started = ray, False
        if not ray.is_initialized():
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
            ray.init(address=address, num_cpus=None if address else workers,
                     runtime_env=env, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            self._started = True
        self._task = ray.remote(num_cpus=1, max_retries=retries)(_call)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", workers)))

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return self._results([self._task.remote(fn, item) for item in items])

    def _results(self, refs: list) -> Iterator[R]:
        for i, ref in enumerate(refs):
            yield self._ray.get(ref)
            refs[i] = None  # let Ray free the result

    def __enter__(self) -> RayTasks:
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self._ray.shutdown()


def open_executor(runtime, workers: int) -> Executor:
    """The executor `runtime` (or $SLM_EXECUTOR) names, with `workers` local processes/CPUs."""
    kind = os.environ.get(ENV) or runtime.executor
    if kind == "local":
        return LocalProcesses(workers)
    if kind == "ray":
        address = runtime.ray_address or os.environ.get("RAY_ADDRESS")
        return RayTasks(address, workers, runtime.ray_task_retries)
    raise ValueError(f"unknown executor {kind!r} (runtime.executor or ${ENV}): local or ray")
