"""The bot's own waiting line: fair between users, feeding the worker pool as slots free up.

No Discord here. :class:`FairLine` decides the order (round-robin between users, first come
first served per user); :class:`Scheduler` owns the jobs, admits or refuses them, hands
them to a :class:`~nst_core.pool.base.WorkerPool` whenever ``pool.free_slots > 0`` and
reports what happens to a :class:`JobListener` (the Discord side implements it).

Keeping the pool's own queue empty means the positions the line reports are exact.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import math
import secrets
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, Iterable, Protocol, TypeVar

from nst_core.pool.base import (
    Failed, Finished, JobHandle, JobSpec, PoolError, Progress, Queued, Retrying, Started, WorkerPool,
)

__all__ = [
    "Job", "JobStatus", "FairLine", "Scheduler", "JobListener", "Refused", "UserLimitReached", "LineFull",
    "NotAccepting", "LineStatus", "DurationStats", "estimate_start", "new_job_id",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


def new_job_id() -> str:
    """Short enough to type in ``/stylebot cancel``, random enough not to guess."""
    return secrets.token_hex(5)


class JobStatus(str, enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # the bot stopped first; the job store keeps it open for the next start

    @property
    def ended(self) -> bool:
        return self in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(eq=False)
class Job:
    """One /stylize request, as plain data (:mod:`bot.store` keeps it in SQLite).

    ``token_created_at`` is when Discord created the interaction (epoch seconds): its token,
    needed to edit the reply, expires a fixed time after that.
    """

    job_id: str
    user_id: int
    channel_id: int
    guild_id: int | None
    application_id: int
    interaction_token: str
    token_created_at: float
    upload_limit: int  # bytes a reply to the interaction may carry (interaction.filesize_limit)
    params: dict[str, Any]  # StylizeParams.to_dict()
    content: bytes
    style: bytes
    style_label: str  # the style's file name or library name, for messages
    preset: str
    created_at: float = field(default_factory=time.time)
    status: JobStatus = JobStatus.WAITING
    status_message_id: int | None = None
    started_at: float | None = None  # start of the current attempt
    finished_at: float | None = None
    worker: str | None = None
    progress: tuple[int, int] | None = None  # (step, total) of the latest progress event
    cancelled_by: int | None = None
    failure: str | None = None
    seq: int | None = None  # acceptance order, set by the store
    attempts: int = 0  # starts on a worker (a retry after a crash, or a restart, adds one)
    restarts: int = 0  # times a restart of the bot put it back in line

    def spec(self, *, max_pixels: int, timeout_s: float | None = None) -> JobSpec:
        return JobSpec(content=self.content, style=self.style, params=self.params, job_id=self.job_id,
                       max_pixels=max_pixels, timeout_s=timeout_s)


# --------------------------------------------------------------------------- refusals


class Refused(Exception):
    """A job the line will not take; ``str()`` is a polite sentence for the user."""


class UserLimitReached(Refused):
    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        jobs = "job" if waiting == 1 else "jobs"
        super().__init__(f"You already have {waiting} {jobs} waiting. Please wait until one of them starts "
                         "(or cancel one) before adding another.")


class LineFull(Refused):
    def __init__(self, waiting: int, eta_s: float | None) -> None:
        self.waiting, self.eta_s = waiting, eta_s
        minutes = max(1, math.ceil(eta_s / 60)) if eta_s is not None else 0
        work = f", about {minutes} minute{'s' if minutes > 1 else ''} of work" if eta_s is not None else ""
        super().__init__(f"The queue is full ({waiting} jobs waiting{work}). Please try again in a little while.")


class NotAccepting(Refused):
    def __init__(self, reason: str = "The bot is shutting down and is not taking new jobs. "
                                     "Please try again in a few minutes.") -> None:
        super().__init__(reason)


# --------------------------------------------------------------------------- the fair line


class FairLine(Generic[T]):
    """Round-robin between users, first come first served per user.

    Think of rounds: in each round every user with waiting items gets one turn, in the
    order their items arrived. A user's k-th waiting item is in round ``base + k`` where
    ``base`` is the round being served now, or the one after the user's last served item
    if that was in this round. A newcomer therefore joins the current round and goes before
    the second item of a user who was already served in it. Items are taken in (round,
    arrival) order; positions are computed from that same order, so they are exact.

    Items put back after a restart (:meth:`push_front`) form a front segment, taken first and
    in the order given, so the line resumes as it was.
    """

    def __init__(self) -> None:
        self._queues: dict[Hashable, collections.deque[tuple[int, T]]] = {}
        self._served: dict[Hashable, int] = {}  # user -> round of their last item taken
        self._round = 0
        self._seq = itertools.count()
        self._front: collections.deque[tuple[Hashable, T]] = collections.deque()  # see push_front

    def __len__(self) -> int:
        return len(self._front) + sum(len(q) for q in self._queues.values())

    def __contains__(self, item: object) -> bool:
        return any(it is item for _, it in self._front) or any(
            it is item for q in self._queues.values() for _, it in q)

    def push(self, user: Hashable, item: T) -> None:
        self._queues.setdefault(user, collections.deque()).append((next(self._seq), item))

    def push_front(self, user: Hashable, item: T) -> None:
        """Put ``item`` at the back of a front segment taken before every round: for jobs that
        were already in line (or running) before a restart, pushed in their old order."""
        self._front.append((user, item))

    def waiting_of(self, user: Hashable) -> int:
        return sum(1 for u, _ in self._front if u == user) + len(self._queues.get(user, ()))

    def _ordered(self) -> list[tuple[int, int, Hashable, T]]:
        entries = []
        for user, queue in self._queues.items():
            served = self._served.get(user)
            base = self._round if served is None else max(self._round, served + 1)
            entries.extend((base + k, seq, user, item) for k, (seq, item) in enumerate(queue))
        entries.sort(key=lambda e: (e[0], e[1]))
        return entries

    def order(self) -> list[T]:
        """Waiting items in the order they will be taken."""
        return [it for _, it in self._front] + [e[3] for e in self._ordered()]

    def position(self, item: T) -> int | None:
        """1-based place in :meth:`order` (1: taken next), or None if not waiting."""
        for i, it in enumerate(self.order(), 1):
            if it is item:
                return i
        return None

    def peek(self) -> T | None:
        if self._front:
            return self._front[0][1]
        entries = self._ordered()
        return entries[0][3] if entries else None

    def pop(self) -> T:
        if self._front:
            return self._front.popleft()[1]
        entries = self._ordered()
        if not entries:
            raise IndexError("the line is empty")
        rnd, _, user, item = entries[0]
        self._queues[user].popleft()
        if not self._queues[user]:
            del self._queues[user]
        self._round = rnd
        self._served[user] = rnd
        # Only users served in the current round still affect anyone's base round.
        self._served = {u: r for u, r in self._served.items() if r >= self._round}
        return item

    def remove(self, item: T) -> bool:
        for entry in self._front:
            if entry[1] is item:
                self._front.remove(entry)
                return True
        for user, queue in self._queues.items():
            for entry in queue:
                if entry[1] is item:
                    queue.remove(entry)
                    if not queue:
                        del self._queues[user]
                    return True
        return False

    def clear(self) -> list[T]:
        items = self.order()
        self._queues.clear()
        self._front.clear()
        return items


# --------------------------------------------------------------------------- estimates


class DurationStats:
    """Recent job durations (from start on a worker to the result), per preset."""

    def __init__(self, keep: int = 20) -> None:
        self._recent: collections.deque[tuple[str, float]] = collections.deque(maxlen=keep)

    def add(self, preset: str, seconds: float) -> None:
        self._recent.append((preset, max(0.0, seconds)))

    def __len__(self) -> int:
        return len(self._recent)

    def average(self, preset: str | None = None) -> float | None:
        """Mean of the recent jobs of ``preset`` (all recent jobs when it has none yet)."""
        values = [s for p, s in self._recent if p == preset] if preset is not None else []
        if not values:
            values = [s for _, s in self._recent]
        return statistics.fmean(values) if values else None


def estimate_start(ahead: Iterable[float], running_left: Iterable[float], workers: int) -> float:
    """Seconds until a job starts, given the durations of the jobs ahead of it and how long
    each running job still needs, with ``workers`` running in parallel (each job ahead goes
    to the worker that frees up first)."""
    workers = max(1, workers)
    free = sorted(list(running_left)[:workers])
    free += [0.0] * (workers - len(free))
    for duration in ahead:
        free.sort()
        free[0] += duration
    return min(free)


# --------------------------------------------------------------------------- scheduler


class JobListener(Protocol):
    """What the scheduler reports; called on the event loop, must not block."""

    def job_waiting(self, job: Job, position: int, eta_s: float | None) -> None: ...
    def job_started(self, job: Job) -> None: ...
    def job_progress(self, job: Job, event: Progress) -> None: ...
    def job_retrying(self, job: Job, event: Retrying) -> None: ...
    def job_finished(self, job: Job, event: Finished) -> None: ...
    def job_failed(self, job: Job, event: Failed) -> None: ...
    def job_paused(self, job: Job, was_running: bool) -> None: ...


@dataclass(frozen=True)
class LineStatus:
    waiting: int
    queue_max: int
    running: int
    capacity: int
    workers_alive: int
    average_s: float | None  # recent jobs, all presets
    recent_jobs: int
    accepting: bool
    pool_ready: bool


class Scheduler:
    """Admits jobs into the fair line and runs them on ``pool`` as slots free up."""

    def __init__(
        self,
        pool: WorkerPool,
        listener: JobListener,
        *,
        per_user_waiting: int,
        queue_max: int,
        max_pixels: int,
        job_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.listener = listener
        self.per_user_waiting = per_user_waiting
        self.queue_max = queue_max
        self.max_pixels = max_pixels
        self.job_timeout_s = job_timeout_s
        self.clock = clock
        self.line: FairLine[Job] = FairLine()
        self.durations = DurationStats()
        self.accepting = True
        self.refusal = NotAccepting().args[0]  # what new requests hear once accepting is False
        self.pool_ready = False
        self._jobs: dict[str, Job] = {}  # waiting and running
        self._handles: dict[str, JobHandle] = {}
        self._followers: dict[str, asyncio.Task] = {}
        self._announced: dict[str, tuple[int, float | None]] = {}

    # -- queries

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def running(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.job_id in self._handles]

    def position(self, job: Job) -> int | None:
        return self.line.position(job)

    def status(self) -> LineStatus:
        return LineStatus(
            waiting=len(self.line), queue_max=self.queue_max, running=len(self._handles),
            capacity=self.pool.capacity, workers_alive=self.pool.workers_alive,
            average_s=self.durations.average(), recent_jobs=len(self.durations),
            accepting=self.accepting, pool_ready=self.pool_ready,
        )

    def estimate_for(self, job: Job) -> float | None:
        """Seconds until ``job`` (waiting) starts; None until some job has finished."""
        order = self.line.order()
        ahead = order[: order.index(job)] if job in order else order
        return self._estimate(ahead)

    def _estimate(self, ahead: list[Job]) -> float | None:
        if not self.pool_ready:
            return None  # workers still starting: no honest guess
        durations = [self.durations.average(j.preset) for j in ahead]
        running = [self._time_left(j) for j in self._jobs.values() if j.job_id in self._handles]
        if any(d is None for d in durations) or any(r is None for r in running):
            return None
        return estimate_start(durations, running, self.pool.capacity or 1)  # type: ignore[arg-type]

    def _time_left(self, job: Job) -> float | None:
        """Remaining seconds of a running job: from its progress rate, else recent times."""
        now = self.clock()
        if job.progress and job.started_at is not None and job.progress[0] > 0:
            step, total = job.progress
            elapsed = now - job.started_at
            return max(0.0, elapsed * (total - step) / step)
        average = self.durations.average(job.preset)
        if average is None:
            return None
        elapsed = now - job.started_at if job.started_at is not None else 0.0
        return max(0.0, average - elapsed)

    # -- admission

    def check(self, user_id: int) -> None:
        """Raise :class:`Refused` if ``user_id`` may not add a job now (cheap; call it early)."""
        if not self.accepting:
            raise NotAccepting(self.refusal)
        waiting = self.line.waiting_of(user_id)
        if waiting >= self.per_user_waiting:
            raise UserLimitReached(waiting)
        if len(self.line) >= self.queue_max:
            raise LineFull(len(self.line), self._estimate(self.line.order()))

    def submit(self, job: Job) -> None:
        """Put ``job`` in line (or straight on a worker); raises :class:`Refused`."""
        self.check(job.user_id)
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already known")
        job.status = JobStatus.WAITING
        self._jobs[job.job_id] = job
        self.line.push(job.user_id, job)
        log.info("job queued", extra={"job_id": job.job_id, "user_id": job.user_id, "preset": job.preset,
                                      "position": self.line.position(job)})
        self.pump()

    def restore(self, jobs: Iterable[Job]) -> None:
        """Put jobs accepted before a restart back in line, ahead of new ones, in the given
        order (no limits apply: they were admitted already)."""
        for job in jobs:
            if job.job_id in self._jobs:
                raise ValueError(f"job {job.job_id} is already known")
            job.status, job.started_at, job.worker, job.progress = JobStatus.WAITING, None, None, None
            self._jobs[job.job_id] = job
            self.line.push_front(job.user_id, job)
            log.info("job restored", extra={"job_id": job.job_id, "user_id": job.user_id,
                                            "position": self.line.position(job)})
        self.pump()

    # -- running

    def set_pool_ready(self, ready: bool = True) -> None:
        self.pool_ready = ready
        self.pump()

    def pump(self) -> None:
        """Hand jobs to the pool while it has free slots, then tell waiting jobs where they are."""
        while self.pool_ready and self.accepting and len(self.line) and self.pool.free_slots > 0:
            job = self.line.pop()
            try:
                handle = self.pool.submit(job.spec(max_pixels=self.max_pixels, timeout_s=self.job_timeout_s))
            except PoolError as exc:
                log.error("pool refused a job", extra={"job_id": job.job_id, "error": str(exc)})
                self._end(job, Failed(job.job_id, "The stylisation service is not available right now. "
                                                  "Please try again later.", "error"))
                continue
            self._handles[job.job_id] = handle
            self._announced.pop(job.job_id, None)
            self._followers[job.job_id] = asyncio.get_running_loop().create_task(
                self._follow(job, handle), name=f"job-{job.job_id}")
        self._announce()

    def _announce(self) -> None:
        """Tell every waiting job whose place (or estimate) changed where it stands now."""
        order = self.line.order()
        for i, job in enumerate(order):
            eta = self._estimate(order[:i])
            eta_key = None if eta is None else round(eta / 5.0) * 5.0  # ignore jitter below 5 s
            if self._announced.get(job.job_id) != (i + 1, eta_key):
                self._announced[job.job_id] = (i + 1, eta_key)
                self._notify("job_waiting", job, i + 1, eta)

    async def _follow(self, job: Job, handle: JobHandle) -> None:
        try:
            async for event in handle:
                if isinstance(event, Queued):
                    continue
                if isinstance(event, Started):
                    job.status, job.started_at, job.worker, job.progress = (
                        JobStatus.RUNNING, self.clock(), event.worker, None)
                    job.attempts += 1
                    log.info("job started", extra={"job_id": job.job_id, "worker": event.worker,
                                                   "pid": event.pid, "attempt": event.attempt})
                    self._notify("job_started", job)
                elif isinstance(event, Progress):
                    job.progress = (event.step, event.total)
                    self._notify("job_progress", job, event)
                elif isinstance(event, Retrying):
                    log.warning("job retrying", extra={"job_id": job.job_id, "kind": event.kind})
                    self._notify("job_retrying", job, event)
                elif isinstance(event, Failed) and event.kind == "shutdown" and not self.accepting:
                    self._pause(job, was_running=True)
                elif isinstance(event, (Finished, Failed)):
                    self._end(job, event)
        except asyncio.CancelledError:
            raise
        except Exception:  # a listener bug must not leave the job hanging in the line
            log.exception("error while following a job", extra={"job_id": job.job_id})
            if not job.status.ended:
                self._end(job, Failed(job.job_id, "The job failed because of an internal error.", "error"))
        finally:
            self._handles.pop(job.job_id, None)
            self._followers.pop(job.job_id, None)
            if self.accepting:
                self.pump()

    def _end(self, job: Job, event: Finished | Failed) -> None:
        job.finished_at = self.clock()
        self._jobs.pop(job.job_id, None)
        self._announced.pop(job.job_id, None)
        if isinstance(event, Finished):
            job.status = JobStatus.FINISHED
            if job.started_at is not None:
                self.durations.add(job.preset, job.finished_at - job.started_at)
            log.info("job finished", extra={"job_id": job.job_id, "seconds": round(event.seconds, 2),
                                            "worker": event.worker})
            self._notify("job_finished", job, event)
        else:
            job.status = JobStatus.CANCELLED if event.kind == "cancelled" else JobStatus.FAILED
            job.failure = event.reason
            log.info("job ended", extra={"job_id": job.job_id, "kind": event.kind, "reason": event.reason})
            self._notify("job_failed", job, event)

    def _pause(self, job: Job, was_running: bool) -> None:
        """The bot is stopping before ``job`` is done: it leaves the line unfinished (not failed),
        so restart recovery runs it when the bot is back."""
        job.status = JobStatus.PAUSED
        self._jobs.pop(job.job_id, None)
        self._announced.pop(job.job_id, None)
        log.info("job paused for the restart", extra={"job_id": job.job_id, "was_running": was_running})
        self._notify("job_paused", job, was_running)

    def _notify(self, method: str, *args: Any) -> None:
        try:
            getattr(self.listener, method)(*args)
        except Exception:
            log.exception("job listener failed", extra={"method": method})

    # -- cancelling

    async def cancel(self, job_id: str, by_user: int) -> bool:
        """Cancel a waiting or running job; False if it is not (or no longer) known.

        A waiting job leaves the line at once; a running one is stopped by the pool and
        this returns once it has ended.
        """
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancelled_by = by_user
        if self.line.remove(job):
            self._end(job, Failed(job_id, "The job was cancelled.", "cancelled"))
            self._announce()
            return True
        handle = self._handles.get(job_id)
        if handle is None:
            return False
        log.info("cancelling a running job", extra={"job_id": job_id, "by": by_user})
        await handle.cancel()
        follower = self._followers.get(job_id)
        if follower is not None:
            await asyncio.wait([follower], timeout=5.0)
        return True

    # -- shutting down

    def stop_accepting(self, refusal: str) -> list[Job]:
        """Take no new jobs (``refusal`` tells new requests why); pause every waiting job and
        return them. From now on a running job that the pool stops (``Failed(kind="shutdown")``)
        is paused too: paused jobs stay open in the job store, so the next start runs them."""
        self.accepting = False
        self.refusal = refusal
        paused = self.line.clear()
        for job in paused:
            self._pause(job, was_running=False)
        return paused

    async def wait_running(self, timeout: float | None = None) -> bool:
        """Wait until no job is running; True if that happened within ``timeout``."""
        tasks = list(self._followers.values())
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending
