"""Getting a job's messages to its requester: the status message, the result, failure notices.

:class:`Messenger` is the scheduler's :class:`~bot.scheduler.JobListener`. It keeps one
public status message per job up to date through a :class:`StatusUpdater` (the latest text
wins, at most one edit per ``edit_interval_s``, because Discord rate-limits edits) and
delivers results along a chain of fallbacks:

1. the interaction's webhook (a followup), while its token is comfortably valid;
2. a normal message in the channel that mentions the requester (tokens expire after
   15 minutes; a long wait must not lose the result);
3. a direct message;

and logs an error naming the job if all three fail, so nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import time
from typing import Any, Awaitable, Callable

import discord
from PIL import Image

from nst_core.errors import ImageError
from nst_core.images import fit_to_bytes
from nst_core.pool.base import Failed, Finished, Progress, Retrying

from . import render
from .scheduler import Job

__all__ = ["Messenger", "StatusUpdater", "token_usable", "prepare_result", "RESULT_BASENAME"]

log = logging.getLogger(__name__)

RESULT_BASENAME = "stylized"
_ENVELOPE = 64 * 1024  # room for the JSON payload and multipart framing in an upload
_EXPIRED_CODES = {50027, 10015}  # invalid webhook token, unknown webhook


def token_usable(created_at: float, ttl_s: float, margin_s: float, now: float | None = None) -> bool:
    """Whether an interaction token created at ``created_at`` may still be used for a reply."""
    now = time.time() if now is None else now
    return now < created_at + ttl_s - margin_s


def prepare_result(image_png: bytes, history: list[dict[str, float]], limit: int) -> tuple[bytes, str, bytes | None]:
    """The result image fitted under ``limit`` bytes together with the loss chart.

    Returns ``(image bytes, extension, chart PNG or None)``; the chart is left out when the
    budget is too tight for both. Runs Pillow: call it in a thread.
    """
    chart: bytes | None = render.loss_chart_png(history)
    budget = limit - _ENVELOPE - len(chart)
    if budget < limit // 2:  # the chart would take too much of a small budget
        chart, budget = None, limit - _ENVELOPE
    budget = max(1024, budget)
    if len(image_png) <= budget:
        return image_png, "png", chart
    with Image.open(io.BytesIO(image_png)) as img:
        img.load()
        data, ext = fit_to_bytes(img, budget)
    return data, ext, chart


class StatusUpdater:
    """Edits one message so it shows the latest wanted text, at most once per ``interval``.

    ``set`` never blocks; intermediate texts are skipped when newer ones arrive. A
    ``final`` text is sent as soon as any edit in flight is done and ends the updater.
    Nothing is sent before :meth:`attach` (the message does not exist yet).
    """

    def __init__(self, edit: Callable[[str, bool], Awaitable[bool]], interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._edit = edit  # (text, final) -> False when the message can no longer be edited
        self._interval = interval
        self._clock = clock
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
            text, final = self._wanted, self._final
            if text is not None and (text != self._shown or final) and not self._gone:
                try:
                    if not await self._edit(text, final):
                        self._gone = True
                except Exception:
                    log.exception("status edit failed")
                self._shown, self._last = text, self._clock()
            if final:
                return


class Messenger:
    """Turns scheduler reports into Discord messages for each job."""

    def __init__(self, client: discord.Client, *, edit_interval_s: float, interaction_ttl_s: float,
                 interaction_margin_s: float) -> None:
        self.client = client
        self.edit_interval_s = edit_interval_s
        self.ttl_s = interaction_ttl_s
        self.margin_s = interaction_margin_s
        self._updaters: dict[str, StatusUpdater] = {}
        self._headers: dict[str, str] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- status message plumbing

    def _updater(self, job: Job) -> StatusUpdater:
        updater = self._updaters.get(job.job_id)
        if updater is None:
            async def edit(text: str, final: bool) -> bool:
                return await self._edit_status(job, text, final)
            updater = self._updaters[job.job_id] = StatusUpdater(edit, self.edit_interval_s)
            self._headers[job.job_id] = render.status_header(job.job_id, job.preset, job.style_label)
        return updater

    def _text(self, job: Job, line: str) -> str:
        return f"{self._headers.get(job.job_id, '')}\n{line}"

    def current_text(self, job: Job) -> str:
        """What the status message should say now (used to create it)."""
        return self._updater(job).wanted or self._text(job, render.starting_line())

    def attach(self, job: Job, message_id: int | None, shown: str | None) -> None:
        job.status_message_id = message_id
        self._updater(job).attach(shown, editable=message_id is not None)

    def token_usable(self, job: Job) -> bool:
        return token_usable(job.token_created_at, self.ttl_s, self.margin_s)

    def webhook(self, job: Job) -> discord.Webhook:
        return discord.Webhook.partial(job.application_id, job.interaction_token, client=self.client)

    async def _edit_status(self, job: Job, text: str, final: bool) -> bool:
        if job.status_message_id is None:
            return False
        extra: dict[str, Any] = {"view": None} if final else {}  # the last edit removes the Cancel button
        if self.token_usable(job):
            try:
                await self.webhook(job).edit_message(job.status_message_id, content=text, **extra)
                return True
            except discord.HTTPException as exc:
                if exc.status == 404 and exc.code not in _EXPIRED_CODES:
                    return False  # the message was deleted: stop editing it
                if exc.status not in (401, 404):
                    raise
                log.info("interaction token refused; editing through the channel",
                         extra={"job_id": job.job_id, "status": exc.status, "code": exc.code})
        # After the token expires the bot can still edit its own message in the channel.
        message = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id).get_partial_message(
            job.status_message_id)
        try:
            await message.edit(content=text, **extra)
            return True
        except discord.HTTPException as exc:
            log.info("status message can no longer be edited",
                     extra={"job_id": job.job_id, "status": exc.status, "code": exc.code})
            return False

    # -- JobListener

    def job_waiting(self, job: Job, position: int, eta_s: float | None) -> None:
        self._updater(job).set(self._text(job, render.waiting_line(position, eta_s)))

    def job_started(self, job: Job) -> None:
        self._updater(job).set(self._text(job, render.starting_line()))

    def job_progress(self, job: Job, event: Progress) -> None:
        elapsed = time.time() - job.started_at if job.started_at is not None else 0.0
        left = render.time_left(elapsed, event.step, event.total)
        line = render.progress_line(event.step, event.total, event.scale, event.scales, event.size, left)
        self._updater(job).set(self._text(job, line))

    def job_retrying(self, job: Job, event: Retrying) -> None:
        self._updater(job).set(self._text(job, render.retrying_line(event.reason)))

    def job_finished(self, job: Job, event: Finished) -> None:
        self._spawn(self._deliver_result(job, event), job)

    def job_failed(self, job: Job, event: Failed) -> None:
        self._spawn(self._deliver_failure(job, event), job)

    def _spawn(self, coro: Awaitable[None], job: Job) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"deliver-{job.job_id}")  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait for deliveries in progress (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    # -- endings

    async def _finish_status(self, job: Job, line: str) -> None:
        updater = self._updater(job)
        await updater.wait_attached(timeout=30.0)  # the command is still creating the message
        updater.set(self._text(job, line), final=True)
        await updater.wait_closed(timeout=30.0)
        self._updaters.pop(job.job_id, None)
        self._headers.pop(job.job_id, None)

    async def _deliver_result(self, job: Job, event: Finished) -> None:
        seconds = (job.finished_at - job.started_at) if job.finished_at and job.started_at else event.seconds
        await self._finish_status(job, render.done_line(seconds))
        summary = event.summary
        try:
            image, ext, chart = await asyncio.to_thread(prepare_result, event.image_png,
                                                        list(summary.get("history") or []), job.upload_limit)
        except ImageError as exc:
            reason = str(exc)
            await self.send_to_user(job, lambda late: {"content": render.failure_notice(job.user_id, job.job_id, reason)})
            return
        params = job.params
        embed_args = dict(job_id=job.job_id, preset=job.preset, seed=int(params.get("seed", 0)),
                          strength=float(params.get("strength", 1.0)),
                          preserve_colors=bool(params.get("preserve_colors", False)), style_label=job.style_label,
                          seconds=event.seconds, notes=event.notes)

        def make(late: bool) -> dict[str, Any]:
            files = [discord.File(io.BytesIO(image), f"{RESULT_BASENAME}.{ext}")]
            if chart is not None:
                files.append(discord.File(io.BytesIO(chart), render.CHART_FILENAME))
            return {"content": render.result_content(job.user_id, job.job_id, late=late),
                    "embed": render.result_embed(summary, chart=chart is not None, **embed_args), "files": files}

        await self.send_to_user(job, make)
        # The job's bytes are no longer needed; drop them so a long-lived record stays small.
        job.content = job.style = b""

    async def _deliver_failure(self, job: Job, event: Failed) -> None:
        if event.kind == "cancelled":
            await self._finish_status(job, render.cancelled_line(job.cancelled_by, job.user_id))
            return
        await self._finish_status(job, render.failed_line(event.reason))
        await self.send_to_user(job, lambda late: {"content": render.failure_notice(job.user_id, job.job_id,
                                                                                    event.reason)})

    async def send_to_user(self, job: Job, make: Callable[[bool], dict[str, Any]]) -> str | None:
        """Send a message for ``job``'s requester by the first route that works.

        ``make(late)`` builds fresh keyword arguments for each attempt (files are consumed
        by a send); ``late`` is true for routes other than the interaction. Returns the
        route used (``"interaction"``, ``"channel"``, ``"dm"``) or None.
        """
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        routes = (["interaction"] if self.token_usable(job) else []) + ["channel", "dm"]
        for route in routes:
            try:
                kwargs = {**make(route != "interaction"), "allowed_mentions": mentions}
                if route == "interaction":
                    await self.webhook(job).send(wait=True, **kwargs)
                elif route == "channel":
                    await self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id).send(**kwargs)
                else:
                    user = self.client.get_user(job.user_id) or await self.client.fetch_user(job.user_id)
                    await user.send(**kwargs)
            except discord.HTTPException as exc:
                log.warning("delivery route failed", extra={"job_id": job.job_id, "route": route,
                                                            "status": exc.status, "code": exc.code})
                continue
            except Exception:
                log.exception("delivery route failed", extra={"job_id": job.job_id, "route": route})
                continue
            log.info("delivered", extra={"job_id": job.job_id, "route": route})
            return route
        log.error("could not deliver to the requester by any route",
                  extra={"job_id": job.job_id, "user_id": job.user_id, "channel_id": job.channel_id})
        return None
