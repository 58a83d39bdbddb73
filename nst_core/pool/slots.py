"""The slots of a pool and their workers' lives, the same for every backend.

:class:`SlotPool` is the lower half of :class:`~nst_core.pool.queueing.QueueingPool`: it
keeps one :class:`~nst_core.pool.protocol.Slot` per GPU or CPU worker and drives each slot's
worker through the worker protocol (:mod:`nst_core.pool.protocol`), knowing nothing about
processes or Ray:

* ``start`` plans the slots (the backend's ``_open``), starts a worker in each and waits for
  each first outcome;
* a worker that fails to start (its own error, killed while loading, past its start time
  limit) is tried again after 2, 4, 8 ... s up to ``max_start_backoff_s``, for as long as the
  pool is open, and ``unavailable_reason`` says why no worker runs;
* a worker that is lost after it was ready is replaced at once (``previous`` tells the backend
  which worker it replaces: Ray restarts the same actor); its job goes to ``_on_job_lost``;
* ``_kill`` stops a worker now (its replacement follows its loss); at shutdown
  ``_stop_workers`` stops every worker, kills what does not stop in time and waits until each
  is gone.

The workers' reports about their lives (``worker_ready``, ``worker_start_failed``,
``worker_lost`` of :class:`~nst_core.pool.protocol.WorkerReports`) are handled here, those
about jobs (``job_event``, ``worker_idle``) in ``queueing``.

What happens to jobs (the line, dispatch, time limits, cancel, retries) is ``queueing``'s part.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math

from .base import PoolError, WorkerPool, WorkerStartError
from .protocol import PoolJob, Slot, StartRetry, Worker

__all__ = ["SlotPool"]

log = logging.getLogger(__name__)


class SlotPool(WorkerPool):
    """Slots, each with a worker that is started, replaced and stopped through the worker protocol.

    ``max_start_backoff_s`` caps the delay before a slot whose worker failed to start tries
    again. ``worker_start_timeout_s``: a worker not ready by then is killed (a failed start).
    ``start_wait_s``: the longest ``start`` waits for the first workers (None: until each is
    ready or failed).
    """

    _where = ""  # where workers run, for messages: e.g. " on the Ray cluster"
    _stop_grace_s = 10.0  # shutdown: how long workers may take to stop before they are killed
    _reap_wait_s = 15.0  # and then how long killed ones may take to be gone

    def __init__(self, *, max_start_backoff_s: float = 300.0, worker_start_timeout_s: float | None = None,
                 start_wait_s: float | None = None) -> None:
        if not max_start_backoff_s > 0:
            raise ValueError("max_start_backoff_s must be positive")
        self._max_start_backoff_s = max_start_backoff_s
        self._worker_start_timeout_s = worker_start_timeout_s
        self._start_wait_s = start_wait_s
        self._slots: list[Slot] = []
        self._start_retries: dict[int, StartRetry] = {}  # by slot index
        self._start_error: str | None = None  # why the latest failed start failed, while any slot is failing
        self._start_failure: str | None = None  # set when start() gave up and shut the pool down
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting = False
        self._closing = False
        self._closed: asyncio.Future | None = None
        self._restarts = 0

    # ------------------------------------------------------------------ the backend's part

    @abc.abstractmethod
    async def _open(self) -> list[str]:
        """Get ready to start workers (connect, plan); return the names of the first slots.

        An exception here is not retried: ``start`` shuts the pool down and raises it.
        """

    @abc.abstractmethod
    def _start_worker(self, slot: Slot, previous: Worker | None) -> Worker:
        """Start a worker for ``slot`` (``previous``: the worker it lost, or None); it reports later."""

    async def _close(self) -> None:
        """At shutdown, once every worker is gone: release what the backend holds."""

    def _on_started(self) -> None:
        """``start`` has its first workers (or gave up waiting for them); the pool stays open."""

    async def _none_ready_reason(self) -> str:
        """Why ``start`` failed when no worker was ready or failed within ``start_wait_s``."""
        return f"No worker became ready within {self._start_wait_s:g} seconds; the pool keeps waiting."

    def _waiting_reason(self) -> str:
        """``unavailable_reason`` while no worker is ready and none has failed to start."""
        return "workers are starting"


    # ------------------------------------------------------------------ the job side (queueing)

    @abc.abstractmethod
    def _pump(self) -> None:
        """Start queued jobs on idle workers."""

    @abc.abstractmethod
    def _on_job_lost(self, job: PoolJob, why: str) -> None:
        """The worker running ``job`` is gone."""

    # ------------------------------------------------------------------ public API

    @property
    def workers_alive(self) -> int:
        return sum(1 for slot in self._slots if slot.live)

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
    def closed(self) -> bool:
        return self._closing

    @property
    def start_failing(self) -> bool:
        if self._start_failure is not None:
            return True
        return not self._closing and self._loop is not None and self.workers_alive == 0 and bool(self._start_retries)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every slot has a ready worker (none starting, being replaced or waiting to start)."""
        async def poll() -> None:
            while not self._slots or not all(slot.live for slot in self._slots):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    async def start(self) -> None:
        if self._loop is not None:
            raise PoolError("the pool was already started")
        self._loop = asyncio.get_running_loop()
        self._starting = True
        firsts: list[asyncio.Future] = []
        try:
            for name in await self._open():
                firsts.append(self._add_slot(name, first=True).first)  # type: ignore[arg-type]
            if firsts:
                await asyncio.wait(firsts, timeout=self._start_wait_s)
        except BaseException as exc:
            self._starting = False
            if isinstance(exc, Exception):  # not retried: say why the pool is down
                self._start_failure = str(exc) if isinstance(exc, WorkerStartError) else \
                    f"the pool could not start ({type(exc).__name__}: {exc})"
            await self.shutdown()
            raise
        self._starting = False
        if not self._closing:
            self._on_started()
        errors = [f.result() for f in firsts if f.done() and f.result() is not None]
        if not self.workers_alive and not any(f.done() and f.result() is None for f in firsts):
            if errors:
                more = "" if self._closing else "; the pool keeps trying to start one"
                raise WorkerStartError(f"A stylisation worker could not start{self._where}: {errors[0]}{more}")
            raise WorkerStartError(await self._none_ready_reason())
        if errors:
            log.warning("%d of %d workers could not start, going on with the others: %s", len(errors), len(firsts),
                        errors[0])
        waiting = [slot.name for slot in self._slots if slot.first is not None and not slot.first.done()]
        if waiting:
            log.warning("%d worker(s) not ready after %.0f s, going on without them for now: %s", len(waiting),
                        self._start_wait_s, ", ".join(waiting))
        self._pump()

    # ------------------------------------------------------------------ slots and their workers

    def _add_slot(self, name: str, first: bool = False) -> Slot:
        assert self._loop is not None
        slot = Slot(len(self._slots), name, first=self._loop.create_future() if first else None)
        self._slots.append(slot)
        self._launch(slot, None)
        return slot

    def _launch(self, slot: Slot, previous: Worker | None) -> None:
        """Start a worker in ``slot``; ``previous`` is the one it lost (None after a failed start)."""
        assert self._loop is not None
        slot.state, slot.was_ready, slot.restarting, slot.stop_reason = "starting", False, previous is not None, None
        try:
            worker = self._start_worker(slot, previous)
        except Exception as exc:  # noqa: BLE001 - e.g. no process or actor could be created: try again later
            self._start_failed(slot, f"it could not be started ({type(exc).__name__}: {exc})")
            return
        slot.worker = worker
        if self._worker_start_timeout_s is not None:
            slot.start_timer = self._loop.call_later(self._worker_start_timeout_s, self._on_start_timeout, slot, worker)

    def _vacate(self, slot: Slot) -> None:
        """``slot``'s worker is gone."""
        for timer in (slot.start_timer, slot.settle_timer):
            if timer is not None:
                timer.cancel()
        slot.worker = slot.job = slot.start_timer = slot.settle_timer = None
        slot.state = "closed" if self._closing else "waiting"
        if slot.vacated is not None and not slot.vacated.done():
            slot.vacated.set_result(None)

    def _kill(self, slot: Slot) -> None:
        """Kill ``slot``'s worker now; it is replaced once it reports itself gone."""
        worker = slot.worker
        if worker is None or slot.state == "stopping":
            return
        for timer in (slot.start_timer, slot.settle_timer):
            if timer is not None:
                timer.cancel()
        slot.state, slot.job, slot.start_timer, slot.settle_timer = "stopping", None, None, None
        worker.kill()

    def _on_start_timeout(self, slot: Slot, worker: Worker) -> None:
        if slot.worker is worker and slot.state == "starting":
            slot.stop_reason = f"it did not become ready within {self._worker_start_timeout_s:g} seconds"
            self._kill(slot)

    def worker_ready(self, worker: Worker, pid: int | None = None, node: str | None = None) -> None:
        """A report (:class:`~nst_core.pool.protocol.WorkerReports`): ``worker`` is warm."""
        slot = worker.slot
        if slot.worker is not worker or slot.state != "starting":
            return  # killed meanwhile (shutdown, start time limit)
        worker.pid, worker.node = pid, node
        if slot.start_timer is not None:
            slot.start_timer.cancel()
            slot.start_timer = None
        slot.state, slot.was_ready = "idle", True
        retry = self._start_retries.pop(slot.index, None)  # its next failure starts the backoff afresh
        if retry is not None and retry.timer is not None:
            retry.timer.cancel()
        if not self._start_retries:
            self._start_error = None
        if slot.first is not None and not slot.first.done():
            slot.first.set_result(None)
        log.info("worker ready", extra={"worker": slot.name, "pid": pid, "node": node})
        self._pump()

    def worker_start_failed(self, worker: Worker, reason: str) -> None:
        """A report: ``worker`` could not start and is gone."""
        slot = worker.slot
        if slot.worker is worker:
            self._start_failed(slot, slot.stop_reason or reason)
            self._pump()

    def _start_failed(self, slot: Slot, reason: str) -> None:
        """``slot``'s worker failed to start (or died starting): try again after a backoff."""
        assert self._loop is not None
        self._vacate(slot)
        if slot.first is not None and not slot.first.done():
            slot.first.set_result(reason)
        retry = self._start_retries.setdefault(slot.index, StartRetry())
        retry.failures += 1
        self._start_error = reason
        if self._closing:
            return
        delay = min(self._max_start_backoff_s, 2.0 ** min(retry.failures, 30))
        log.warning("worker %s failed to start (%d in a row): %s; trying again in %g s", slot.name, retry.failures,
                    reason, delay)
        if retry.timer is not None:
            retry.timer.cancel()
        retry.timer = self._loop.call_later(delay, self._retry_start, slot)

    def _retry_start(self, slot: Slot) -> None:
        retry = self._start_retries.get(slot.index)
        if retry is not None:
            retry.timer = None
        if not self._closing and slot.worker is None:
            self._restarts += 1
            self._launch(slot, None)

    def worker_lost(self, worker: Worker, why: str) -> None:
        """A report: ``worker`` is gone. Retry or fail its job, and put a new worker in its slot."""
        slot = worker.slot
        if slot.worker is not worker:
            return
        if not slot.was_ready:
            self.worker_start_failed(worker, why)
            return
        job = slot.job
        self._vacate(slot)
        if not self._closing:
            log.warning("worker lost", extra={"worker": slot.name, "pid": worker.pid, "why": why})
        if job is not None:
            self._on_job_lost(job, why)
        if not self._closing:
            self._restarts += 1
            self._launch(slot, worker)
        self._pump()

    async def _stop_workers(self) -> None:
        """At shutdown: stop every worker, kill what has not stopped in time, wait until each is gone."""
        assert self._loop is not None
        vacated = []
        for slot in self._slots:
            if slot.worker is None:
                slot.state = "closed"
                continue
            slot.vacated = self._loop.create_future()
            vacated.append(slot.vacated)
            if slot.state == "stopping":
                continue  # killed already
            if slot.was_ready:
                slot.worker.stop()
            else:
                self._kill(slot)  # still loading: nothing to wait for
        if vacated:
            _, pending = await asyncio.wait(vacated, timeout=self._stop_grace_s)
            if pending:
                for slot in self._slots:
                    if slot.worker is not None:
                        slot.worker.kill()
                _, pending = await asyncio.wait(pending, timeout=self._reap_wait_s)
            if pending:
                log.warning("shutdown: %d worker(s) were not confirmed gone", len(pending))
        for slot in self._slots:
            self._vacate(slot)
            if slot.first is not None and not slot.first.done():
                slot.first.set_result("the pool was shut down")

