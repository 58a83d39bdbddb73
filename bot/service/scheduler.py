"""The bot's own waiting line: fair between servers and users, feeding the worker pool as slots free up.

No Discord here. :class:`~bot.core.line.FairLine` decides the order (round-robin between
servers, then between users, first come first served per user); :class:`Scheduler` keeps
the jobs in line or running, admits or refuses them, hands them to a
:class:`~nst_core.pool.base.WorkerPool` whenever ``pool.free_slots > 0`` and reports what
happens as :class:`~bot.core.events.JobEvents` (to the
:class:`~bot.service.ledger.Ledger`, which alone changes a job's state).

Keeping the pool's own queue empty means the positions the line reports are exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable

from nst_core.pool.base import Failed, Finished, JobHandle, PoolError, Progress, Queued, Retrying, Started, WorkerPool

from bot.core.events import JobEvents
from bot.core.job import Job, JobState
from bot.core.line import DurationStats, FairLine, GuildLine, LineStatus, estimate_start, start_estimates
from bot.core.refusals import LineFull, NotAccepting, ServerLimitReached, UserLimitReached, WorkersUnavailable

__all__ = ["Scheduler", "Hold", "WORKERS_DOWN_NOTE"]

log = logging.getLogger(__name__)

WORKERS_DOWN_NOTE = "The workers could not start; this job will run as soon as they do."


class Hold:
    """A place in line kept for a request whose pictures are being checked."""

    def __init__(self, scheduler: "Scheduler", user_id: int, guild_id: int | None) -> None:
        self.scheduler = scheduler
        self.user_id = user_id
        self.guild_id = guild_id

    def release(self) -> None:
        self.scheduler.release(self)

    def __enter__(self) -> "Hold":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Scheduler:
    """Admits jobs into the fair line and runs them on ``pool`` as slots free up."""

    def __init__(
        self,
        pool: WorkerPool,
        events: JobEvents,
        *,
        per_user_waiting: int,
        queue_max: int,
        per_guild_waiting: int | None = None,
        max_pixels: int,
        job_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.events = events
        self.per_user_waiting = per_user_waiting
        self.queue_max = queue_max
        self.per_guild_waiting = min(per_guild_waiting or queue_max, queue_max)  # a share of the line, at most all
        self.max_pixels = max_pixels
        self.job_timeout_s = job_timeout_s
        self.clock = clock
        self.line: FairLine[Job] = FairLine()
        self.durations = DurationStats()
        self.accepting = True
        self.pool_ready = False
        self.workers_down = False
        self._jobs: dict[str, Job] = {}  # waiting and running
        self._handles: dict[str, JobHandle] = {}
        self._followers: dict[str, asyncio.Task] = {}
        self._announced: dict[str, tuple[int, float | None, str | None]] = {}
        self._held: list[Hold] = []  # requests being checked: places in line they will take

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

    def _estimate(self, ahead: list[Job]) -> float | None:
        if not self.pool_ready:
            return None  # workers still starting: no honest guess
        durations = [self.durations.average(j.preset) for j in ahead]
        running = [self._time_left(j) for j in self._jobs.values() if j.job_id in self._handles]
        if any(d is None for d in durations) or any(r is None for r in running):
            return None
        return estimate_start(durations, running, self.pool.capacity or 1)  # type: ignore[arg-type]

    def _estimates(self, order: list[Job]) -> list[float | None]:
        """Each waiting job's estimate, as :meth:`_estimate` of the jobs ahead of it, in one pass."""
        running = [self._time_left(j) for j in self._jobs.values() if j.job_id in self._handles]
        if not self.pool_ready or any(r is None for r in running):
            return [None] * len(order)
        averages = {preset: self.durations.average(preset) for preset in {j.preset for j in order}}
        return start_estimates([averages[j.preset] for j in order], running,  # type: ignore[arg-type]
                               self.pool.capacity or 1)

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
        """Raise :class:`Refused` if ``user_id`` may not add a job in ``guild_id`` now (cheap; call it
        early). Requests still being checked (:meth:`hold`) count as the places they will take."""
        if not self.accepting:
            raise NotAccepting()
        if self.workers_down:
            raise WorkersUnavailable()
        waiting = self.line.waiting_of(user_id) + sum(1 for h in self._held if h.user_id == user_id)
        if waiting >= self.per_user_waiting:
            raise UserLimitReached(waiting)
        if len(self.line) + len(self._held) >= self.queue_max:
            raise LineFull(len(self.line) + len(self._held), self._estimate(self.line.order()))
        in_guild = self.line.waiting_in(guild_id) + sum(1 for h in self._held if h.guild_id == guild_id)
        if in_guild >= self.per_guild_waiting:
            raise ServerLimitReached(in_guild)

    def hold(self, user_id: int, guild_id: int | None) -> "Hold":
        """Keep a place in line for a request while its pictures are checked (raises
        :class:`Refused` as :meth:`check` does). Its job goes in with ``submit(job, hold)``;
        a request that ends without one releases the hold (a ``with`` block does)."""
        self.check(user_id, guild_id)
        hold = Hold(self, user_id, guild_id)
        self._held.append(hold)
        return hold

    def release(self, hold: Hold) -> None:
        """Give back the place ``hold`` kept (again: nothing)."""
        if hold in self._held:
            self._held.remove(hold)

    def submit(self, job: Job, hold: "Hold | None" = None) -> None:
        """Put ``job`` in line (or straight on a worker); raises :class:`Refused`. ``hold``: the
        place kept for it while its pictures were checked, taken now."""
        if hold is not None:
            hold.release()
        self.check(job.user_id, job.guild_id)
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already known")
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
        for i, (job, eta) in enumerate(zip(order, self._estimates(order))):
            eta_key = None if eta is None else round(eta / 5.0) * 5.0  # ignore jitter below 5 s
            if self._announced.get(job.job_id) != (i + 1, eta_key, note):
                self._announced[job.job_id] = (i + 1, eta_key, note)
                self._report(self.events.job_waiting, job, i + 1, eta, note)

    async def _follow(self, job: Job, handle: JobHandle) -> None:
        try:
            async for event in handle:
                if isinstance(event, Queued):
                    continue
                if isinstance(event, Started):
                    log.info("job started", extra={"job_id": job.job_id, "worker": event.worker,
                                                   "pid": event.pid, "attempt": event.attempt})
                    self._report(self.events.job_started, job, event.worker)
                elif isinstance(event, Progress):
                    self._report(self.events.job_progress, job, event)
                elif isinstance(event, Retrying):
                    log.warning("job retrying", extra={"job_id": job.job_id, "kind": event.kind})
                    self._report(self.events.job_retrying, job, event)
                elif isinstance(event, Failed) and event.kind == "shutdown" and not self.accepting:
                    self._pause(job, was_running=True)
                elif isinstance(event, (Finished, Failed)):
                    self._end(job, event)
        except asyncio.CancelledError:
            raise
        except Exception:  # a listener bug must not leave the job hanging in the line
            log.exception("error while following a job", extra={"job_id": job.job_id})
            if job.job_id in self._jobs:
                self._end(job, Failed(job.job_id, "The job failed because of an internal error.", "error"))
        finally:
            self._handles.pop(job.job_id, None)
            self._followers.pop(job.job_id, None)
            if self.accepting:
                self.pump()

    def _end(self, job: Job, event: Finished | Failed) -> None:
        self._jobs.pop(job.job_id, None)
        self._announced.pop(job.job_id, None)
        if isinstance(event, Finished):
            if job.started_at is not None:
                self.durations.add(job.preset, self.clock() - job.started_at)
            log.info("job finished", extra={"job_id": job.job_id, "seconds": round(event.seconds, 2),
                                            "worker": event.worker})
            self._report(self.events.job_finished, job, event)
        else:
            log.info("job ended", extra={"job_id": job.job_id, "kind": event.kind, "reason": event.reason})
            self._report(self.events.job_failed, job, event)

    def _pause(self, job: Job, was_running: bool) -> None:
        """The bot is stopping before ``job`` is done: it leaves the line unfinished (not failed),
        so restart recovery runs it when the bot is back."""
        self._jobs.pop(job.job_id, None)
        self._announced.pop(job.job_id, None)
        log.info("job paused for the restart", extra={"job_id": job.job_id, "was_running": was_running})
        self._report(self.events.job_paused, job, was_running)

    def _report(self, event: Callable[..., None], *args: Any) -> None:
        try:
            event(*args)
        except Exception:  # a bug in whoever listens must not leave the job hanging in the line
            log.exception("job event failed", extra={"event": event.__name__})

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
        self._report(self.events.cancel_requested, job, by_user)
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
        return job.state is JobState.CANCELLED

    # -- shutting down

    def stop_accepting(self) -> list[Job]:
        """Take no new jobs (new requests hear :class:`NotAccepting`); pause every waiting job and
        return them. From now on a running job that the pool stops (``Failed(kind="shutdown")``)
        is paused too: paused jobs stay open in the job store, so the next start runs them."""
        self.accepting = False
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
