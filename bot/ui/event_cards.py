"""A style event's Discord objects: its card (posted, kept up to date with the entries so far,
and given the winners at the end), the thread its entries go to, and the Discord scheduled
event beside it. Edits of a card are spaced out (:data:`CARD_EDIT_INTERVAL_S`): 200 entries
make a handful of edits, not 200."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from datetime import datetime, timezone
from typing import Sequence

import discord

from bot.core.event import Standing, StyleEvent
from bot.delivery.status import log_failure
from bot.render.event_card import STYLE_THUMB, card_embed, card_view
from bot.render.words import clip
from bot.service.call_budget import Priority, calls_as
from bot.store.errors import StoreError
from bot.store.job_store import JobStore

__all__ = ["EventCards", "CARD_EDIT_INTERVAL_S", "SCHEDULED_START_DELAY_S"]

log = logging.getLogger(__name__)

CARD_EDIT_INTERVAL_S = 5.0
SCHEDULED_START_DELAY_S = 60.0  # Discord takes a scheduled event only with a start in the future
_THREAD_ARCHIVE_MIN = 10080  # a week, the longest an event lasts: the thread stays open meanwhile


class EventCards:
    """Posts and edits events' cards; makes their threads and scheduled events."""

    def __init__(self, client: discord.Client, store: JobStore) -> None:
        self.client = client
        self.store = store
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshing: set[str] = set()
        self._last_edit: dict[str, float] = {}

    def _channel(self, event: StyleEvent, channel_id: int | None = None) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(channel_id or event.channel_id, guild_id=event.guild_id)

    def _lock(self, event_id: str) -> asyncio.Lock:
        return self._locks.setdefault(event_id, asyncio.Lock())

    # -- the start

    async def post(self, event: StyleEvent, thumb: bytes) -> discord.Message:
        """The card, in the event's channel (raises discord.HTTPException when the bot may not post there)."""
        return await self._channel(event).send(embed=card_embed(event, entries=0), view=card_view(event),
                                               file=discord.File(io.BytesIO(thumb), STYLE_THUMB))

    async def open_thread(self, event: StyleEvent, card_id: int) -> int | None:
        """A thread under the card for the entries; None when the bot may not make one."""
        try:
            data = await self.client.http.start_thread_with_message(
                event.channel_id, card_id, name=clip(f"Entries: {event.title}", 100),
                auto_archive_duration=_THREAD_ARCHIVE_MIN)  # type: ignore[arg-type]
            return int(data["id"])
        except discord.HTTPException as exc:
            log.info("no thread for the event's entries; they go to the channel",
                     extra={"event_id": event.event_id, "status": exc.status, "code": exc.code})
            return None

    async def schedule(self, event: StyleEvent, card_url: str) -> int | None:
        """A Discord scheduled event with the event's times (it starts a minute from now: Discord
        refuses a start in the past). None when Discord refused (the caller checked the permission)."""
        start = max(time.time() + SCHEDULED_START_DELAY_S, event.created_at + SCHEDULED_START_DELAY_S)
        end = max(event.closes_at, start + 60.0)
        try:
            data = await self.client.http.create_guild_scheduled_event(
                event.guild_id, name=clip(event.title, 100), privacy_level=2, entity_type=3,
                scheduled_start_time=_iso(start), scheduled_end_time=_iso(end),
                entity_metadata={"location": clip(card_url, 100)},
                description=clip(f"A style event: paint a picture in the style of {event.style_label}, then vote. "
                                 f"Join from the event's card: {card_url}", 1000))
            return int(data["id"])
        except discord.HTTPException as exc:
            log.warning("the scheduled event could not be created", extra={"event_id": event.event_id,
                                                                            "status": exc.status, "code": exc.code})
            return None

    async def unschedule(self, event: StyleEvent) -> None:
        """Take the scheduled event away (the event ended before its time)."""
        if not event.scheduled_event_id:
            return
        try:
            await self.client.http.delete_scheduled_event(event.guild_id, event.scheduled_event_id)
        except discord.HTTPException as exc:
            log.info("scheduled event not deleted", extra={"event_id": event.event_id, "status": exc.status})

    # -- while it is open

    def entries_changed(self, event: StyleEvent) -> None:
        """Show the new count of entries on the card, soon (edits are spaced out)."""
        if event.event_id in self._refreshing or event.card_message_id is None:
            return
        self._refreshing.add(event.event_id)
        with calls_as(Priority.BACKGROUND, event.guild_id):  # the task copies this: a count can wait its turn
            task = asyncio.get_running_loop().create_task(self._refresh(event.event_id), name="event-card")
        task.add_done_callback(log_failure)

    async def _refresh(self, event_id: str) -> None:
        try:
            wait = self._last_edit.get(event_id, 0.0) + CARD_EDIT_INTERVAL_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        finally:
            self._refreshing.discard(event_id)
        async with self._lock(event_id):
            try:
                event = await self.store.event(event_id)
                if event is None or not event.is_open:  # the final edit is the closer's
                    return
                count = len(await self.store.entries(event_id))
            except StoreError:
                log.exception("event card not refreshed", extra={"event_id": event_id})
                return
            await self._edit(event, embed=card_embed(event, entries=count))

    # -- the end

    async def finish(self, event: StyleEvent, *, entries: int, standings: Sequence[Standing] = (),
                     gallery_url: str | None = None) -> None:
        """The card's last look: closed with its winners and a link to the gallery, or cancelled; no buttons."""
        async with self._lock(event.event_id):
            await self._edit(event, embed=card_embed(event, entries=entries, standings=standings,
                                                     gallery_url=gallery_url), view=None)

    async def _edit(self, event: StyleEvent, **fields: object) -> None:
        if event.card_message_id is None:
            return
        self._last_edit[event.event_id] = time.monotonic()
        try:
            card = self._channel(event).get_partial_message(event.card_message_id)
            await card.edit(**fields)  # type: ignore[arg-type]
        except discord.HTTPException as exc:  # the card was deleted, or the channel is closed to the bot
            log.info("event card not edited", extra={"event_id": event.event_id, "status": exc.status})

    async def say(self, event: StyleEvent, text: str, *, mention: Sequence[int] = (), in_thread: bool = True,
                  **extra: object) -> discord.Message | None:
        """A message about the event in its thread (else its channel), pinging only ``mention``."""
        channel_id = event.entries_channel_id if in_thread else event.channel_id
        allowed = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(u) for u in mention])
        try:
            channel = self._channel(event, channel_id)
            return await channel.send(text, allowed_mentions=allowed, **extra)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            log.warning("event message not sent", extra={"event_id": event.event_id, "status": exc.status})
            return None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()
