r"""Scheduling a scan's chunks on an executor, and storing them as they finish.

Chunks run on any `concurrent.futures`-style executor: the default device pool (one
thread per local device), a `ThreadPoolExecutor`, a `ProcessPoolExecutor` with the
`spawn` or `forkserver` start method, or Dask's `client.get_executor()` for many
machines. Workers return tables; only the calling process (the driver) writes the store,
in the order chunks finish; a chunk's rows do not depend on that order.

Only the public interface of an executor is used (`submit`, `shutdown`, futures):

- **Window.** At most `max_in_flight` chunks are submitted at a time (default: twice the
  number of devices for the device pool, otherwise `max(16, 2 * os.cpu_count())`; give it
  for a large Dask cluster, e.g. `2 * sum(client.nthreads().values())`).
- **`fork` pools** are refused before anything is written: a `ProcessPoolExecutor`
  runs one probe, `worker.forked_from_driver`, in a worker process (a forked worker
  inherited the driver's copy of the module; see `worker.py`). Every chunk repeats the
  check in its worker, so other executors are covered too.
- **Broken process pools.** A pool broken by a dead worker fails all its futures. When the
  executor was given as a zero-argument factory (e.g.
  `functools.partial(ProcessPoolExecutor, 4, mp_context=spawn)`), the scan built it, so it
  builds a fresh one and resubmits the unfinished chunks (each at most `max_retries`
  times). An executor instance cannot be rebuilt from its public interface (its worker
  count, start method and initializer are private), so a broken instance ends the scan
  with a `ScanError`; finished chunks are stored and a rerun resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._problem import Problem
from .._status import status_counts
from .errors import ScanError
from .store import Store, columns_to_table
from .worker import FORK_REFUSAL, ChunkJob, ChunkOutput, device_pool, forked_from_driver, run_chunk

__all__ = ["ScanProgress", "Workers", "open_executor", "check_executor", "execute"]


@dataclasses.dataclass(frozen=True)
class ScanProgress:
    """Passed to the `progress` callback after each chunk is stored (and once at start)."""

    chunks_done: int
    chunks_total: int
    trajectories_done: int
    trajectories_total: int
    chunks_skipped: int
    computed_now: int
    trajectories_now: int
    elapsed_s: float
    chunk: int | None = None
    device: str | None = None


@dataclasses.dataclass
class Workers:
    """Where chunks run: an executor, the factory that built it (if the scan may rebuild
    it) and whether the scan shuts it down at the end."""

    executor: Any
    factory: Callable[[], Any] | None = None
    owned: bool = False

    def rebuild(self) -> None:
        """Replaces a broken executor by a fresh one from the factory."""
        if self.factory is None:
            raise ScanError(
                "the process pool broke (a worker process died) and scan cannot rebuild an "
                "executor it did not create; pass executor=functools.partial("
                "ProcessPoolExecutor, ...) to have broken pools rebuilt (finished chunks are "
                "stored; rerun to resume)."
            )
        with contextlib.suppress(Exception):
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self.factory()
        self.owned = True

    def close(self, *, wait: bool) -> None:
        if self.owned:
            self.executor.shutdown(wait=wait, cancel_futures=not wait)


def _is_executor(obj) -> bool:
    return not isinstance(obj, type) and callable(getattr(obj, "submit", None))


def open_executor(executor) -> Workers:
    """`executor=` of `scan` (an executor, a zero-argument factory of one, or None for the
    device pool) as `Workers`. Factories are called now."""
    if executor is None:
        return Workers(None)  # the device pool, built by `execute` when there is work
    if _is_executor(executor):
        return Workers(executor)
    if callable(executor):
        built = executor()
        if not _is_executor(built):
            raise TypeError(
                "executor: a factory must return a concurrent.futures-style executor, got "
                f"{type(built).__name__}."
            )
        return Workers(built, factory=executor, owned=True)
    raise TypeError(
        "executor must have a concurrent.futures-style submit(fn, *args) (a ThreadPool/"
        "ProcessPoolExecutor, or a Dask client.get_executor()), or be a zero-argument "
        f"function returning one, got {type(executor).__name__}."
    )


def check_executor(executor, problem_obj: Problem | None) -> None:
    """Refuses, before anything is computed or written, a `fork` process pool and a
    `Problem` object that cannot be sent to the executor's workers."""
    if isinstance(executor, cf.ProcessPoolExecutor):
        with contextlib.suppress(BrokenProcessPool):  # a broken pool is the scheduler's case
            if executor.submit(forked_from_driver).result():
                raise ValueError(f"executor: {FORK_REFUSAL}")
    if problem_obj is not None and not isinstance(executor, cf.ThreadPoolExecutor):
        try:
            pickle.dumps(problem_obj)
            return
        except Exception as e:
            err = e
        if not isinstance(executor, cf.ProcessPoolExecutor):
            try:  # Dask ships tasks with cloudpickle, which handles closures
                import cloudpickle

                cloudpickle.dumps(problem_obj)
                return
            except Exception:
                pass
        raise TypeError(
            f"problem {problem_obj.name!r} is a Problem object whose objective cannot be sent "
            f"to worker processes ({type(err).__name__}: {err}); closures and lambdas cannot be "
            "pickled. Pass a built-in name or 'package.module:function' instead, or use threads "
            "/ the default device pool."
        ) from err


