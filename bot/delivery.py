"""Getting a job's messages to its requester: the status message, the result, failure notices.

:class:`Messenger` is the scheduler's :class:`~bot.scheduler.JobListener`. It keeps one
public status message per job up to date through a :class:`StatusUpdater` (the latest text
wins, at most one edit per ``edit_interval_s``, because Discord rate-limits edits), records
each change in the :class:`~bot.store.JobStore`, and delivers results along a chain of
fallbacks:

1. the interaction's webhook (a followup), while its token is comfortably valid;
2. a normal message in the channel that mentions the requester (tokens expire after
   15 minutes; a long wait, or a restart, must not lose the result);
3. a direct message.

Retries. discord.py itself retries Discord's 5xx answers within one attempt (1 s, 3 s, 5 s…
apart); ``[delivery] timeout_s`` bounds an attempt; after a timeout or a lost connection the
same route is tried ``retries`` more times, ``backoff_s`` apart and doubling; then the next
route. If every route failed for a passing reason, the whole chain runs again after
``redeliver_after_s`` (doubling, at most hourly); if each refused for good (no access, DMs
closed) the job is recorded ``undeliverable`` and an error names it.

Exactly once. The job's record says ``delivering`` (and the route) before each send and
``delivered`` (with the message id) after it. An attempt that ended without an answer may
still have posted its message, so before sending again the bot looks for it among the
channel's (or DM's) latest messages: its own message naming the job as a result or failure
notice (:func:`render.is_delivery_of`). A restart runs the same check for jobs it finds
``delivering`` (:mod:`bot.recovery`). Reading the history needs the Read Message History
permission; without it the bot sends again rather than risk sending nothing.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal

import aiohttp
import discord
from PIL import Image

from nst_core.errors import ImageError
from nst_core.images import fit_to_bytes
from nst_core.pool.base import Failed, Finished, Progress, Retrying

from . import render
from .config import DeliveryConfig
from .scheduler import Job

if TYPE_CHECKING:
    from .health import Metrics
    from .store import JobStore

__all__ = ["Messenger", "StatusUpdater", "Sent", "token_usable", "prepare_result", "RESULT_BASENAME"]

log = logging.getLogger(__name__)

RESULT_BASENAME = "stylized"
_ENVELOPE = 64 * 1024  # room for the JSON payload and multipart framing in an upload
_EXPIRED_CODES = {50027, 10015}  # invalid webhook token, unknown webhook
_HISTORY_LIMIT = 50  # messages searched for an earlier delivery (Discord allows 100 per request)
_MAX_REDELIVER_S = 3600.0

Kind = Literal["result", "notice"]


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
            self._task.add_done_callback(_log_failure)

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


def _log_failure(task: asyncio.Task) -> None:
    """A background task's failure is logged, never left to die unread."""
    if not task.cancelled() and task.exception() is not None:
        log.error("a background task failed", exc_info=task.exception(), extra={"task": task.get_name()})


@dataclass(frozen=True)
class Sent:
    """A message that reached the requester: by which route, its id, and whether it was
    found already posted (by an earlier attempt or before a restart) rather than sent now."""

    route: str
    message_id: int
    found: bool = False


class _Unchecked(Exception):
    """An earlier delivery could not be looked for; ``passing``: Discord is unreachable now."""

    def __init__(self, passing: bool) -> None:
        super().__init__("passing" if passing else "lasting")
        self.passing = passing


