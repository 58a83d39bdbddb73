"""Status messages: one public message per job, edited to show where the job stands.

:class:`StatusBoard` keeps each job's message current through a :class:`StatusUpdater` (the
latest text wins, at most one edit per ``edit_interval_s``, because Discord rate-limits
edits). Progress and place-in-line edits are background calls in the bot's budget of Discord
calls (:mod:`bot.service.call_budget`): each waits for a slot *before* its text is chosen, so
an edit that waited sends the newest text, and the ones overtaken meanwhile are never sent.
The last edit of a job (done, failed, cancelled) is urgent: the result follows it.
An edit goes through the interaction's webhook while its token is valid, then through
the channel (the bot may edit its own message there). Texts come from :mod:`bot.render.words`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Awaitable, Callable

import discord

from bot.render import words
from bot.core.job import Job
from bot.service.call_budget import CallBudget, Caller, Priority, calls_as, prepaid

__all__ = ["StatusBoard", "StatusUpdater", "token_usable", "log_failure"]

log = logging.getLogger(__name__)



def token_usable(created_at: float, ttl_s: float, margin_s: float, now: float | None = None) -> bool:
    """Whether an interaction token created at ``created_at`` may still be used for a reply."""
    now = time.time() if now is None else now
    return now < created_at + ttl_s - margin_s


def log_failure(task: asyncio.Task) -> None:
    """A background task's failure is logged, never left to die unread."""
    if not task.cancelled() and task.exception() is not None:
        log.error("a background task failed", exc_info=task.exception(), extra={"task": task.get_name()})


