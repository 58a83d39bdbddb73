"""The worker protocol: the few things a backend's worker does for the pool, and what it reports.

The pool's fault handling (:mod:`nst_core.pool.slots` for the workers' lives,
:mod:`nst_core.pool.queueing` for the jobs) is written once, over this protocol, and knows
nothing about processes, pipes or Ray: like Ray's ``ActorPool`` it hands opaque work to opaque
workers. A backend only translates the protocol to its transport (``local``: spawned
processes and pipes; ``ray_pool`` and ``ray_worker``: Ray actors and object refs), so a lost
worker, a time limit, a cancel that does not stop and a worker that cannot start behave the
same on every backend.

Each worker lives in a :class:`Slot` (one per GPU or CPU worker); a slot holds one worker at a
time and gets a new one when its worker is lost or failed to start.

The pool calls (on its event loop):

* the backend's ``_start_worker(slot, previous) -> Worker``: start a worker for ``slot``
  (spawn a process, create an actor, or wait for Ray to restart ``previous``, the worker the
  slot lost). The new worker reports later, never from inside this call.
* :meth:`Worker.run`: give it a job; it streams the job's events back.
* :meth:`Worker.cancel`: ask the running job to stop between steps.
* :meth:`Worker.kill`: stop the worker now (a time limit, a cancel it ignored, a start time
  limit); it reports itself lost (or, before it was ready, a failed start) once it is gone.
* :meth:`Worker.stop`: at shutdown, end it for good, gently where the backend can.

The worker reports to the pool through :class:`WorkerReports`, which the pool implements
(reports from a worker that is no longer its slot's current one are ignored).
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .base import Event, JobHandle, JobSpec

__all__ = [
    "Worker", "WorkerReports", "Slot", "SlotState", "PoolJob", "StartRetry", "CANCELLED_REASON", "SHUTDOWN_REASON",
]

CANCELLED_REASON = "The job was cancelled."
SHUTDOWN_REASON = "The stylisation service is shutting down, so this job was stopped. Please try again later."

SlotState = Literal[
    "starting",  # its worker is starting (or being restarted) and not ready yet
    "idle",  # its worker is ready and has no job
    "busy",  # its worker runs a job, or its job ended and it is not free yet
    "stopping",  # its worker was killed; waiting for it to be gone
    "waiting",  # no worker: the last one failed to start, the next try is due later
    "closed",  # the pool shut down
]


class Worker(abc.ABC):
    """One worker of a slot: a process, or one life of a Ray actor. Backends subclass it."""

    def __init__(self, slot: "Slot") -> None:
        self.slot = slot
        self.pid: int | None = None  # set by the pool when the worker reports ready
        self.node: str | None = None  # the Ray node id, where there is one

    @abc.abstractmethod
    def run(self, job: "PoolJob") -> None:
        """Start ``job`` (``job.spec`` as attempt ``job.attempt``); report its events with ``job.seq``."""

    @abc.abstractmethod
    def cancel(self, job: "PoolJob") -> None:
        """Ask the worker to stop ``job`` between steps; it ends with ``Failed(kind="cancelled")``."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the worker now, whatever it is doing; report it lost once it is gone."""

    def stop(self) -> None:
        """At shutdown: end the worker for good and report it lost once gone (by default: kill it)."""
        self.kill()


class WorkerReports(Protocol):
    """What a worker tells its pool, on the pool's event loop. The pool implements it.

    A worker holds its pool only as this, so a backend's worker module never depends on the
    pool module that creates its workers.
    """

    @property
    def closed(self) -> bool:
        """The pool is shutting down (or shut down): a worker killed now is not replaced, so it ends for good."""

    def worker_ready(self, worker: Worker, pid: int | None = None, node: str | None = None) -> None:
        """``worker`` is warm and can take jobs (``node``: its Ray node id, where there is one)."""

    def worker_start_failed(self, worker: Worker, reason: str) -> None:
        """``worker`` could not start and is gone."""

    def job_event(self, worker: Worker, seq: int, event: Event) -> None:
        """An event of the job ``worker`` runs under dispatch ``seq``; a terminal event ends the job."""

    def worker_idle(self, worker: Worker) -> None:
        """After its job's terminal event, ``worker`` is free for the next job."""

    def worker_lost(self, worker: Worker, why: str) -> None:
        """``worker``'s process or actor is gone; ``why`` is a short phrase such as "killed by SIGKILL"
        that ends up in the job's message."""


@dataclass(eq=False)
class PoolJob:
    """A job inside a pool: its handle, its limits and where it runs now."""

    spec: JobSpec
    handle: JobHandle
    retries: int
    timeout_s: float | None
    state: Literal["queued", "running", "done"] = "queued"
    attempt: int = 0  # dispatches so far
    seq: int = 0  # id of the current dispatch; stale reports carry an older one
    cancel_requested: bool = False
    slot: "Slot | None" = None  # while running
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def clear_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


@dataclass(eq=False)
class Slot:
    """A place for one worker (a GPU, or one of N CPU workers), and the state of its worker."""

    index: int
    name: str  # "gpu0", "cpu1", ...
    state: SlotState = "starting"
    worker: Worker | None = None
    job: PoolJob | None = None  # the job its worker runs (None once that job ended)
    seq: int = 0  # the dispatch its worker runs, or ran last
    was_ready: bool = False  # its current worker became ready
    restarting: bool = False  # its current worker replaces one that was lost
    stop_reason: str | None = None  # why the pool killed its worker while it was starting
    start_timer: asyncio.TimerHandle | None = None  # the worker's start time limit
    settle_timer: asyncio.TimerHandle | None = None  # it must stop its job (be idle) by then
    first: asyncio.Future | None = None  # the first start's outcome (None: ready; else why not)
    vacated: asyncio.Future | None = None  # at shutdown: set once its worker is gone

    @property
    def live(self) -> bool:
        return self.state in ("idle", "busy")


@dataclass(eq=False)
class StartRetry:
    """A slot whose worker failed to start, until one starts there again."""

    failures: int = 0  # failed starts in a row
    timer: asyncio.TimerHandle | None = None  # the next attempt, while it is waited for
