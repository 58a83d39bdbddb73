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
    "Job", "JobStatus", "FairLine", "Scheduler", "JobListener", "Refused", "UserLimitReached", "ServerLimitReached",
    "LineFull", "NotAccepting", "WorkersUnavailable", "WORKERS_DOWN_NOTE", "LineStatus", "GuildLine", "DurationStats", "estimate_start", "new_job_id",
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


class ServerLimitReached(Refused):
    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        super().__init__(f"This server already has {waiting} jobs waiting, its share of the line. Please try again "
                         "when one of them has started.")


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


class WorkersUnavailable(Refused):
    def __init__(self) -> None:
        super().__init__("The bot cannot run jobs right now: its workers could not start. The operator can see why "
                         "in the bot's logs. Please try again later.")


WORKERS_DOWN_NOTE = "The workers could not start; this job will run as soon as they do."


# --------------------------------------------------------------------------- the fair line


class _Rounds:
    """Round-robin bookkeeping: which round is being served, and each key's last served round.

    A key's k-th waiting item (0-based) is in round ``base(key) + k``: the round being served
    now, or the one after the key's last served item if that was in this round. Items are
    taken in (round, arrival) order, so a newcomer joins the current round and goes before
    the second item of a key that was already served in it.
    """

    def __init__(self) -> None:
        self.current = 0
        self._served: dict[Hashable, int] = {}

    def base(self, key: Hashable) -> int:
        served = self._served.get(key)
        return self.current if served is None else max(self.current, served + 1)

    def served(self, key: Hashable) -> bool:
        """Whether ``key`` was served in the current round."""
        return key in self._served

    def took(self, key: Hashable, rnd: int) -> None:
        self.current = rnd
        self._served[key] = rnd
        # Only keys served in the current round still affect anyone's base round.
        self._served = {k: r for k, r in self._served.items() if r >= self.current}


class _Lane(Generic[T]):
    """One server's waiting items: round-robin between its users, first come first served per user."""

    def __init__(self) -> None:
        self.queues: dict[Hashable, collections.deque[tuple[int, T]]] = {}
        self.rounds = _Rounds()

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def ordered(self) -> list[tuple[int, int, Hashable, T]]:
        """``(round, arrival, user, item)`` in the order this lane's items are taken."""
        entries = [(self.rounds.base(user) + k, seq, user, item)
                   for user, queue in self.queues.items() for k, (seq, item) in enumerate(queue)]
        entries.sort(key=lambda e: (e[0], e[1]))
        return entries

    def pop(self) -> T:
        rnd, _, user, item = self.ordered()[0]
        self.queues[user].popleft()
        if not self.queues[user]:
            del self.queues[user]
        self.rounds.took(user, rnd)
        return item

    def remove(self, item: T) -> bool:
        for user, queue in self.queues.items():
            for entry in queue:
                if entry[1] is item:
                    queue.remove(entry)
                    if not queue:
                        del self.queues[user]
                    return True
        return False


class FairLine(Generic[T]):
    """Round-robin between servers, then between users within a server, first come first
    served per user.

    Both levels use the same rounds (:class:`_Rounds`): a server's k-th item, in the order
    its own lane takes them, is in round ``base(server) + k``; so a busy server gets one turn
    per round like a quiet one, and within its turns its members take turns. Items are taken
    in (round, arrival) order; positions are computed from that same order, so they are exact.

    Items put back after a restart (:meth:`push_front`) form a front segment, taken first and
    in the order given, so the line resumes as it was.
    """

    def __init__(self) -> None:
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._rounds = _Rounds()
        self._seq = itertools.count()
        self._front: collections.deque[tuple[Hashable, Hashable, T]] = collections.deque()  # (guild, user, item)

    def __len__(self) -> int:
        return len(self._front) + sum(len(lane) for lane in self._lanes.values())

    def __contains__(self, item: object) -> bool:
        return any(it is item for it in self.order())

    def push(self, user: Hashable, item: T, guild: Hashable = None) -> None:
        lane = self._lanes.setdefault(guild, _Lane())
        lane.queues.setdefault(user, collections.deque()).append((next(self._seq), item))

    def push_front(self, user: Hashable, item: T, guild: Hashable = None) -> None:
        """Put ``item`` at the back of a front segment taken before every round: for jobs that
        were already in line (or running) before a restart, pushed in their old order."""
        self._front.append((guild, user, item))

    def waiting_of(self, user: Hashable) -> int:
        """Items of ``user`` waiting, in every server."""
        return (sum(1 for _, u, _ in self._front if u == user)
                + sum(len(lane.queues.get(user, ())) for lane in self._lanes.values()))

    def waiting_in(self, guild: Hashable) -> int:
        """Items waiting from ``guild``."""
        lane = self._lanes.get(guild)
        return sum(1 for g, _, _ in self._front if g == guild) + (len(lane) if lane else 0)

    def _ordered(self) -> list[tuple[int, int, Hashable, T]]:
        """``(round, arrival, guild, item)`` after the front segment, in the order taken."""
        entries = []
        for guild, lane in self._lanes.items():
            base = self._rounds.base(guild)
            entries.extend((base + k, seq, guild, item) for k, (_, seq, _, item) in enumerate(lane.ordered()))
        entries.sort(key=lambda e: (e[0], e[1]))
        return entries

    def order(self) -> list[T]:
        """Waiting items in the order they will be taken."""
        return [it for _, _, it in self._front] + [e[3] for e in self._ordered()]

    def position(self, item: T) -> int | None:
        """1-based place in :meth:`order` (1: taken next), or None if not waiting."""
        for i, it in enumerate(self.order(), 1):
            if it is item:
                return i
        return None

    def peek(self) -> T | None:
        order = self.order()
        return order[0] if order else None

    def pop(self) -> T:
        if self._front:
            return self._front.popleft()[2]
        entries = self._ordered()
        if not entries:
            raise IndexError("the line is empty")
        rnd, _, guild, item = entries[0]
        lane = self._lanes[guild]
        taken = lane.pop()
        assert taken is item
        self._rounds.took(guild, rnd)
        self._prune()
        return item

    def _prune(self) -> None:
        # An empty lane still matters while its server was served in the current round (its
        # users' turns within that round); after that it carries nothing and can go.
        for guild in [g for g, lane in self._lanes.items() if not len(lane) and not self._rounds.served(g)]:
            del self._lanes[guild]

    def remove(self, item: T) -> bool:
        for entry in self._front:
            if entry[2] is item:
                self._front.remove(entry)
                return True
        for guild, lane in self._lanes.items():
            if lane.remove(item):
                self._prune()
                return True
        return False

    def clear(self) -> list[T]:
        items = self.order()
        self._lanes.clear()
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

    def job_waiting(self, job: Job, position: int, eta_s: float | None, note: str | None) -> None: ...
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
    workers_down: bool = False  # no worker could start; jobs wait (and new ones are refused) until one does