class StatusUpdater:
    """Edits one message so it shows the latest wanted text, at most once per ``interval``.

    ``set`` never blocks; intermediate texts are skipped when newer ones arrive. A
    ``final`` text is sent as soon as any edit in flight is done and ends the updater.
    Nothing is sent before :meth:`attach` (the message does not exist yet).
    """

    def __init__(self, edit: Callable[[str, bool], Awaitable[bool]], interval: float,
                 clock: Callable[[], float] = time.monotonic, *, budget: CallBudget | None = None,
                 guild_id: int = 0) -> None:
        self._edit = edit  # (text, final) -> False when the message can no longer be edited
        self._interval = interval
        self._clock = clock
        self._budget = budget
        self._guild_id = guild_id
        self._wanted: str | None = None
        self._shown: str | None = None
        self._final = False
        self._last = -math.inf
        self._attached = asyncio.Event()
        self._changed = asyncio.Event()
        self._final_set = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._gone = False

    @property
    def wanted(self) -> str | None:
        return self._wanted

    @property
    def attached(self) -> bool:
        return self._attached.is_set()

    def set(self, text: str, *, final: bool = False) -> None:
        if self._final:
            return
        self._wanted, self._final = text, final
        self._changed.set()
        if final:
            self._final_set.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="status-updater")
            self._task.add_done_callback(log_failure)

    def attach(self, shown: str | None, *, editable: bool = True) -> None:
        """The message exists now and shows ``shown``; ``editable=False``: there is none."""
        self._shown = shown
        self._gone = not editable
        self._last = self._clock()
        self._attached.set()

    async def wait_attached(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._attached.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_closed(self, timeout: float | None = None) -> None:
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout)

    async def _run(self) -> None:
        await self._attached.wait()
        while True:
            await self._changed.wait()
            if not self._final:
                delay = self._last + self._interval - self._clock()
                if delay > 0:
                    try:  # a final text cuts the wait short
                        await asyncio.wait_for(self._final_set.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
            self._changed.clear()
            if self._due():
                # the slot first: texts that arrive meanwhile replace this one
                priority = await self._take_slot()
                text, final = self._wanted, self._final
                try:
                    with calls_as(priority, self._guild_id), prepaid(1 if self._budget is not None else 0):
                        if not await self._edit(text or "", final):
                            self._gone = True
                except Exception:
                    log.exception("status edit failed")
                self._shown, self._last = text, self._clock()
                if final:
                    return
            elif self._final:
                return  # the message is gone: nothing more to show

    async def _take_slot(self) -> Priority:
        """Wait for a slot in the call budget: a background one for a progress or place edit,
        an urgent one for the last edit, also when it arrives while a background one is awaited."""
        if self._final or self._budget is None:
            if self._budget is not None:
                await self._budget.take(Caller(Priority.URGENT, self._guild_id))
            return Priority.URGENT
        background = asyncio.ensure_future(self._budget.take(Caller(Priority.BACKGROUND, self._guild_id)))
        final = asyncio.ensure_future(self._final_set.wait())
        try:
            await asyncio.wait({background, final}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            final.cancel()
        if background.done() and not background.cancelled() and background.exception() is None:
            return Priority.BACKGROUND
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)
        await self._budget.take(Caller(Priority.URGENT, self._guild_id))
        return Priority.URGENT

    def _due(self) -> bool:
        """Whether the wanted text still has to be sent."""
        return self._wanted is not None and (self._wanted != self._shown or self._final) and not self._gone


class StatusBoard:
    """Every job's status message: its text (header and current line) and its edits."""

    def __init__(self, client: discord.Client, *, edit_interval_s: float, interaction_ttl_s: float,
                 interaction_margin_s: float, budget: CallBudget | None = None) -> None:
        self.client = client
        self.budget = budget
        self.edit_interval_s = edit_interval_s
        self.ttl_s = interaction_ttl_s
        self.margin_s = interaction_margin_s
        self._updaters: dict[str, StatusUpdater] = {}
        self._headers: dict[str, str] = {}
        self._channel_only: set[int] = set()  # status messages the interaction's webhook cannot edit

    def token_usable(self, job: Job) -> bool:
        return bool(job.interaction_token) and token_usable(job.token_created_at, self.ttl_s, self.margin_s)

    def webhook(self, job: Job) -> discord.Webhook:
        return discord.Webhook.partial(job.application_id, job.interaction_token, client=self.client)

    def _updater(self, job: Job) -> StatusUpdater:
        updater = self._updaters.get(job.job_id)
        if updater is None:
            async def edit(text: str, final: bool) -> bool:
                return await self._edit_status(job, job.status_message_id, text, final)
            updater = self._updaters[job.job_id] = StatusUpdater(edit, self.edit_interval_s, budget=self.budget,
                                                                 guild_id=job.guild_id or 0)
            header = words.status_header(job.job_id, job.preset, _styles(job))
            if job.parent_id:
                header += "\n" + words.remix_line(job.remix, job.parent_id)
            if job.restarts:
                header += "\n" + words.restart_note(job.user_id)
            self._headers[job.job_id] = header
        return updater

    def show(self, job: Job, line: str) -> None:
        """Show ``line`` under the job's header (as soon as the edit rate allows)."""
        self._updater(job).set(f"{self._headers.get(job.job_id, '')}\n{line}")

    def current_text(self, job: Job) -> str:
        """What the status message should say now (used to create it)."""
        return self._updater(job).wanted or f"{self._headers.get(job.job_id, '')}\n{words.starting_line()}"

    def attach(self, job: Job, shown: str | None) -> None:
        """The job's message exists now (``job.status_message_id``; None: there is none) and shows ``shown``."""
        self._updater(job).attach(shown, editable=job.status_message_id is not None)

    def restart(self, job: Job) -> None:
        """Before a restored job re-enters the line: its status text gets the restart note."""
        self._updaters.pop(job.job_id, None)
        self._updater(job)

    async def finish(self, job: Job, line: str) -> None:
        """The message's last text (the Cancel button goes); waits until it is sent."""
        updater = self._updater(job)
        await updater.wait_attached(timeout=30.0)  # the command may still be creating the message
        updater.set(f"{self._headers.get(job.job_id, '')}\n{line}", final=True)
        await updater.wait_closed(timeout=30.0)
        self._channel_only.discard(job.status_message_id or 0)
        self._updaters.pop(job.job_id, None)
        self._headers.pop(job.job_id, None)

    async def point_to_new(self, job: Job, old_message_id: int) -> None:
        """After a restart: the old status message says the job has a new one."""
        try:
            await self._edit_status(job, old_message_id,
                                    f"{words.status_header(job.job_id, job.preset, _styles(job))}"
                                    f"\n{words.moved_line()}", True)
        except Exception:
            log.info("old status message not updated", extra={"job_id": job.job_id})

    async def _edit_status(self, job: Job, message_id: int | None, text: str, final: bool) -> bool:
        if message_id is None:
            return False
        extra: dict[str, Any] = {"view": None} if final else {}  # the last edit removes the Cancel button
        if self.token_usable(job) and message_id not in self._channel_only:
            try:
                await self.webhook(job).edit_message(message_id, content=text, **extra)
                return True
            except discord.HTTPException as exc:
                if exc.status not in (401, 404):
                    raise
                # 404: the token expired, the message was deleted, or it is not the interaction's
                # (a status message posted in the channel: a remix's reply, or after a restart).
                # The channel tells which.
                log.info("interaction token cannot edit it; editing through the channel",
                         extra={"job_id": job.job_id, "status": exc.status, "code": exc.code})
        # After the token expires the bot can still edit its own message in the channel.
        message = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id).get_partial_message(
            message_id)
        try:
            await message.edit(content=text, **extra)
            self._channel_only.add(message_id)  # later edits go straight here
            return True
        except discord.HTTPException as exc:
            log.info("status message can no longer be edited",
                     extra={"job_id": job.job_id, "status": exc.status, "code": exc.code})
            return False


def _styles(job: Job) -> str:
    return words.styles_text(job.style_label, job.style2_label, job.blend)
