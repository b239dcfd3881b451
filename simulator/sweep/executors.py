"""Where cells run: `LocalExecutor` (a process pool on this machine, no extra
dependency) or `RayExecutor` (a Ray cluster: a local instance, `auto`, or `ray://`).

Both yield `(cell, outcome)` in completion order and never raise for a cell: a task's
exception, a dead worker or a lost Ray task is a failed outcome. Shared inputs travel
once per worker process (pool initializer) or once per node (Ray's object store, each
Ray worker handing an input once to the process its cells run in).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
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
#
# Cells run 5-10 % slower (in CPU seconds) inside a Ray worker process than in a process
# of their own: +8.6 % over the FGD study's 1,020 cells. Not the inputs (copying them out
# of the object store changed nothing), nor Ray's imports or daemons (neither slows a
# plain process); a Ray worker is a busy process of ~20 threads. In a child process of the
# worker the same cells take what they take locally. So a Ray task hands its cell to a
# child process that the worker keeps for its lifetime, the same kind of process the local
# executor runs cells in: spawned once, each shared input sent to it once (again only if
# it let that input go for later ones).

INPUT_ENTRIES = 32
"""Inputs a cell process keeps, least recently used first out (the few latest sweeps')."""


def _keep_latest(cache: OrderedDict[str, Any], used: Iterable[str]) -> None:
    """Mark `used` most recent, then let the least recently used go past INPUT_ENTRIES."""
    for ident in used:
        cache.move_to_end(ident)
    while len(cache) > INPUT_ENTRIES:
        cache.popitem(last=False)


_CHILD_INPUTS: OrderedDict[str, Any] = OrderedDict()
"""The cell process's inputs by object id."""


def _execute_in_child(
    cell: Cell, ids: Mapping[str, str], new: Mapping[str, Any]
) -> Outcome | set[str]:
    """Run `cell` on the inputs `ids` names, after keeping `new` ones; the ids this
    process does not hold (it let them go for later ones) instead of an outcome. Inputs
    go only after the cell has its own, so a second call with them always runs."""
    _CHILD_INPUTS.update(new)
    missing = {ident for ident in ids.values() if ident not in _CHILD_INPUTS}
    if missing:
        return missing
    inputs = {name: _CHILD_INPUTS[ident] for name, ident in ids.items()}
    _keep_latest(_CHILD_INPUTS, ids.values())
    return execute(cell, inputs)


class _CellProcess:
    """A Ray worker's child process for its cells, and the inputs sent to it."""

    def __init__(self) -> None:
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self.sent: OrderedDict[str, None] = OrderedDict()
        self.broken = False

    def run(self, cell: Cell, refs: Mapping[str, list[Any]]) -> Outcome:
        import ray

        by_id = {ref.hex(): ref for (ref,) in refs.values()}
        ids = {name: ref.hex() for name, (ref,) in refs.items()}
        unsent = set(by_id) - self.sent.keys()
        while True:
            new = {ident: ray.get(by_id[ident]) for ident in unsent}
            try:
                result = self.pool.submit(_execute_in_child, cell, ids, new).result()
            except BrokenProcessPool as err:  # the child died (killed, out of memory)
                self.broken = True
                self.pool.shutdown(wait=False)
                return failed(cell, f"cell process died: {type(err).__name__}: {err}")
            self.sent.update(dict.fromkeys(by_id))
            _keep_latest(self.sent, by_id)
            if isinstance(result, Outcome):
                return result
            unsent = result


_cell_process: _CellProcess | None = None
"""This Ray worker's cell process (started by its first cell)."""


def _execute_on_ray(cell: Cell, refs: Mapping[str, list[Any]]) -> Outcome:
    """A Ray task. Each ref arrives wrapped in a list so Ray does not resolve it: the
    worker fetches an input from the node's object store only for a cell process that
    does not hold it yet."""
    global _cell_process
    if _cell_process is None or _cell_process.broken:
        _cell_process = _CellProcess()
    return _cell_process.run(cell, refs)


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