class Messenger:
    """Turns scheduler reports into Discord messages (and store records) for each job."""

    def __init__(self, client: discord.Client, *, edit_interval_s: float, interaction_ttl_s: float,
                 interaction_margin_s: float, store: "JobStore | None" = None, metrics: "Metrics | None" = None,
                 delivery: DeliveryConfig | None = None, retention_s: float = 7 * 86400.0) -> None:
        self.client = client
        self.edit_interval_s = edit_interval_s
        self.ttl_s = interaction_ttl_s
        self.margin_s = interaction_margin_s
        self.store = store
        self.metrics = metrics
        self.delivery = delivery or DeliveryConfig()
        self.retention_s = retention_s
        self._updaters: dict[str, StatusUpdater] = {}
        self._headers: dict[str, str] = {}
        self._tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._redeliveries: dict[str, int] = {}  # job id -> chains that failed for a passing reason

    # -- status message plumbing

    def _updater(self, job: Job) -> StatusUpdater:
        updater = self._updaters.get(job.job_id)
        if updater is None:
            async def edit(text: str, final: bool) -> bool:
                return await self._edit_status(job, job.status_message_id, text, final)
            updater = self._updaters[job.job_id] = StatusUpdater(edit, self.edit_interval_s)
            header = render.status_header(job.job_id, job.preset, job.style_label)
            if job.restarts:
                header += "\n" + render.restart_note(job.user_id)
            self._headers[job.job_id] = header
        return updater

    def _text(self, job: Job, line: str) -> str:
        return f"{self._headers.get(job.job_id, '')}\n{line}"

    def current_text(self, job: Job) -> str:
        """What the status message should say now (used to create it)."""
        return self._updater(job).wanted or self._text(job, render.starting_line())

    def attach(self, job: Job, message_id: int | None, shown: str | None) -> None:
        job.status_message_id = message_id
        self._updater(job).attach(shown, editable=message_id is not None)
        if message_id is not None and self.store is not None:
            self.store.note(job.job_id, status_message_id=message_id)

    def token_usable(self, job: Job) -> bool:
        return bool(job.interaction_token) and token_usable(job.token_created_at, self.ttl_s, self.margin_s)

    def webhook(self, job: Job) -> discord.Webhook:
        return discord.Webhook.partial(job.application_id, job.interaction_token, client=self.client)

    async def _edit_status(self, job: Job, message_id: int | None, text: str, final: bool) -> bool:
        if message_id is None:
            return False
        extra: dict[str, Any] = {"view": None} if final else {}  # the last edit removes the Cancel button
        if self.token_usable(job):
            try:
                await self.webhook(job).edit_message(message_id, content=text, **extra)
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
            message_id)
        try:
            await message.edit(content=text, **extra)
            return True
        except discord.HTTPException as exc:
            log.info("status message can no longer be edited",
                     extra={"job_id": job.job_id, "status": exc.status, "code": exc.code})
            return False

    # -- JobListener

    def job_waiting(self, job: Job, position: int, eta_s: float | None, note: str | None = None) -> None:
        self._updater(job).set(self._text(job, render.waiting_line(position, eta_s, note)))
        if self.store is not None:
            self.store.note(job.job_id, position=position)

    def job_started(self, job: Job) -> None:
        self._updater(job).set(self._text(job, render.starting_line()))
        if self.store is not None:
            self.store.note(job.job_id, state="running", started_at=job.started_at, worker=job.worker,
                            attempts=job.attempts, position=None)

    def job_progress(self, job: Job, event: Progress) -> None:
        elapsed = time.time() - job.started_at if job.started_at is not None else 0.0
        left = render.time_left(elapsed, event.step, event.total)
        line = render.progress_line(event.step, event.total, event.scale, event.scales, event.size, left)
        self._updater(job).set(self._text(job, line))

    def job_retrying(self, job: Job, event: Retrying) -> None:
        self._updater(job).set(self._text(job, render.retrying_line(event.reason)))

    def job_finished(self, job: Job, event: Finished) -> None:
        seconds = (job.finished_at - job.started_at) if job.finished_at and job.started_at else event.seconds
        if self.metrics is not None:
            self.metrics.job_ended("finished", seconds)
        self.spawn(self._deliver_result(job, event), job)

    def job_failed(self, job: Job, event: Failed) -> None:
        if self.metrics is not None:
            self.metrics.job_ended(event.kind)
        if self.store is not None:  # recorded at once, so a restart does not run it again
            if event.kind == "cancelled":
                self.store.note(job.job_id, remove_files=True, state="cancelled", cancelled_by=job.cancelled_by,
                                failure=event.reason, failure_kind=event.kind, finished_at=job.finished_at,
                                interaction_token="")
            else:
                self.store.note(job.job_id, remove_files=True, state="failed", failure=event.reason,
                                failure_kind=event.kind, finished_at=job.finished_at, notice="pending")
        self.spawn(self._deliver_failure(job, event), job)

    def job_paused(self, job: Job, was_running: bool) -> None:
        # Nothing to record: the store still says queued or running, which is what the next
        # start needs. The final edit drops the Cancel button; the next status message has one.
        self.spawn(self._finish_status(job, render.paused_line(was_running)), job)

    def spawn(self, coro: Awaitable[Any], job: Job) -> None:
        """Run ``coro`` (a delivery for ``job``) in the background; :meth:`drain` waits for it."""
        task = asyncio.get_running_loop().create_task(coro, name=f"deliver-{job.job_id}")  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def drain(self, timeout: float) -> None:
        """Wait for deliveries in progress (at shutdown); later retries are left to the next start."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
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
        if self.store is not None:
            try:  # on disk before any attempt to send: a crash from here on cannot lose it
                await self.store.save_result(job.job_id, event, job.finished_at)
            except Exception:
                log.exception("the result could not be saved; delivering it from memory", extra={"job_id": job.job_id})
        job.content = job.style = b""  # the inputs are no longer needed; keep the record small
        seconds = (job.finished_at - job.started_at) if job.finished_at and job.started_at else event.seconds
        await self._finish_status(job, render.done_line(seconds))
        await self.deliver_result(job, event)

    async def deliver_result(self, job: Job, event: Finished, *, unsure_route: str | None = None) -> Sent | None:
        """Send ``job``'s result once; ``unsure_route``: an earlier attempt there may have got through."""
        summary = event.summary
        try:
            image, ext, chart = await asyncio.to_thread(prepare_result, event.image_png,
                                                        list(summary.get("history") or []), job.upload_limit)
        except ImageError as exc:
            reason = str(exc)
            if self.store is not None:
                await self.store.update(job.job_id, remove_files=True, state="failed", failure=reason,
                                        failure_kind="error", notice="pending")
            return await self.deliver_notice(job, reason)
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

        return await self._deliver(job, make, "result", unsure_route)

    async def _deliver_failure(self, job: Job, event: Failed) -> None:
        if event.kind == "cancelled":
            await self._finish_status(job, render.cancelled_line(job.cancelled_by, job.user_id))
            return
        await self._finish_status(job, render.failed_line(event.reason))
        await self.deliver_notice(job, event.reason)

    async def deliver_notice(self, job: Job, reason: str, *, unsure_route: str | None = None) -> Sent | None:
        """Tell ``job``'s requester once that it did not finish, and why."""
        return await self._deliver(job, lambda late: {"content": render.failure_notice(job.user_id, job.job_id,
                                                                                       reason)},
                                   "notice", unsure_route)

    async def finish_status(self, job: Job, line: str) -> None:
        """Give a job's status message its last text (after a restart: it may still say "running")."""
        if job.status_message_id is not None:
            self.attach(job, job.status_message_id, None)
            await self._finish_status(job, line)

    # -- exactly-once delivery

    async def _deliver(self, job: Job, make: Callable[[bool], dict[str, Any]], kind: Kind,
                       unsure_route: str | None = None) -> Sent | None:
        """Deliver a result or notice by the first route that works, recording every step."""
        sent, passing, unsure = await self._try_routes(job, make, kind, unsure_route)
        if sent is not None:
            self._redeliveries.pop(job.job_id, None)
            await self._record_sent(job, kind, sent)
            return sent
        if self.metrics is not None:
            self.metrics.delivery_failures.inc()
        age = time.time() - (job.finished_at or job.created_at)
        if passing and age < self.retention_s:
            tries = self._redeliveries.get(job.job_id, 0)
            self._redeliveries[job.job_id] = tries + 1
            delay = min(_MAX_REDELIVER_S, self.delivery.redeliver_after_s * 2 ** tries)
            log.error("could not deliver to the requester yet; trying again later",
                      extra={"job_id": job.job_id, "kind": kind, "retry_in_s": delay})
            self._retry_later(delay, lambda: self._deliver(job, make, kind, unsure_route=unsure), job)
            return None
        log.error("could not deliver to the requester by any route",
                  extra={"job_id": job.job_id, "kind": kind, "user_id": job.user_id, "channel_id": job.channel_id})
        if self.store is not None:
            if kind == "result":
                await self.store.update(job.job_id, state="undeliverable")
            else:
                await self.store.update(job.job_id, notice="unsent", interaction_token="")
        return None

    def _retry_later(self, delay: float, again: Callable[[], Awaitable[Any]], job: Job) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(timer)
            self.spawn(again(), job)
        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    async def _record_sent(self, job: Job, kind: Kind, sent: Sent) -> None:
        log.info("delivered", extra={"job_id": job.job_id, "route": sent.route, "kind": kind,
                                     "message_id": sent.message_id, "found": sent.found})
        if self.metrics is not None:
            self.metrics.delivered(sent.route)
        if self.store is None:
            return
        now = time.time()
        try:
            if kind == "result":
                await self.store.update(job.job_id, remove_files=True, state="delivered", route=sent.route,
                                        message_id=sent.message_id, delivered_at=now, interaction_token="")
            else:
                await self.store.update(job.job_id, notice="sent", route=sent.route, message_id=sent.message_id,
                                        delivered_at=now, interaction_token="")
        except Exception:
            log.exception("could not record a delivery", extra={"job_id": job.job_id})

    async def _mark_sending(self, job: Job, kind: Kind, route: str) -> None:
        if self.store is None:
            return
        if kind == "result":
            await self.store.update(job.job_id, state="delivering", route=route)
        else:
            await self.store.update(job.job_id, notice="sending", route=route)

    async def _try_routes(self, job: Job, make: Callable[[bool], dict[str, Any]], kind: Kind,
                          unsure: str | None) -> tuple[Sent | None, bool, str | None]:
        """``(sent, passing, unsure)``: the delivery (or None), whether a failure may pass, and a
        route whose last attempt may yet have got through (to look at before the next try)."""
        cfg = self.delivery
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        routes = (["interaction"] if self.token_usable(job) else []) + ["channel", "dm"]
        passing = False
        for route in routes:
            attempt = 0
            while True:
                if unsure is not None:  # the last attempt may have got through: look before sending again
                    try:
                        found = await self.find_delivered(job, unsure, kind)
                    except _Unchecked as exc:
                        if exc.passing:
                            return None, True, unsure  # Discord is unreachable: do not risk a second copy now
                        found = None
                    if found is not None:
                        return Sent(unsure, found, found=True), False, None
                    unsure = None
                try:
                    await self._mark_sending(job, kind, route)
                except Exception:  # a broken disk must not keep the result from its requester
                    log.exception("could not record a delivery attempt; sending anyway", extra={"job_id": job.job_id})
                try:
                    kwargs = {**make(route != "interaction"), "allowed_mentions": mentions}
                    message_id = await asyncio.wait_for(self._send(job, route, kwargs), cfg.timeout_s)
                except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
                    unsure, passing = route, True
                    log.warning("delivery attempt got no answer", extra={
                        "job_id": job.job_id, "route": route, "attempt": attempt + 1, "error": repr(exc)})
                    if attempt < cfg.retries:
                        await asyncio.sleep(cfg.backoff_s * 2 ** attempt)
                        attempt += 1
                        continue
                    break
                except discord.HTTPException as exc:
                    server_side = exc.status >= 500 or exc.status == 429
                    if server_side:  # discord.py has retried 5xx answers already
                        unsure, passing = route, True
                    log.warning("delivery route failed", extra={"job_id": job.job_id, "route": route,
                                                                "status": exc.status, "code": exc.code})
                    break
                except Exception:
                    log.exception("delivery route failed", extra={"job_id": job.job_id, "route": route})
                    break
                return Sent(route, message_id), False, None
        if unsure is not None:
            try:
                found = await self.find_delivered(job, unsure, kind)
            except _Unchecked as exc:
                return None, passing, (unsure if exc.passing else None)
            if found is not None:
                return Sent(unsure, found, found=True), False, None
        return None, passing, None

    async def _send(self, job: Job, route: str, kwargs: dict[str, Any]) -> int:
        if route == "interaction":
            message = await self.webhook(job).send(wait=True, **kwargs)
        elif route == "channel":
            message = await self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id).send(**kwargs)
        else:
            user = self.client.get_user(job.user_id) or await self.client.fetch_user(job.user_id)
            message = await user.send(**kwargs)
        return message.id

    async def find_delivered(self, job: Job, route: str, kind: Kind) -> int | None:
        """The id of ``job``'s result (or notice) if the bot already posted it where ``route``
        sends, else None; raises :class:`_Unchecked` when it cannot look."""
        me = self.client.user.id if self.client.user is not None else job.application_id
        try:
            async def look() -> int | None:
                if route == "dm":
                    channel_id = int((await self.client.http.start_private_message(job.user_id))["id"])
                else:
                    channel_id = job.channel_id
                for message in await self.client.http.logs_from(channel_id, _HISTORY_LIMIT):
                    author = message.get("author") or {}
                    if str(author.get("id")) == str(me) and render.is_delivery_of(message.get("content"),
                                                                                  job.job_id, kind):
                        return int(message["id"])
                return None
            found = await asyncio.wait_for(look(), self.delivery.timeout_s)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("could not look for an earlier delivery", extra={"job_id": job.job_id, "error": repr(exc)})
            raise _Unchecked(passing=True) from None
        except discord.HTTPException as exc:
            passing = exc.status >= 500 or exc.status == 429
            log.warning("could not look for an earlier delivery%s" % ("" if passing else "; sending again"),
                        extra={"job_id": job.job_id, "status": exc.status, "code": exc.code})
            raise _Unchecked(passing=passing) from None
        log.info("looked for an earlier delivery", extra={"job_id": job.job_id, "route": route, "found": found})
        return found

    # -- plain messages (no exactly-once bookkeeping)

    async def send_to_user(self, job: Job, make: Callable[[bool], dict[str, Any]]) -> Sent | None:
        """Send a message for ``job``'s requester by the first route that works.

        ``make(late)`` builds fresh keyword arguments for each attempt (files are consumed
        by a send); ``late`` is true for routes other than the interaction.
        """
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        routes = (["interaction"] if self.token_usable(job) else []) + ["channel", "dm"]
        for route in routes:
            try:
                kwargs = {**make(route != "interaction"), "allowed_mentions": mentions}
                message_id = await asyncio.wait_for(self._send(job, route, kwargs), self.delivery.timeout_s)
            except Exception as exc:
                log.warning("message route failed", extra={"job_id": job.job_id, "route": route, "error": repr(exc)})
                continue
            return Sent(route, message_id)
        return None

    # -- after a restart

    def prepare_restored(self, job: Job) -> None:
        """Before a restored job re-enters the line: its status text gets the restart note."""
        self._updaters.pop(job.job_id, None)
        self._updater(job)

    async def announce_restored(self, job: Job) -> None:
        """Post a restored job's new status message (it mentions the requester, who is told the
        job is back in line) and point the old one at it."""
        from .commands import cancel_view  # the button lives with the commands

        old = job.status_message_id
        text = self.current_text(job)
        sent = await self.send_to_user(job, lambda late: {"content": text, "view": cancel_view(job.job_id)})
        if sent is None:
            log.error("could not tell the requester that their job is back in line", extra={"job_id": job.job_id})
        self.attach(job, sent.message_id if sent else None, text)
        if old is not None:
            try:
                await self._edit_status(job, old, f"{render.status_header(job.job_id, job.preset, job.style_label)}"
                                                  f"\n{render.moved_line()}", True)
            except Exception:
                log.info("old status message not updated", extra={"job_id": job.job_id})
