"""What follows each recorded event in a job's life: its status message, then its result or notice.

:class:`Messenger` is the :class:`~bot.service.ledger.Ledger`'s watcher. It shows each event on the
job's status message (:class:`~bot.delivery.status.StatusBoard`) and, when the job ends, has the
:class:`~bot.delivery.outbox.Outbox` deliver the result or the failure notice exactly once. The work
runs in background tasks that :meth:`Messenger.drain` waits for at shutdown; a task's
failure is logged, never left unread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import discord

from nst_core.pool.base import Failed, Finished, Progress, Retrying

from bot.render import words
from bot.config import DeliveryConfig
from bot.core.job import Job
from bot.service.ledger import Ledger
from bot.delivery.outbox import Outbox, Sent
from bot.delivery.status import StatusBoard, log_failure
from bot.render.views import cancel_view
from bot.service.call_budget import CallBudget, Priority, calls_as

if TYPE_CHECKING:
    from bot.health import Metrics

__all__ = ["Messenger"]

log = logging.getLogger(__name__)


class Messenger:
    """Turns recorded job events into Discord messages."""

    def __init__(self, client: discord.Client, ledger: Ledger, *, edit_interval_s: float, interaction_ttl_s: float,
                 interaction_margin_s: float, metrics: "Metrics | None" = None,
                 delivery: DeliveryConfig | None = None, retention_s: float = 7 * 86400.0,
                 result_view: Callable[[Job], discord.ui.View | None] | None = None,
                 budget: CallBudget | None = None) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.board = StatusBoard(client, edit_interval_s=edit_interval_s, interaction_ttl_s=interaction_ttl_s,
                                 interaction_margin_s=interaction_margin_s, budget=budget)
        self.outbox = Outbox(client, ledger, self.board, delivery=delivery, metrics=metrics,
                             retention_s=retention_s, spawn=self.spawn, result_view=result_view)
        self._tasks: set[asyncio.Task] = set()
        ledger.watcher = self

    # -- the status message

    def current_text(self, job: Job) -> str:
        return self.board.current_text(job)

    def attach(self, job: Job, message_id: int | None, shown: str | None) -> None:
        """The job's status message was created (``message_id``; None: it could not be)."""
        self.ledger.status_message(job, message_id)
        self.board.attach(job, shown)

    async def finish_status(self, job: Job, line: str) -> None:
        """Give a job's status message its last text (after a restart: it may still say "running")."""
        if job.status_message_id is not None:
            self.board.attach(job, None)
            await self.board.finish(job, line)

    # -- the ledger's events

    def job_waiting(self, job: Job, position: int, eta_s: float | None, note: str | None = None) -> None:
        self.board.show(job, words.waiting_line(position, eta_s, note))

    def job_started(self, job: Job, worker: str | None) -> None:
        self.board.show(job, words.starting_line())

    def cancel_requested(self, job: Job, by_user: int) -> None:
        pass  # the status changes when the job ends (cancelled, or finished first)

    def job_progress(self, job: Job, event: Progress) -> None:
        elapsed = time.time() - job.started_at if job.started_at is not None else 0.0
        left = words.time_left(elapsed, event.step, event.total)
        self.board.show(job, words.progress_line(event.step, event.total, event.scale, event.scales, event.size,
                                                  left))

    def job_retrying(self, job: Job, event: Retrying) -> None:
        self.board.show(job, words.retrying_line(event.reason))

    def job_finished(self, job: Job, event: Finished) -> None:
        if self.metrics is not None:
            self.metrics.job_ended("finished", _seconds(job, event.seconds))
        self.spawn(self._result(job, event), job)

    def job_failed(self, job: Job, event: Failed) -> None:
        if self.metrics is not None:
            self.metrics.job_ended(event.kind)
        self.spawn(self._failure(job, event), job)

    def job_paused(self, job: Job, was_running: bool) -> None:
        # The final edit drops the Cancel button; the next start posts a new status message with one.
        self.spawn(self.board.finish(job, words.paused_line(was_running)), job)

    async def _result(self, job: Job, event: Finished) -> None:
        try:  # on disk before any attempt to send: a crash from here on cannot lose it
            await self.ledger.save_result(job, event)
        except Exception:
            log.exception("the result could not be saved; delivering it from memory", extra={"job_id": job.job_id})
        before = job.content if job.compare else None  # for the "before | after" picture
        job.content = job.style = job.style2 = b""  # the inputs are kept on disk now; keep the record small
        await self.board.finish(job, words.done_line(_seconds(job, event.seconds)))
        await self.outbox.deliver_result(job, event, before=before)

    async def _failure(self, job: Job, event: Failed) -> None:
        if event.kind == "cancelled":
            await self.board.finish(job, words.cancelled_line(job.cancelled_by, job.user_id))
            return
        await self.board.finish(job, words.failed_line(event.reason))
        await self.outbox.deliver_notice(job, event.reason)

    # -- after a restart

    def prepare_restored(self, job: Job) -> None:
        """Before a restored job re-enters the line: its status text gets the restart note."""
        self.board.restart(job)

    async def announce_restored(self, job: Job) -> None:
        """Post a restored job's new status message (it mentions the requester, who is told the
        job is back in line) and point the old one at it."""
        old = job.status_message_id
        text = self.board.current_text(job)
        sent: Sent | None = await self.outbox.send_to_user(
            job, lambda route: {"content": text, "view": cancel_view(job.job_id)})
        if sent is None:
            log.error("could not tell the requester that their job is back in line", extra={"job_id": job.job_id})
        self.attach(job, sent.message_id if sent else None, text)
        if old is not None:
            await self.board.point_to_new(job, old)

    # -- background work

    def spawn(self, coro: Awaitable[Any], job: Job) -> None:
        """Run ``coro`` (a delivery for ``job``) in the background; :meth:`drain` waits for it.
        Its Discord calls are urgent ones of the job's server in the call budget."""
        with calls_as(Priority.URGENT, job.guild_id or 0):  # the task copies this context
            task = asyncio.get_running_loop().create_task(coro, name=f"deliver-{job.job_id}")  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure)

    async def drain(self, timeout: float) -> None:
        """Wait for deliveries in progress (at shutdown); later retries are left to the next start."""
        self.outbox.cancel_timers()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


def _seconds(job: Job, fallback: float) -> float:
    """From the start on a worker to the result, as the bot saw it."""
    return (job.finished_at - job.started_at) if job.finished_at and job.started_at else fallback
