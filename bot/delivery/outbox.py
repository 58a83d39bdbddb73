"""The outbox: a job's result, or its failure notice, reaches its requester exactly once.

Routes, in order: the interaction's webhook (a followup) while its token is comfortably
valid; a normal message in the channel that mentions the requester (tokens expire after 15
minutes; a long wait or a restart must not lose the result); a direct message.

Each attempt ends in one :class:`Outcome`, and :data:`NEXT` says what follows it:

* ``SENT``: recorded (the ledger's ``delivered``/``notified``), done;
* ``NO_ANSWER`` (a timeout or a lost connection): the message may have got through, so the
  route is *unsure*: look for it before any further send; retry the route ``retries`` times,
  ``backoff_s`` apart and doubling, then the next route;
* ``SERVER_ERROR`` (5xx, 429; discord.py has already retried): unsure too, next route;
* ``REFUSED`` (403, 404, DMs closed...): next route.

If every route failed for a passing reason, the whole chain runs again after
``redeliver_after_s`` (doubling, at most hourly) while the retention lasts; if each refused
for good, the job is recorded ``undeliverable`` (or ``unnotified``).

Exactly once. The ledger records ``delivering``/``notifying`` (and the route) before each
send. Before sending again after an unsure attempt, and at a restart for a job found
sending, the bot looks among the channel's (or DM's) latest messages for its own message
carrying this job's *marker*: ``stylebot result <job id>`` (or ``notice``) at the start of
an embed's footer. The marker is a protocol string of this module, not user wording, so
rewording what users read cannot break it. Reading the history needs Read Message History;
without it the bot sends again rather than risk sending nothing.
"""

from __future__ import annotations

import asyncio
import enum
import io
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Mapping, Sequence

import aiohttp
import discord
from PIL import Image

from nst_core.errors import ImageError
from nst_core.images import fit_to_bytes
from nst_core.pool.base import Finished

from bot.render import drawings

from bot.render import embeds, words
from bot.config import DeliveryConfig
from bot.core.job import ROUTES, Job
from bot.service.ledger import Ledger
from bot.delivery.status import StatusBoard

if TYPE_CHECKING:
    from bot.health import Metrics

__all__ = ["Outbox", "Sent", "Outcome", "marker", "is_delivery_of", "prepare_result", "RESULT_BASENAME"]

log = logging.getLogger(__name__)

RESULT_BASENAME = "stylized"
_ENVELOPE = 64 * 1024  # room for the JSON payload and multipart framing in an upload
_HISTORY_LIMIT = 50  # messages searched for an earlier delivery (Discord allows 100 per request)
_MAX_REDELIVER_S = 3600.0
_NOTICE_COLOUR = 0xC0392B

Kind = Literal["result", "notice"]


def marker(kind: Kind, job_id: str) -> str:
    """The machine-readable mark that opens the footer of every result and notice."""
    return f"stylebot {kind} {job_id}"


def is_delivery_of(embeds: Sequence[Mapping[str, Any]] | None, job_id: str, kind: Kind) -> bool:
    """Whether a message with these embeds (Discord's JSON) is ``job_id``'s result or notice."""
    mark = marker(kind, job_id)
    for embed in embeds or ():
        text = ((embed or {}).get("footer") or {}).get("text") or ""
        if text == mark or text.startswith(mark + " "):
            return True
    return False


def _stamp(kwargs: dict[str, Any], kind: Kind, job_id: str) -> dict[str, Any]:
    """Put the marker at the start of the first embed's footer (an embed is added if there is none)."""
    embed = kwargs.get("embed")
    if embed is None:
        embed = kwargs["embed"] = discord.Embed(colour=_NOTICE_COLOUR)
    rest = embed.footer.text if embed.footer and embed.footer.text else ""
    embed.set_footer(text=marker(kind, job_id) + (f" · {rest}" if rest else ""))
    return kwargs


def prepare_result(image_png: bytes, history: list[dict[str, float]], limit: int,
                   scale_starts: Sequence[int] | None = None) -> tuple[bytes, str, bytes | None]:
    """The result image fitted under ``limit`` bytes together with the loss chart.

    Returns ``(image bytes, extension, chart PNG or None)``; the chart is left out when the
    budget is too tight for both. ``scale_starts`` (from the loss summary) marks where each
    scale began on the chart. Runs Pillow: call it in a thread.
    """
    chart: bytes | None = drawings.loss_chart_png(history, scale_starts or ())
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


@dataclass(frozen=True)
class Sent:
    """A message that reached the requester: by which route, its id, and whether it was
    found already posted (by an earlier attempt or before a restart) rather than sent now."""

    route: str
    message_id: int
    found: bool = False


class Outcome(enum.Enum):
    SENT = "sent"
    NO_ANSWER = "no answer"  # it may have got through
    SERVER_ERROR = "server error"  # it may have got through
    REFUSED = "refused"  # it did not, and this route will not work


class _Unchecked(Exception):
    """An earlier delivery could not be looked for; ``passing``: Discord is unreachable now."""

    def __init__(self, passing: bool) -> None:
        super().__init__("passing" if passing else "lasting")
        self.passing = passing


