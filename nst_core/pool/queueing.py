"""What every backend shares: the job record, the pool's own waiting line and its bookkeeping.

:class:`QueueingPool` implements the parts of :class:`~nst_core.pool.base.WorkerPool` that
do not depend on where workers run: admission (``submit``), ``free_slots`` and ``stats``,
exactly one terminal event per job, cancel of a waiting job, the shutdown sequence, and
retrying workers that fail to start (with a growing delay, never giving up while the pool is
open) with ``unavailable_reason``. A backend (``LocalPool``, ``RayPool``) adds its workers: it
fills the hooks ``_pump`` (start queued jobs on idle workers), ``_cancel_running``,
``_stop_running``, ``_close_workers`` and ``_respawn``, and reports each worker slot's failed
start with ``_start_failed`` and its success with ``_start_succeeded``.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ParamsError
from ..params import StylizeParams
from .base import (
    Event, Failed, Finished, JobHandle, JobSpec, PoolClosed, PoolError, PoolStats, Queued, TerminalEvent, WorkerPool,
)

__all__ = ["PoolJob", "QueueingPool", "StartRetry", "CANCELLED_REASON", "SHUTDOWN_REASON"]

log = logging.getLogger(__name__)

CANCELLED_REASON = "The job was cancelled."
SHUTDOWN_REASON = "The stylisation service is shutting down, so this job was stopped. Please try again later."


@dataclass(eq=False)
class PoolJob:
    """A job inside a pool; backends subclass it to add where it runs."""

    spec: JobSpec
    handle: JobHandle
    retries: int
    timeout_s: float | None
    state: Literal["queued", "running", "done"] = "queued"
    attempt: int = 0  # dispatches so far
    seq: int = 0  # id of the current dispatch; stale messages and callbacks carry an older one
    cancel_requested: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def clear_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


@dataclass(eq=False)
class StartRetry:
    """A worker slot whose worker failed to start, until one starts there again."""

    failures: int = 0  # failed starts in a row
    reason: str = ""  # why the latest one failed
    timer: asyncio.TimerHandle | None = None  # the next attempt, while it is waited for


class QueueingPool(WorkerPool):
    """A :class:`WorkerPool` with its own first-in-first-out line of admitted jobs.

    ``max_start_backoff_s`` caps the delay before a worker slot whose worker failed to start
    tries again: 2 s after the first failure, then 4, 8 ... s up to the cap.
    """

    _job_class: type[PoolJob] = PoolJob

    def __init__(self, *, timeout_s: float | None, retries: int, cancel_grace_s: float,
                 max_start_backoff_s: float = 300.0) -> None:
        if retries < 0:
            raise ValueError("retries must not be negative")
        if not max_start_backoff_s > 0:
            raise ValueError("max_start_backoff_s must be positive")
        self._timeout_s = timeout_s
        self._retries = retries
        self._cancel_grace_s = cancel_grace_s
        self._max_start_backoff_s = max_start_backoff_s
        self._start_retries: dict[int, StartRetry] = {}  # by worker slot
        self._start_error: str | None = None  # why the latest failed start failed, while any slot is failing
        self._start_failure: str | None = None  # set when start() gave up and shut the pool down
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: collections.deque[PoolJob] = collections.deque()
        self._jobs: dict[str, PoolJob] = {}
        self._seq = 0
        self._starting = False
        self._closing = False
        self._closed: asyncio.Future | None = None
        self._restarts = 0
        self._submitted = 0
        self._finished = 0
        self._failed: collections.Counter[str] = collections.Counter()
        self._retry_count = 0

    # ------------------------------------------------------------------ the backend's part

    @abc.abstractmethod
    def _pump(self) -> None:
        """Start queued jobs on idle workers."""

    @abc.abstractmethod
    def _cancel_running(self, job: PoolJob) -> None:
        """Ask the worker running ``job`` to stop it (between steps)."""

    @abc.abstractmethod
    def _on_cancel_stuck(self, job: PoolJob, seq: int) -> None:
        """``job`` did not stop within ``cancel_grace_s`` of its cancel."""

    @abc.abstractmethod
    def _stop_running(self, job: PoolJob) -> None:
        """At shutdown: let the worker running ``job`` stop it (its terminal event is sent here)."""

    @abc.abstractmethod
    async def _close_workers(self) -> None:
        """At shutdown, after every job has ended: stop every worker; return once none is left."""

    @abc.abstractmethod
    def _respawn(self, index: int) -> bool:
        """Start a new worker in slot ``index`` after its start-up backoff; False if none is needed now."""

    # ------------------------------------------------------------------ shared

    @property
    def free_slots(self) -> int:
        """``capacity`` minus the jobs held (running, or waiting in the pool)."""
        if self._closing or self._loop is None:
            return 0
        return max(0, self.capacity - len(self._jobs))

    def stats(self) -> PoolStats:
        running = sum(1 for j in self._jobs.values() if j.state == "running")
        return PoolStats(
            capacity=self.capacity, free_slots=self.free_slots, running=running, queued=len(self._queue),
            workers_alive=self.workers_alive, restarts=self._restarts, submitted=self._submitted,
            finished=self._finished, failed=dict(self._failed), retries=self._retry_count,
        )

    @property
    def unavailable_reason(self) -> str | None:
        if self._closing:
            if self._start_failure is not None:
                return self._start_failure
            done = self._closed is None or self._closed.done()
            return "the pool has been shut down" if done else "the pool is shutting down"
        if self._loop is None:
            return "the pool has not been started"
        if self.workers_alive > 0:
            return None
        if self._start_retries and self._start_error is not None:
            due = [r.timer.when() for r in self._start_retries.values() if r.timer is not None]
            if not due:
                return f"no worker could start: {self._start_error}; trying again now"
            wait = max(0, math.ceil(min(due) - self._loop.time()))
            return f"no worker could start: {self._start_error}; retrying in {wait} s"
        return self._waiting_reason()

    @property
    def start_failing(self) -> bool:
        if self._start_failure is not None:
            return True
        return not self._closing and self._loop is not None and self.workers_alive == 0 and bool(self._start_retries)

    def _waiting_reason(self) -> str:
        """``unavailable_reason`` while no worker is ready and none has failed to start."""
        return "workers are starting"

    def submit(self, spec: JobSpec) -> JobHandle:
        if self._loop is None:
            raise PoolError("start() the pool before submitting jobs")
        if self._closing:
            raise PoolClosed("the pool is shutting down")
        if spec.job_id in self._jobs:
            raise PoolError(f"job {spec.job_id} is already in the pool")
        handle = JobHandle(spec.job_id, self._cancel)
        self._submitted += 1
        handle.deliver(Queued(spec.job_id, len(self._queue)))
        try:
            StylizeParams.from_dict(spec.params)  # cheap, and saves a trip to a worker
        except (ParamsError, TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, ParamsError) else f"Invalid parameters: {exc}."
            failed = Failed(spec.job_id, reason, "invalid_input")
            self._count_terminal(failed)
            handle.deliver(failed)
            return handle
        timeout = spec.timeout_s if spec.timeout_s is not None else self._timeout_s
        job = self._job_class(spec, handle, spec.retries if spec.retries is not None else self._retries, timeout)
        self._jobs[spec.job_id] = job
        self._queue.append(job)
        self._pump()
        return handle

    async def shutdown(self, drain: bool = False, timeout: float = 30.0) -> None:
        if self._loop is None:
            self._closing = True
            return
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = self._loop.create_future()
        self._closing = True
        for retry in self._start_retries.values():  # no new worker from now on
            if retry.timer is not None:
                retry.timer.cancel()
                retry.timer = None
        try:
            if drain and self._jobs:
                try:
                    await asyncio.wait_for(asyncio.gather(*(j.handle.wait() for j in self._jobs.values())), timeout)
                except asyncio.TimeoutError:
                    log.warning("shutdown: %d job(s) did not finish in %.0f s; cancelling", len(self._jobs), timeout)
            for job in list(self._jobs.values()):
                if job.state == "running":
                    self._stop_running(job)
                self._end_job(job, Failed(job.spec.job_id, SHUTDOWN_REASON, "shutdown"))
            self._queue.clear()
            await self._close_workers()
        finally:
            self._closed.set_result(None)

    # ------------------------------------------------------------------ workers that fail to start

    def _start_failed(self, index: int, name: str, reason: str) -> None:
        """The worker of slot ``index`` failed to start (or died starting): try again after a backoff."""
        assert self._loop is not None
        retry = self._start_retries.setdefault(index, StartRetry())
        retry.failures += 1
        retry.reason = self._start_error = reason
        if self._closing:
            return
        delay = min(self._max_start_backoff_s, 2.0 ** min(retry.failures, 30))
        log.warning("worker %s failed to start (%d in a row): %s; trying again in %g s", name, retry.failures,
                    reason, delay)
        if retry.timer is not None:
            retry.timer.cancel()
        retry.timer = self._loop.call_later(delay, self._retry_start, index)

    def _retry_start(self, index: int) -> None:
        retry = self._start_retries.get(index)
        if retry is not None:
            retry.timer = None
        if not self._closing and self._respawn(index):
            self._restarts += 1

    def _start_succeeded(self, index: int) -> None:
        """A worker of slot ``index`` became ready: its next failure starts the backoff afresh."""
        retry = self._start_retries.pop(index, None)
        if retry is not None and retry.timer is not None:
            retry.timer.cancel()
        if not self._start_retries:
            self._start_error = None

    def _cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state == "done" or job.cancel_requested:
            return
        job.cancel_requested = True
        if job.state == "queued":
            self._end_job(job, Failed(job_id, CANCELLED_REASON, "cancelled"))
            return
        assert self._loop is not None
        self._cancel_running(job)
        job.timers.append(self._loop.call_later(self._cancel_grace_s, self._on_cancel_stuck, job, job.seq))

    def _next_dispatch(self, job: PoolJob) -> None:
        """Mark ``job`` running under a new dispatch id, with its time limit armed."""
        assert self._loop is not None
        self._seq += 1
        job.seq, job.attempt, job.state = self._seq, job.attempt + 1, "running"
        if job.timeout_s:
            job.timers.append(self._loop.call_later(job.timeout_s, self._on_timeout, job, job.seq))

    def _current(self, job: PoolJob, seq: int) -> bool:
        """``job`` is still running under dispatch ``seq`` (not ended, not re-dispatched)."""
        return job.state == "running" and job.seq == seq

    @abc.abstractmethod
    def _on_timeout(self, job: PoolJob, seq: int) -> None:
        """``job`` ran past its time limit under dispatch ``seq``."""

    def _end_job(self, job: PoolJob, terminal: TerminalEvent) -> None:
        if job.state == "done":
            return
        if job.state == "queued":
            try:
                self._queue.remove(job)
            except ValueError:
                pass
        job.clear_timers()
        job.state = "done"
        self._jobs.pop(job.spec.job_id, None)
        self._count_terminal(terminal)
        job.handle.deliver(terminal)

    def _count_terminal(self, terminal: Event) -> None:
        if isinstance(terminal, Finished):
            self._finished += 1
        elif isinstance(terminal, Failed):
            self._failed[terminal.kind] += 1
