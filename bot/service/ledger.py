"""The ledger: the only writer of a job's state, in memory and in the job store together.

The scheduler (order), the pool (work, through the scheduler) and delivery (messages) report
to it; it checks each move against :data:`bot.core.job.TRANSITIONS`, records it, and passes
the scheduler's events on to its watcher (:class:`bot.delivery.messenger.Messenger`) for the
messages that follow. No Discord here.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from nst_core.params import StylizeParams
from nst_core.pool.base import Failed, Finished, Progress, Retrying

from bot.core.events import JobEvents
from bot.core.job import TRANSITIONS, IllegalTransition, Job, JobState

if TYPE_CHECKING:
    from bot.config import EngineConfig
    from bot.store.job_store import JobStore

__all__ = ["Ledger", "job_params"]


class _Unwatched(JobEvents):
    """No one to tell (a ledger without messages, as in tests of the line alone)."""


# Failures that count against the requester's daily quota: they chose to stop, or sent bad input.
_REQUESTERS_FAULT = frozenset({"cancelled", "invalid_input"})



def job_params(engine: "EngineConfig", preset: str, *, strength: float = 1.0, preserve_colors: bool = False,
               seed: int = 0, blend: float | None = None) -> StylizeParams:
    """The one mapping from a request (preset and options) and the engine's settings to a
    job's parameters; ``blend``: the second style's share (None: one style). Raises
    :class:`~nst_core.errors.ParamsError`."""
    p = engine.presets[preset]
    return StylizeParams(preset=preset, size=min(p.size, engine.max_size), iterations=p.steps, scales=p.scales,
                         strength=strength, preserve_colors=preserve_colors, seed=seed, backbone=engine.backbone,
                         weights=engine.weights, precision=engine.precision,
                         style_blend=None if blend is None else (1.0 - blend, blend))



class Ledger:
    """The only writer of job state: each move is checked, made in memory and recorded.

    It is the scheduler's listener (the ``job_*`` methods) and delivery's bookkeeper
    (:meth:`sending`, :meth:`sent`, :meth:`unsent`, :meth:`give_up`). Records that
    a restart needs before anything else happens (a result, a send about to start) are
    awaited; the rest are written in order without waiting (``store.note``).
    """

    def __init__(self, store: "JobStore | None" = None, watcher: JobEvents | None = None,
                 clock: Any = time.time) -> None:
        self.store = store
        self.watcher: JobEvents = watcher if watcher is not None else _Unwatched()
        self.clock = clock
        self._stripped: set[str] = set()  # results on their way whose original was deleted
        self._moved: dict[str, int] = {}  # places announced this turn of the loop, not yet recorded

    # -- the one place a state changes

    def _move(self, job: Job, to: JobState) -> None:
        if to not in TRANSITIONS[job.state]:
            raise IllegalTransition(f"job {job.job_id}: {job.state.value} -> {to.value}")
        job.state = to

    def _note(self, job: Job, **fields: Any) -> None:
        if self.store is not None:
            self.store.note(job.job_id, **fields)


    # -- accepting and restoring

    async def accept(self, job: Job, daily_limit: int = 0, *, parent_kept: bool = False) -> None:
        """Record a new job, with its pictures, as waiting; raises what the store raises.
        ``parent_kept``: a remix, taken only while its parent still keeps its pictures."""
        job.state = JobState.WAITING
        if self.store is not None:
            await self.store.accept(job, daily_limit=daily_limit, parent_kept=parent_kept)

    async def discard(self, job: Job) -> None:
        """Forget a job that was recorded but then not taken after all (the line filled up)."""
        if self.store is not None:
            await self.store.discard(job.job_id)

    def restored(self, jobs: list[Job]) -> None:
        """Jobs put back in line at a restart: each counts the restart."""
        for job in jobs:
            if job.state is JobState.RUNNING:
                self._move(job, JobState.WAITING)
            job.restarts += 1
            job.started_at = job.worker = job.progress = None
        if self.store is not None and jobs:
            self.store.note_restored(j.job_id for j in jobs)

    def status_message(self, job: Job, message_id: int | None) -> None:
        job.status_message_id = message_id
        if message_id is not None:
            self._note(job, status_message_id=message_id)

    # -- the scheduler's reports

    def job_waiting(self, job: Job, position: int, eta_s: float | None, note: str | None = None) -> None:
        job.position = position
        if self.store is not None:
            # The scheduler tells the whole line at once: its places are recorded together, at the
            # end of this turn of the loop. They only order the line again after a restart.
            if not self._moved:
                asyncio.get_running_loop().call_soon(self._record_places)
            self._moved[job.job_id] = position
        self.watcher.job_waiting(job, position, eta_s, note)

    def _record_places(self) -> None:
        moved, self._moved = self._moved, {}
        if self.store is not None and moved:
            self.store.note_positions(moved)

    def job_started(self, job: Job, worker: str | None = None) -> None:
        self._move(job, JobState.RUNNING)
        job.started_at, job.worker, job.progress, job.position = self.clock(), worker, None, None
        job.attempts += 1
        self._note(job, state=job.state.value, started_at=job.started_at, worker=job.worker, attempts=job.attempts,
                   position=None)
        self.watcher.job_started(job, worker)

    def cancel_requested(self, job: Job, by_user: int) -> None:
        job.cancelled_by = by_user
        self.watcher.cancel_requested(job, by_user)

    def job_progress(self, job: Job, event: Progress) -> None:
        job.progress = (event.step, event.total)
        self.watcher.job_progress(job, event)

    def job_retrying(self, job: Job, event: Retrying) -> None:
        self.watcher.job_retrying(job, event)

    def job_finished(self, job: Job, event: Finished) -> None:
        """The worker's result: ``done`` once it is saved (:meth:`save_result`, by delivery)."""
        job.finished_at = self.clock()
        self.watcher.job_finished(job, event)

    def job_failed(self, job: Job, event: Failed) -> None:
        job.finished_at = self.clock()
        job.failure, job.failure_kind = event.reason, event.kind
        if event.kind == "cancelled":
            self._move(job, JobState.CANCELLED)
            self._note(job, remove_files=True, state=job.state.value, cancelled_by=job.cancelled_by,
                       failure=event.reason, failure_kind=event.kind, finished_at=job.finished_at,
                       interaction_token="")
            if job.cancelled_by != job.user_id and self.store is not None:
                self.store.note_refund(job.job_id)  # a moderator's cancel does not use up the member's quota
        else:
            self._move(job, JobState.FAILED)  # recorded at once, so a restart does not run it again
            self._note(job, remove_files=True, state=job.state.value, failure=event.reason,
                       failure_kind=event.kind, finished_at=job.finished_at)
            if event.kind not in _REQUESTERS_FAULT and self.store is not None:
                self.store.note_refund(job.job_id)  # the bot's failure does not use up the member's quota
        self.watcher.job_failed(job, event)

    def job_paused(self, job: Job, was_running: bool) -> None:
        # No move: the store still says waiting or running, which is what the next start needs.
        self.watcher.job_paused(job, was_running)

    # -- delivery's reports

    async def save_result(self, job: Job, event: Finished) -> None:
        """Keep the result on disk and mark the job done, before any attempt to send it."""
        self._move(job, JobState.DONE)
        if self.store is not None:
            await self.store.save_result(job.job_id, event, job.finished_at)

    async def give_up(self, job: Job, reason: str) -> None:
        """A job that cannot go on: its result cannot be sent (it cannot be made small enough), or
        at a restart its files are lost or it was put back in line too often. A notice is owed."""
        if job.state is not JobState.FAILED:
            self._move(job, JobState.FAILED)
        job.failure, job.failure_kind = reason, "error"
        if self.store is not None:
            await self.store.update(job.job_id, remove_files=True, state=job.state.value, failure=reason,
                                    failure_kind="error")

    async def sending(self, job: Job, route: str) -> None:
        """A send of the result (or notice) is about to start by ``route``."""
        self._move(job, JobState.DELIVERING if job.state in (JobState.DONE, JobState.DELIVERING)
                   else JobState.NOTIFYING)
        job.route = route
        if self.store is not None:
            await self.store.update(job.job_id, state=job.state.value, route=route)

    async def sent(self, job: Job, route: str, message_id: int) -> None:
        """Recorded as delivered (or notified). A delivered job's pictures stay in the spool for
        the store's ``reuse_s``, for the buttons under the result; a notice's go at once."""
        delivered = job.state in (JobState.DONE, JobState.DELIVERING)
        self._move(job, JobState.DELIVERED if delivered else JobState.NOTIFIED)
        job.route, job.message_id = route, message_id
        now = self.clock()
        keep = delivered and self.store is not None and self.store.reuse_s > 0 and job.job_id not in self._stripped
        self._stripped.discard(job.job_id)
        job.kept_until = now + self.store.reuse_s if keep and self.store is not None else None
        if self.store is not None:
            await self.store.update(job.job_id, remove_files=not keep, state=job.state.value, route=route,
                                    message_id=message_id, delivered_at=now, interaction_token="",
                                    kept_until=job.kept_until)

    async def strip(self, job: Job) -> None:
        """A result on its way (done or delivering) whose original was deleted: it is sent
        without before | after and keeps no pictures once delivered. Its inputs go now, so
        that holds after a restart too (the mark here only spares the send under way)."""
        self._stripped.add(job.job_id)
        job.compare = False
        if self.store is not None:
            await self.store.update(job.job_id, remove_inputs=True, compare=0)

    def stripped(self, job: Job) -> bool:
        return job.job_id in self._stripped

    async def forget_pictures(self, job: Job) -> None:
        """A delivered job's kept pictures go now (its result was deleted): no more remixes."""
        job.kept_until = None
        if self.store is not None:
            await self.store.update(job.job_id, remove_files=True, kept_until=None)

    async def unsent(self, job: Job) -> None:
        """Every route refused for good. An undeliverable job's inputs go at once (no one can
        remix a result they never got); its result stays in the spool until the retention, or
        until the room is needed (the store may drop it then)."""
        self._stripped.discard(job.job_id)
        self._move(job, JobState.UNDELIVERABLE if job.state in (JobState.DONE, JobState.DELIVERING)
                   else JobState.UNNOTIFIED)
        if self.store is not None:
            await self.store.update(job.job_id, remove_inputs=job.state is JobState.UNDELIVERABLE,
                                    state=job.state.value, interaction_token="")