@dataclass
class _Chain:
    """One run along the routes: where it is, and what it knows."""

    routes: list[str]
    index: int = 0
    attempt: int = 0  # attempts on the current route so far
    unsure: str | None = None  # a route whose last attempt may have got through
    passing: bool = False  # a failure that may pass (no answer, Discord's 5xx)

    @property
    def route(self) -> str | None:
        return self.routes[self.index] if self.index < len(self.routes) else None

    def next_route(self) -> None:
        self.index, self.attempt = self.index + 1, 0


Make = Callable[[str], dict[str, Any]]  # the route -> the message's keyword arguments, made afresh


class Outbox:
    """Sends results and notices exactly once; the ledger records every step."""

    def __init__(self, client: discord.Client, ledger: Ledger, board: StatusBoard, *,
                 delivery: DeliveryConfig | None = None, metrics: "Metrics | None" = None,
                 retention_s: float = 7 * 86400.0,
                 spawn: Callable[[Awaitable[Any], Job], None] | None = None,
                 result_view: Callable[[Job], discord.ui.View | None] | None = None) -> None:
        self.client = client
        self.ledger = ledger
        self.board = board
        self.delivery = delivery or DeliveryConfig()
        self.metrics = metrics
        self.retention_s = retention_s
        self._spawn = spawn
        self.result_view = result_view  # the buttons under a result (bot.ui.buttons.ResultViews)
        self._timers: set[asyncio.TimerHandle] = set()
        self._redeliveries: dict[str, int] = {}  # job id -> chains that failed for a passing reason

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    # -- what is sent

    def _routes(self, job: Job) -> list[str]:
        """The routes to try, in order: the interaction's reply while its token lasts."""
        return [r for r in ROUTES if r != "interaction" or self.board.token_usable(job)]

    async def deliver_result(self, job: Job, event: Finished, *, unsure_route: str | None = None,
                             before: bytes | None = None) -> Sent | None:
        """Send ``job``'s result once; ``unsure_route``: an earlier attempt there may have got
        through; ``before``: the content picture, for a "before | after" picture beside it."""
        summary = event.summary
        limit = job.upload_limit
        compare: tuple[bytes, str] | None = None
        if before and not self.ledger.stripped(job):  # stripped: its original was deleted meanwhile
            try:  # at most a third of the upload budget; the result comes first
                compare = await asyncio.to_thread(drawings.before_after_png, before, event.image_png, limit // 3)
                limit -= len(compare[0])
            except (ImageError, ValueError, OSError):
                log.warning("no room for before | after", extra={"job_id": job.job_id})
        try:
            image, ext, chart = await asyncio.to_thread(prepare_result, event.image_png,
                                                        list(summary.get("history") or []), limit,
                                                        summary.get("scale_starts"))
        except ImageError as exc:
            await self.ledger.give_up(job, str(exc))
            return await self.deliver_notice(job, str(exc))
        params = job.params
        embed_args = dict(job_id=job.job_id, preset=job.preset, seed=params.seed, strength=params.strength,
                          preserve_colors=params.preserve_colors, style_label=job.style_label,
                          style2_label=job.style2_label, blend=job.blend if job.style2_label else None,
                          seconds=event.seconds, notes=event.notes)
        view = self.result_view(job) if self.result_view is not None else None

        def make(route: str) -> dict[str, Any]:
            files = [discord.File(io.BytesIO(image), f"{RESULT_BASENAME}.{ext}")]
            if chart is not None:
                files.append(discord.File(io.BytesIO(chart), words.CHART_FILENAME))
            if compare is not None:
                files.append(discord.File(io.BytesIO(compare[0]), f"{drawings.BEFORE_AFTER_BASENAME}.{compare[1]}"))
            made = {"content": words.result_content(job.user_id, job.job_id,
                                                           late=route != "interaction" and bool(job.interaction_token)),
                    "embed": embeds.result_embed(summary, chart=chart is not None, **embed_args), "files": files}
            if view is not None and route != "dm":  # the buttons work in the server, not in a DM
                made["view"] = view
            return made

        return await self._deliver(job, make, "result", unsure_route)

    async def deliver_notice(self, job: Job, reason: str, *, unsure_route: str | None = None) -> Sent | None:
        """Tell ``job``'s requester once that it did not finish, and why."""
        return await self._deliver(job, lambda route: {"content": words.failure_notice(job.user_id, job.job_id,
                                                                                       reason)},
                                   "notice", unsure_route)

    # -- the chain

    async def _deliver(self, job: Job, make: Make, kind: Kind, unsure_route: str | None = None) -> Sent | None:
        """Deliver by the first route that works; then record it, retry later, or give up."""
        chain = _Chain(routes=self._routes(job), unsure=unsure_route)
        sent = await self._run(job, make, kind, chain)
        if sent is not None:
            self._redeliveries.pop(job.job_id, None)
            await self._record_sent(job, kind, sent)
            return sent
        if self.metrics is not None:
            self.metrics.delivery_failures.inc()
        age = time.time() - (job.finished_at or job.created_at)
        if chain.passing and age < self.retention_s:
            tries = self._redeliveries.get(job.job_id, 0)
            self._redeliveries[job.job_id] = tries + 1
            delay = min(_MAX_REDELIVER_S, self.delivery.redeliver_after_s * 2 ** tries)
            log.error("could not deliver to the requester yet; trying again later",
                      extra={"job_id": job.job_id, "kind": kind, "retry_in_s": delay})
            unsure = chain.unsure
            self._retry_later(delay, lambda: self._deliver(job, make, kind, unsure_route=unsure), job)
            return None
        log.error("could not deliver to the requester by any route",
                  extra={"job_id": job.job_id, "kind": kind, "user_id": job.user_id, "channel_id": job.channel_id})
        await self.ledger.unsent(job)
        return None

    async def _run(self, job: Job, make: Make, kind: Kind, chain: _Chain) -> Sent | None:
        retries = self.delivery.retries
        while True:
            if chain.unsure is not None:  # the last attempt may have got through: look before sending again
                try:
                    found = await self.find_delivered(job, chain.unsure, kind)
                except _Unchecked as exc:
                    if exc.passing:
                        chain.passing = True
                        return None  # Discord is unreachable: do not risk a second copy now
                    found = None
                if found is not None:
                    return Sent(chain.unsure, found, found=True)
                chain.unsure = None
            route = chain.route
            if route is None:
                return None
            outcome, message_id = await self._attempt(job, make, kind, route, chain.attempt)
            if outcome is Outcome.SENT:
                return Sent(route, message_id)  # type: ignore[arg-type]
            if outcome in (Outcome.NO_ANSWER, Outcome.SERVER_ERROR):
                chain.unsure, chain.passing = route, True
            if outcome is Outcome.NO_ANSWER and chain.attempt < retries:
                await asyncio.sleep(self.delivery.backoff_s * 2 ** chain.attempt)
                chain.attempt += 1
            else:
                chain.next_route()

    async def _attempt(self, job: Job, make: Make, kind: Kind, route: str, attempt: int) -> tuple[Outcome, int | None]:
        try:
            await self.ledger.sending(job, route)
        except Exception:  # a broken disk must not keep the result from its requester
            log.exception("could not record a delivery attempt; sending anyway", extra={"job_id": job.job_id})
        mentions = _requester_only(job)
        try:
            kwargs = {**_stamp(make(route), kind, job.job_id), "allowed_mentions": mentions}
            message_id = await asyncio.wait_for(self._send(job, route, kwargs), self.delivery.timeout_s)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("delivery attempt got no answer", extra={
                "job_id": job.job_id, "route": route, "attempt": attempt + 1, "error": repr(exc)})
            return Outcome.NO_ANSWER, None
        except discord.HTTPException as exc:
            log.warning("delivery route failed", extra={"job_id": job.job_id, "route": route,
                                                        "status": exc.status, "code": exc.code})
            server_side = exc.status >= 500 or exc.status == 429  # discord.py has retried 5xx answers already
            return (Outcome.SERVER_ERROR if server_side else Outcome.REFUSED), None
        except Exception:
            log.exception("delivery route failed", extra={"job_id": job.job_id, "route": route})
            return Outcome.REFUSED, None
        return Outcome.SENT, message_id

    def _retry_later(self, delay: float, again: Callable[[], Awaitable[Any]], job: Job) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(timer)
            if self._spawn is not None:
                self._spawn(again(), job)
        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    async def _record_sent(self, job: Job, kind: Kind, sent: Sent) -> None:
        log.info("delivered", extra={"job_id": job.job_id, "route": sent.route, "kind": kind,
                                     "message_id": sent.message_id, "found": sent.found})
        if self.metrics is not None:
            self.metrics.delivered(sent.route)
        try:
            await self.ledger.sent(job, sent.route, sent.message_id)
        except Exception:
            log.exception("could not record a delivery", extra={"job_id": job.job_id})

    async def _send(self, job: Job, route: str, kwargs: dict[str, Any]) -> int:
        if route == "interaction":
            message = await self.board.webhook(job).send(wait=True, **kwargs)
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
                    if str(author.get("id")) == str(me) and is_delivery_of(message.get("embeds"), job.job_id, kind):
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

    async def send_to_user(self, job: Job, make: Make) -> Sent | None:
        """Send a message for ``job``'s requester by the first route that works.

        ``make(route)`` builds fresh keyword arguments for each attempt (files are consumed
        by a send).
        """
        mentions = _requester_only(job)
        for route in self._routes(job):
            try:
                kwargs = {**make(route), "allowed_mentions": mentions}
                message_id = await asyncio.wait_for(self._send(job, route, kwargs), self.delivery.timeout_s)
            except Exception as exc:
                log.warning("message route failed", extra={"job_id": job.job_id, "route": route, "error": repr(exc)})
                continue
            return Sent(route, message_id)
        return None


def _requester_only(job: Job) -> discord.AllowedMentions:
    """A message may ping its requester, and no one else."""
    return discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
