"""Restart recovery: finishing what the job store says was open when the bot last stopped.

:func:`recover` runs once at start, after the store is open and before the gateway connects
(so no new job can slip ahead of the old ones):

* waiting and running jobs go back in line, in their old order (those that were running
  first, then the waiting ones by their last announced place), ahead of anything new. Each
  gets a new status message that mentions its requester and says the job is back in line;
  the old status message points to it.
* results finished but not delivered are delivered. One found ``delivering`` (the bot
  stopped mid-send) is first looked for among the channel's messages, so a restart never
  sends a result twice (:meth:`~bot.delivery.outbox.Outbox.deliver_result`).
* failure notices still owed are sent the same way.

Interaction tokens have usually expired by then; the messenger then posts in the channel (or
by direct message), as for long jobs. A job put back in line ``MAX_RESTARTS`` times is not
run again (it may be what brings the bot down): its requester is told instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bot.render import words
from bot.delivery.messenger import Messenger
from bot.core.job import Job, JobState
from bot.service.ledger import Ledger
from bot.service.scheduler import Scheduler
from bot.store.job_store import JobStore

__all__ = ["recover", "RecoveryReport", "MAX_RESTARTS", "old_order"]

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
_LOST_INPUTS = "Its pictures were lost while the bot restarted. Please submit it again."
_LOST_RESULT = "Its result was lost while the bot restarted. Please submit it again."
_TOO_MANY_RESTARTS = (f"The bot restarted {MAX_RESTARTS} times while this job was waiting or running, so it was "
                      "stopped to be safe. Please try again, perhaps with other pictures.")


@dataclass
class RecoveryReport:
    restored: list[str] = field(default_factory=list)  # back in line, in order
    deliveries: list[str] = field(default_factory=list)  # results to deliver (or to confirm)
    notices: list[str] = field(default_factory=list)  # failure notices to send (or to confirm)

    def __bool__(self) -> bool:
        return bool(self.restored or self.deliveries or self.notices)


def old_order(job: Job) -> tuple:
    """Sort key reproducing the line as it was: running jobs, then waiting ones by place."""
    if job.state is JobState.RUNNING:
        return (0, job.started_at or 0.0, job.seq)
    return (1, job.position if job.position is not None else float("inf"), job.seq)


async def recover(store: JobStore, ledger: Ledger, scheduler: Scheduler, messenger: Messenger) -> RecoveryReport:
    report = RecoveryReport()
    open_jobs = await store.open_jobs()
    in_line = sorted((j for j in open_jobs if j.state.in_line), key=old_order)
    results = [j for j in open_jobs if j.state in (JobState.DONE, JobState.DELIVERING)]
    notices = [j for j in open_jobs if j.state in (JobState.FAILED, JobState.NOTIFYING)]
    restored = []
    for job in in_line:
        if job.restarts >= MAX_RESTARTS:
            await _fail(ledger, messenger, job, _TOO_MANY_RESTARTS)
            report.notices.append(job.job_id)
            continue
        try:
            job.content, job.style, job.style2 = await store.load_inputs(job.job_id)
        except OSError:
            log.error("a waiting job's pictures are missing", extra={"job_id": job.job_id})
            await _fail(ledger, messenger, job, _LOST_INPUTS)
            report.notices.append(job.job_id)
            continue
        restored.append(job)
    if restored:
        ledger.restored(restored)
        for job in restored:
            messenger.prepare_restored(job)
        scheduler.restore(restored)  # waits for the workers like any job
        for job in restored:
            messenger.spawn(messenger.announce_restored(job), job)
        report.restored = [j.job_id for j in restored]

    for job in results:
        messenger.spawn(_deliver_result(store, ledger, messenger, job), job)
        report.deliveries.append(job.job_id)
    for job in notices:
        unsure = job.route if job.state is JobState.NOTIFYING else None
        messenger.spawn(messenger.outbox.deliver_notice(job, job.failure or "It failed.", unsure_route=unsure), job)
        report.notices.append(job.job_id)
    if report:
        log.info("recovered jobs from the store", extra={"restored": report.restored, "deliveries": report.deliveries,
                                                         "notices": report.notices})
    return report


async def _deliver_result(store: JobStore, ledger: Ledger, messenger: Messenger, job: Job) -> None:
    try:
        event = await store.load_result(job.job_id)
    except (OSError, ValueError, KeyError):
        log.error("a finished job's result is missing", extra={"job_id": job.job_id})
        await _fail(ledger, messenger, job, _LOST_RESULT, spawn=False)
        return
    if job.state is JobState.DONE:  # the bot may have stopped before the status message said so
        seconds = (job.finished_at - job.started_at) if job.finished_at and job.started_at else event.seconds
        await messenger.finish_status(job, words.done_line(seconds))
    unsure = job.route if job.state is JobState.DELIVERING else None
    before = None
    if job.compare:  # the content is still in the spool (kept for the buttons)
        try:
            before = (await store.load_inputs(job.job_id))[0]
        except OSError:
            log.warning("no content picture for before | after", extra={"job_id": job.job_id})
    await messenger.outbox.deliver_result(job, event, unsure_route=unsure, before=before)


async def _fail(ledger: Ledger, messenger: Messenger, job: Job, reason: str, *, spawn: bool = True) -> None:
    await ledger.give_up(job, reason)

    async def tell() -> None:
        await messenger.finish_status(job, words.failed_line(reason))
        await messenger.outbox.deliver_notice(job, reason)

    if spawn:
        messenger.spawn(tell(), job)
    else:
        await tell()
