"""Where cells run: `LocalExecutor` (a process pool on this machine, no extra
dependency) or `RayExecutor` (a Ray cluster: a local instance, `auto`, or `ray://`).

Both yield `(cell, outcome)` in completion order and never raise for a cell: a task's
exception, a dead worker or a lost Ray task is a failed outcome. Shared inputs travel
once per worker process (pool initializer) or once per node (Ray's object store, each
worker deserialising an input once and keeping it for later cells).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from simulator.sweep.cells import Cell, Outcome, execute, failed

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def run(
        self, cells: Sequence[Cell], inputs: Mapping[str, Any]
    ) -> Iterator[tuple[Cell, Outcome]]: ...


def make_executor(name: str, workers: int | None = None, address: str | None = None) -> Executor:
    if workers is not None and workers < 1:
        raise ValueError("--workers must be >= 1")
    if name == "local":
        if address is not None:
            raise ValueError("--address is for --executor ray")
        return LocalExecutor(workers or os.cpu_count() or 1)
    if name == "ray":
        return RayExecutor(address, workers)
    raise ValueError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")


# -- local -------------------------------------------------------------------------------

_POOL_INPUTS: dict[str, Any] = {}
"""The shared inputs of the pool worker this module runs in (set by its initializer)."""


def _install_inputs(inputs: Mapping[str, Any]) -> None:
    _POOL_INPUTS.clear()
    _POOL_INPUTS.update(inputs)


def _execute_in_pool(cell: Cell) -> Outcome:
    return execute(cell, _POOL_INPUTS)


class LocalExecutor:
    """`workers` processes; with one worker, cells run in this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(
        self, cells: Sequence[Cell], inputs: Mapping[str, Any]
    ) -> Iterator[tuple[Cell, Outcome]]:
        if self.workers == 1 or len(cells) <= 1:
            for cell in cells:
                yield cell, execute(cell, inputs)
            return
        pool = ProcessPoolExecutor(
            min(self.workers, len(cells)), initializer=_install_inputs, initargs=(dict(inputs),)
        )
        try:
            futures = {pool.submit(_execute_in_pool, cell): cell for cell in cells}
            for future in as_completed(futures):
                yield futures[future], _outcome(futures[future], future)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _outcome(cell: Cell, future: Future[Outcome]) -> Outcome:
    try:
        return future.result()
    except Exception as err:  # the worker died (killed, out of memory): the pool is broken
        return failed(cell, f"worker process died: {type(err).__name__}: {err}")


# -- Ray -----------------------------------------------------------------------------------

_RAY_INPUT_CACHE: OrderedDict[str, Any] = OrderedDict()
"""Inputs this Ray worker has deserialised, by object id (the few latest sweeps')."""
RAY_CACHE_ENTRIES = 16


def _execute_on_ray(cell: Cell, refs: Mapping[str, list[Any]]) -> Outcome:
    """A Ray task. Each ref arrives wrapped in a list so Ray does not resolve it: this
    worker fetches it from the node's object store and deserialises it once."""
    import ray

    inputs = {}
    for name, (ref,) in refs.items():
        ident = ref.hex()
        if ident not in _RAY_INPUT_CACHE:
            _RAY_INPUT_CACHE[ident] = ray.get(ref)
            while len(_RAY_INPUT_CACHE) > RAY_CACHE_ENTRIES:
                _RAY_INPUT_CACHE.popitem(last=False)
        _RAY_INPUT_CACHE.move_to_end(ident)
        inputs[name] = _RAY_INPUT_CACHE[ident]
    return execute(cell, inputs)


class RayExecutor:
    """Cells as Ray tasks (one CPU each). Without `address` a local Ray instance with
    `workers` CPUs is started and stopped; with one (`auto`, `ray://host:10001`) the
    sweep joins that cluster. A Ray already initialised in this process is used as is."""

    def __init__(self, address: str | None, workers: int | None) -> None:
        try:
            import ray
        except ModuleNotFoundError as err:
            raise ValueError("--executor ray needs Ray: pip install 'gpufleet[ray]'") from err
        self.ray = ray
        self.address = address
        self.workers = workers

    def run(
        self, cells: Sequence[Cell], inputs: Mapping[str, Any]
    ) -> Iterator[tuple[Cell, Outcome]]:
        if not cells:
            return
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(
                address=self.address,
                num_cpus=self.workers if self.address is None else None,
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
            )
        try:
            yield from self._run(cells, inputs)
        finally:
            if started_here:
                ray.shutdown()

    def _run(
        self, cells: Sequence[Cell], inputs: Mapping[str, Any]
    ) -> Iterator[tuple[Cell, Outcome]]:
        ray = self.ray
        refs = {name: ray.put(value) for name, value in inputs.items()}
        task = ray.remote(num_cpus=1, max_retries=0)(_execute_on_ray)
        pending = {
            task.remote(cell, {name: [refs[name]] for name in set(cell.inputs.values())}): cell
            for cell in cells
        }
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    yield cell, self._outcome(cell, ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _outcome(self, cell: Cell, ref: Any) -> Outcome:
        try:
            outcome: Outcome = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:  # worker or node lost
            return failed(cell, f"Ray task failed: {type(err).__name__}: {err}")
        return outcome
