"""The pool's job handling, written once for every backend: the line, dispatch and faults.

:class:`QueueingPool` is what a backend subclasses. With the slots and workers' lives of
:class:`~nst_core.pool.slots.SlotPool` below it, it implements
:class:`~nst_core.pool.base.WorkerPool` over the worker protocol of
:mod:`nst_core.pool.protocol`, so a backend only translates that protocol to its transport
(``LocalPool``: processes and pipes; ``RayPool``: Ray actors) and the faults are handled the
same way everywhere. This module owns what happens to jobs:

* admission (``submit``), the pool's own first-in-first-out line, ``free_slots``, ``stats``
  and exactly one terminal event per job;
* dispatching queued jobs to idle workers, lowest slot first (so runs are repeatable);
* a job's time limit: the job fails and its worker is killed (a step cannot be interrupted
  any other way), then replaced;
* cancel: a queued job ends at once; a running one is asked to stop between steps, and if it
  has not within ``cancel_grace_s`` it ends anyway and its worker is killed. A worker that is
  not free again within that grace after its job ended (a cancel the job thread ignores, an
  error in the transport) is killed too;
* a worker lost mid-job: the job runs again on another worker while it has retries left
  (``Retrying``), else ends with ``Failed(kind="worker_died")``;
* where capacity may never come back (``no_capacity_timeout_s``, e.g. a Ray cluster that lost
  its nodes): failing the queued jobs once no worker has been live for that long;
* the shutdown sequence (drain, end what is left, stop the workers).

A backend implements ``capacity``, ``_open`` (connect and plan: the names of the first
slots) and ``_start_worker`` (a :class:`~nst_core.pool.protocol.Worker` for a slot), and may
override ``_close``, ``_on_started``, ``_none_ready_reason`` and ``_waiting_reason``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from ..errors import ParamsError
from ..params import StylizeParams
from .base import (
    Event, Failed, Finished, JobHandle, JobSpec, PoolClosed, PoolError, PoolStats, Queued, Retrying, TerminalEvent,
)
from .protocol import CANCELLED_REASON, SHUTDOWN_REASON, PoolJob, Slot, Worker
from .slots import SlotPool

__all__ = ["QueueingPool"]

log = logging.getLogger(__name__)


class QueueingPool(SlotPool):
    """A :class:`WorkerPool` over the worker protocol, with its own line of admitted jobs.

    What every worker starts with (``_worker_config``, checked here once rather than in each
    worker): ``warm_params``, ``StylizeParams.to_dict()`` used to load and trace the model at
    start (jobs with another backbone, weights, layers or precision build theirs on first
    use); ``worker_init``, ``"module:function"`` called with each new Engine;
    ``progress_interval_s``, at most one progress event per interval, besides previews and
    the last step; ``oom_retries``, reruns at 0.75x the size after GPU out-of-memory.

    ``timeout_s`` (None: no limit) and ``retries`` (reruns of a job whose worker died) are the
    defaults for jobs that do not set their own (``JobSpec.timeout_s``, ``JobSpec.retries``);
    ``cancel_grace_s`` is how long a running job may take to honour a cancel before its
    worker is killed; ``no_capacity_timeout_s``: see the module docstring (None: never). The
    other arguments are :class:`~nst_core.pool.slots.SlotPool`'s.
    """

    def __init__(self, *, warm_params: dict[str, Any] | None, worker_init: str | None, progress_interval_s: float,
                 oom_retries: int, timeout_s: float | None, retries: int, cancel_grace_s: float,
                 max_start_backoff_s: float = 300.0, worker_start_timeout_s: float | None = None,
                 start_wait_s: float | None = None, no_capacity_timeout_s: float | None = None) -> None:
        if warm_params is not None:
            StylizeParams.from_dict(warm_params)  # fail here, not in every worker
        if retries < 0:
            raise ValueError("retries must not be negative")
        super().__init__(max_start_backoff_s=max_start_backoff_s, worker_start_timeout_s=worker_start_timeout_s,
                         start_wait_s=start_wait_s)
        self._worker_config: dict[str, Any] = {
            "warm_params": warm_params, "worker_init": worker_init,
            "progress_interval_s": progress_interval_s, "oom_retries": oom_retries,
        }
        self._timeout_s = timeout_s
        self._retries = retries
        self._cancel_grace_s = cancel_grace_s
        self._no_capacity_timeout_s = no_capacity_timeout_s
        self._no_capacity_timer: asyncio.TimerHandle | None = None
        self._queue: collections.deque[PoolJob] = collections.deque()
        self._jobs: dict[str, PoolJob] = {}
        self._seq = 0
        self._submitted = 0
        self._finished = 0
        self._failed: collections.Counter[str] = collections.Counter()
        self._retry_count = 0

    # ------------------------------------------------------------------ public API

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
        job = PoolJob(spec, handle, spec.retries if spec.retries is not None else self._retries, timeout)
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
            if self._no_capacity_timer is not None:
                self._no_capacity_timer.cancel()
            for job in list(self._jobs.values()):
                if job.slot is not None and job.slot.worker is not None:
                    job.slot.worker.cancel(job)  # it stops between steps; its worker is stopped next
                self._end_job(job, Failed(job.spec.job_id, SHUTDOWN_REASON, "shutdown"))
            self._queue.clear()
            try:
                await self._stop_workers()
            finally:
                await self._close()
        finally:
            self._closed.set_result(None)

    # ------------------------------------------------------------------ jobs

    def _pump(self) -> None:
        """Start queued jobs on idle workers (lowest slot first); watch for capacity that never comes."""
        if self._loop is None:
            return
        for slot in self._slots:
            if not self._queue:
                break
            if slot.state == "idle":
                self._dispatch(self._queue.popleft(), slot)
        if self._no_capacity_timeout_s is None:
            return
        if self._queue and not self._starting and not self._closing and not self.workers_alive:
            if self._no_capacity_timer is None:
                self._no_capacity_timer = self._loop.call_later(self._no_capacity_timeout_s, self._on_no_capacity)
        elif self._no_capacity_timer is not None:
            self._no_capacity_timer.cancel()
            self._no_capacity_timer = None

    def _dispatch(self, job: PoolJob, slot: Slot) -> None:
        assert self._loop is not None and slot.worker is not None
        self._seq += 1
        job.seq, job.attempt, job.state = self._seq, job.attempt + 1, "running"
        job.slot, slot.job, slot.seq, slot.state = slot, job, job.seq, "busy"
        if job.timeout_s:
            job.timers.append(self._loop.call_later(job.timeout_s, self._on_timeout, job, job.seq))
        slot.worker.run(job)

    def _current(self, job: PoolJob, seq: int) -> bool:
        """``job`` is still running under dispatch ``seq`` (not ended, not re-dispatched)."""
        return job.state == "running" and job.seq == seq

    def job_event(self, worker: Worker, seq: int, event: Event) -> None:
        """A report (:class:`~nst_core.pool.protocol.WorkerReports`): an event of ``worker``'s job."""
        job = worker.slot.job
        if worker.slot.worker is not worker or job is None or not self._current(job, seq):
            return  # from a job that already ended (cancelled, timed out, shut down)
        if isinstance(event, Retrying):
            self._retry_count += 1
        if isinstance(event, (Finished, Failed)):
            self._end_job(job, event)
        else:
            job.handle.deliver(event)

    def worker_idle(self, worker: Worker) -> None:
        """A report: ``worker`` is free for the next job."""
        slot = worker.slot
        if slot.worker is not worker or slot.state != "busy" or slot.job is not None:
            return
        if slot.settle_timer is not None:
            slot.settle_timer.cancel()
            slot.settle_timer = None
        slot.state = "idle"
        self._pump()

    def _settle_by(self, slot: Slot) -> None:
        """``slot``'s worker must be free (its job stopped) within ``cancel_grace_s``, else it is killed."""
        assert self._loop is not None
        if slot.settle_timer is None:
            slot.settle_timer = self._loop.call_later(self._cancel_grace_s, self._on_settle_overdue, slot,
                                                      slot.worker, slot.seq)

    def _on_settle_overdue(self, slot: Slot, worker: Worker, seq: int) -> None:
        if slot.worker is not worker or slot.state != "busy" or slot.seq != seq:
            return
        slot.settle_timer = None
        job = slot.job
        if job is None:
            log.warning("worker %s did not stop its job within %.1f s; replacing it", slot.name, self._cancel_grace_s)
            self._kill(slot)
            return
        log.warning("job %s ignored its cancel for %.1f s; replacing its worker", job.spec.job_id,
                    self._cancel_grace_s)
        self._kill(slot)
        self._end_job(job, Failed(job.spec.job_id, CANCELLED_REASON, "cancelled"))

    def _on_timeout(self, job: PoolJob, seq: int) -> None:
        if not self._current(job, seq):
            return
        if job.slot is not None and job.slot.job is job:
            self._kill(job.slot)  # a stuck or slow step cannot be interrupted any other way
        self._end_job(job, Failed(job.spec.job_id, f"The job timed out after {job.timeout_s:g} seconds.", "timeout"))

    def _cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state == "done" or job.cancel_requested:
            return
        job.cancel_requested = True
        if job.state == "queued":
            self._end_job(job, Failed(job_id, CANCELLED_REASON, "cancelled"))
            return
        slot = job.slot
        if slot is not None and slot.worker is not None:
            slot.worker.cancel(job)
            self._settle_by(slot)

    def _on_job_lost(self, job: PoolJob, why: str) -> None:
        """The worker running ``job`` is gone: run the job again if allowed, else fail it."""
        if job.state != "running":
            return
        job.clear_timers()
        job.slot = None
        if job.cancel_requested:
            self._end_job(job, Failed(job.spec.job_id, CANCELLED_REASON, "cancelled"))
        elif job.attempt <= job.retries and not self._closing:
            self._retry_count += 1
            job.state = "queued"
            job.handle.deliver(Retrying(job.spec.job_id, "worker_died",
                                        f"The worker running this job stopped ({why}); trying again."))
            self._queue.appendleft(job)  # it was admitted first: keep its place
        else:
            self._end_job(job, Failed(
                job.spec.job_id, f"The worker running this job stopped unexpectedly ({why}). Please try again.",
                "worker_died"))

    def _on_no_capacity(self) -> None:
        self._no_capacity_timer = None
        if self.workers_alive or self._closing:
            self._pump()
            return
        lost = sum(1 for slot in self._slots if not slot.live)
        why = (f"none could start: {self._start_error}" if self._start_retries and self._start_error
               else f"{lost} are being restarted or cannot be placed")
        log.error("no live worker for %.0f s; failing %d queued job(s)", self._no_capacity_timeout_s, len(self._queue))
        while self._queue:
            job = self._queue[0]
            if job.attempt:
                self._end_job(job, Failed(
                    job.spec.job_id, f"The worker running this job was lost and no other stylisation worker is "
                                     f"available{self._where}. Please try again later.", "worker_died"))
            else:
                self._end_job(job, Failed(
                    job.spec.job_id, f"No stylisation worker is available{self._where} right now ({why}). "
                                     "Please try again later.", "error"))

    def _end_job(self, job: PoolJob, terminal: TerminalEvent) -> None:
        if job.state == "done":
            return
        if job.state == "queued":
            try:
                self._queue.remove(job)
            except ValueError:
                pass
        slot, job.slot = job.slot, None
        if slot is not None and slot.job is job:
            slot.job = None  # the slot stays busy until its worker reports itself free
            if slot.state == "busy" and not self._closing:
                self._settle_by(slot)
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