def _rows_in(chunk: int, spec) -> int:
    cs = spec["chunk_size"]
    return min(cs, spec["n"] - chunk * cs)


def default_max_in_flight(devices: Sequence | None) -> int:
    """Chunks submitted at a time when `max_in_flight` is not given: two per device for
    the device pool (`devices`), otherwise two per local CPU and at least 16."""
    if devices is not None:
        return max(2, 2 * len(devices))
    return max(16, 2 * (os.cpu_count() or 1))


def execute(store: Store, todo: list[int], *, workers: Workers, devices, max_in_flight,
            spec, environment, source, problem_obj, cache, spec_hash, progress,
            max_retries, done, n_chunks, t_start) -> list[int]:
    """Runs the chunks in `todo` on `workers`; the driver writes each result to `store`.

    Returns the chunks computed, in the order they were stored.
    """
    n_total = spec["n"]
    rows_done = sum(_rows_in(c, spec) for c in done)
    chunks_done = len(done)
    skipped = len(done)
    computed: list[int] = []
    rows_now = 0

    def report(chunk=None, device=None):
        if progress is not None:
            progress(ScanProgress(
                chunks_done=chunks_done, chunks_total=n_chunks, trajectories_done=rows_done,
                trajectories_total=n_total, chunks_skipped=skipped, computed_now=len(computed),
                trajectories_now=rows_now, elapsed_s=time.perf_counter() - t_start,
                chunk=chunk, device=device,
            ))

    report()
    if not todo:
        return computed
    window = max_in_flight or default_max_in_flight(
        devices if workers.executor is None else None)
    if workers.executor is None:
        workers = Workers(device_pool(devices), owned=True)
    pending = deque(todo)
    inflight: dict[Any, int] = {}
    attempts: dict[int, int] = {}

    def job(c):
        return ChunkJob(source=source, spec=spec, environment=environment, chunk=c,
                        cache=cache, problem=problem_obj)

    def retry(c, message):
        attempts[c] = attempts.get(c, 0) + 1
        if attempts[c] > max_retries:
            raise ScanError(message.format(chunk=c, attempts=attempts[c])) from None
        pending.appendleft(c)

    try:
        while pending or inflight:
            broken = False
            while pending and len(inflight) < window:
                c = pending.popleft()
                try:
                    inflight[workers.executor.submit(run_chunk, job(c))] = c
                except BrokenProcessPool:  # the pool broke since the last round
                    retry(c, "the process pool kept breaking when chunk {chunk} was submitted; "
                             "giving up (finished chunks are stored; rerun to resume).")
                    broken = True
                    break
            finished = set()
            if inflight and not broken:
                finished, _ = cf.wait(list(inflight), timeout=1.0,
                                      return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                c = inflight.pop(fut)
                try:
                    result: ChunkOutput = fut.result()
                except BrokenProcessPool:
                    broken = True
                    retry(c, "chunk {chunk} broke its worker process {attempts} times; giving "
                             "up (finished chunks are stored; rerun to resume).")
                    continue
                except ScanError:
                    raise
                except Exception as e:
                    raise ScanError(
                        f"chunk {c} failed: {type(e).__name__}: {e} (finished chunks are stored; "
                        "rerun the same scan to resume)."
                    ) from e
                table = columns_to_table(result.columns)
                traj = result.trajectories
                traj = None if traj is None else columns_to_table(traj)
                store.write_chunk(
                    c, table, traj, spec_hash=spec_hash,
                    info={"device": result.device, "seconds": round(result.seconds, 4),
                          "counts": status_counts(result.columns["status"])},
                )
                computed.append(c)
                chunks_done += 1
                rows_done += table.num_rows
                rows_now += table.num_rows
                report(c, result.device)
            if broken:
                # Every future of a broken pool fails; resubmit them all on a fresh pool.
                for c in inflight.values():
                    pending.appendleft(c)
                inflight.clear()
                workers.rebuild()
    except BaseException:
        for fut in inflight:
            fut.cancel()
        workers.close(wait=False)
        raise
    workers.close(wait=True)
    return computed