@dataclass(frozen=True)
class GuildLine:
    """One server's part of the line, for ``/stylebot status`` there."""

    waiting: int
    running: int
    positions: tuple[int, ...]  # places in the whole line of this server's waiting jobs
    per_guild_waiting: int


class Scheduler:
    """Admits jobs into the fair line and runs them on ``pool`` as slots free up."""

    def __init__(
        self,
        pool: WorkerPool,
        listener: JobListener,
        *,
        per_user_waiting: int,
        queue_max: int,
        per_guild_waiting: int | None = None,
        max_pixels: int,
        job_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.listener = listener
        self.per_user_waiting = per_user_waiting
        self.queue_max = queue_max
        self.per_guild_waiting = per_guild_waiting if per_guild_waiting is not None else queue_max
        self.max_pixels = max_pixels
        self.job_timeout_s = job_timeout_s
        self.clock = clock
        self.line: FairLine[Job] = FairLine()
        self.durations = DurationStats()
        self.accepting = True
        self.refusal = NotAccepting().args[0]  # what new requests hear once accepting is False
        self.pool_ready = False
        self.workers_down = False
        self._jobs: dict[str, Job] = {}  # waiting and running
        self._handles: dict[str, JobHandle] = {}
        self._followers: dict[str, asyncio.Task] = {}
        self._announced: dict[str, tuple[int, float | None, str | None]] = {}

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
            accepting=self.accepting, pool_ready=self.pool_ready, workers_down=self.workers_down,
        )

    def guild_status(self, guild_id: int | None) -> GuildLine:
        order = self.line.order()
        positions = tuple(i for i, j in enumerate(order, 1) if j.guild_id == guild_id)
        running = sum(1 for j in self.running() if j.guild_id == guild_id)
        return GuildLine(len(positions), running, positions, self.per_guild_waiting)

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

    def check(self, user_id: int, guild_id: int | None) -> None:
        """Raise :class:`Refused` if ``user_id`` may not add a job in ``guild_id`` now (cheap; call it early)."""
        if not self.accepting:
            raise NotAccepting(self.refusal)
        if self.workers_down:
            raise WorkersUnavailable()
        waiting = self.line.waiting_of(user_id)
        if waiting >= self.per_user_waiting:
            raise UserLimitReached(waiting)
        if len(self.line) >= self.queue_max:
            raise LineFull(len(self.line), self._estimate(self.line.order()))
        in_guild = self.line.waiting_in(guild_id)
        if in_guild >= self.per_guild_waiting:
            raise ServerLimitReached(in_guild)

    def submit(self, job: Job) -> None:
        """Put ``job`` in line (or straight on a worker); raises :class:`Refused`."""
        self.check(job.user_id, job.guild_id)
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already known")
        job.status = JobStatus.WAITING
        self._jobs[job.job_id] = job
        self.line.push(job.user_id, job, job.guild_id)
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
            self.line.push_front(job.user_id, job, job.guild_id)
            log.info("job restored", extra={"job_id": job.job_id, "user_id": job.user_id,
                                            "position": self.line.position(job)})
        self.pump()

    # -- running

    def set_pool_ready(self, ready: bool = True) -> None:
        self.pool_ready = ready
        if ready:
            self.workers_down = False
        self.pump()

    def set_workers_down(self, down: bool) -> None:
        """No worker could start (``down``), or one has come up: new requests are refused
        meanwhile, and waiting jobs are told they run once the workers do."""
        if down == self.workers_down:
            return
        self.workers_down = down
        if down:
            self.pool_ready = False
        log.warning("workers down; refusing new jobs" if down else "workers back; taking jobs again")
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
        note = WORKERS_DOWN_NOTE if self.workers_down else None
        for i, job in enumerate(order):
            eta = self._estimate(order[:i])
            eta_key = None if eta is None else round(eta / 5.0) * 5.0  # ignore jitter below 5 s
            if self._announced.get(job.job_id) != (i + 1, eta_key, note):
                self._announced[job.job_id] = (i + 1, eta_key, note)
                self._notify("job_waiting", job, i + 1, eta, note)

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
        """Cancel a waiting or running job; True only if it ended cancelled.

        A waiting job leaves the line at once; a running one is stopped by the pool and
        this returns once it has ended. A job that finished (or failed) before the pool could
        stop it is not cancelled: its result is delivered, so this says False.
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
        return job.status is JobStatus.CANCELLED

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
