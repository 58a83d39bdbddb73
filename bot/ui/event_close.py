"""The end of a style event: closed at its time (or by its host) with one gallery, or cancelled.

One loop (:meth:`EventCloser.run`, a background task of the client) reads the open events
from the job store and sleeps until the next closing time; a new event wakes it. At start-up
its first pass closes whatever was due while the bot was down. A close is recorded first (the
event takes no more entries or votes from that moment), then the gallery is posted; a gallery
still owed after a failure or a restart is posted on the loop's next pass.

A cancel takes the event's entries out of the line and tells their members; entries already
painted stay theirs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time

import discord

from bot.core.event import GALLERY_MOST, EventState, Standing, StyleEvent, standings
from bot.render.gallery import GALLERY_BASENAME, gallery_caption, gallery_picture
from bot.render.words import clip
from bot.service.call_budget import Priority, calls_as
from bot.service.events import EventBook
from bot.service.scheduler import Scheduler
from bot.store.errors import StoreError
from bot.store.job_store import JobStore
from bot.ui.event_cards import EventCards

__all__ = ["EventCloser"]

log = logging.getLogger(__name__)

_IDLE_S = 3600.0  # the loop looks again at least this often
_RETRY_S = 60.0  # a gallery that could not be posted is tried again after this
_NO_GALLERY = 0  # gallery_message_id of a closed event whose gallery could not be posted anywhere


class EventCloser:
    """Closes and cancels events; the only writer of an event's state after its start."""

    def __init__(self, store: JobStore, book: EventBook, cards: EventCards, scheduler: Scheduler) -> None:
        self.store = store
        self.book = book
        self.cards = cards
        self.scheduler = scheduler
        self._wake = asyncio.Event()
        self._galleries: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, int] = {}

    def wake(self) -> None:
        """A new event (or a close time changed): look at the times again."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            try:
                events = await self.store.open_events()
                owed = await self.store.galleries_owed()
            except StoreError:
                log.exception("open events unreadable; trying again soon")
                events, owed = [], []
            for event in [e for e in events if e.closes_at <= now]:
                with calls_as(Priority.URGENT, event.guild_id):  # Discord calls for that server, in its turn
                    await self.close(event, by_user=None)
            retry = False
            for event in owed:
                with calls_as(Priority.URGENT, event.guild_id):
                    retry |= not await self._gallery(event)
            later = [e.closes_at for e in events if e.closes_at > now]
            wait = min([_IDLE_S, *(t - now for t in later)] + ([_RETRY_S] if retry else []))
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.05, wait))
            except asyncio.TimeoutError:
                pass

    async def close(self, event: StyleEvent, *, by_user: int | None) -> bool:
        """Close ``event`` now (at its time, or pressed by ``by_user``) and post its gallery;
        False when it was not open any more."""
        now = time.time()
        early = now < event.closes_at
        if not await self.store.end_event(event.event_id, EventState.CLOSED, now if early else None):
            return False
        if early:
            event.closes_at = now
            await self.cards.unschedule(event)  # at its time, it ends by itself
        event.state = EventState.CLOSED
        log.info("event closed", extra={"event_id": event.event_id, "guild_id": event.guild_id, "by": by_user})
        await self._gallery(event)
        return True

    async def cancel(self, event: StyleEvent, by_user: int) -> list[int] | None:
        """Cancel ``event``: its entries still in line are cancelled and their members told. Returns
        those members, or None when it was not open any more."""
        if not await self.store.end_event(event.event_id, EventState.CANCELLED, time.time()):
            return None
        event.state = EventState.CANCELLED
        told: list[int] = []
        for entry in await self.store.entries_in_line(event.event_id):
            if await self.scheduler.cancel(entry.job_id, by_user) and entry.user_id not in told:
                told.append(entry.user_id)
        log.info("event cancelled", extra={"event_id": event.event_id, "by": by_user, "entries_cancelled": len(told)})
        await self.cards.unschedule(event)
        await self.cards.finish(event, entries=len(await self.store.entries(event.event_id)))
        text = f"✖️ <@{by_user}> cancelled the event **{clip(event.title, 100)}**."
        if told:
            text += " These members' entries were still waiting and were cancelled (they do not count against " \
                    "your daily quota): " + " ".join(f"<@{u}>" for u in told)
        await self.cards.say(event, clip(text, 2000), mention=told)
        return told

    async def _gallery(self, event: StyleEvent) -> bool:
        """Post the closed event's gallery and give the card its winners; False to try again later."""
        lock = self._galleries.setdefault(event.event_id, asyncio.Lock())
        async with lock:
            fresh = await self.store.event(event.event_id)
            if fresh is None or fresh.gallery_message_id is not None:
                return True  # posted meanwhile
            try:
                ranked, shown, waiting = await self._standings(event)
                files = await self._gallery_files(event, ranked, shown)
            except (StoreError, OSError, ValueError):
                log.exception("the gallery could not be drawn", extra={"event_id": event.event_id})
                return await self._failed(event)
            under_card = discord.MessageReference(message_id=event.card_message_id or 0, channel_id=event.channel_id,
                                                  guild_id=event.guild_id, fail_if_not_exists=False)
            message = await self.cards.say(event, _closing_text(event, ranked, waiting), in_thread=False,
                                           mention=[s.entry.user_id for s in ranked if s.place == 1],
                                           files=files, reference=under_card)
            if message is None:
                return await self._failed(event)
            await self.store.set_event_fields(event.event_id, gallery_message_id=message.id)
            await self.cards.finish(event, entries=len(ranked), standings=ranked, gallery_url=message.jump_url)
            if event.thread_id:
                await self.cards.say(event, f"🏁 The event has closed. The gallery and the winners: "
                                            f"{message.jump_url}")
            return True

    async def redraw(self, event: StyleEvent) -> None:
        """An entry left a closed event: its gallery and winners are drawn again without it."""
        if event.gallery_message_id in (None, _NO_GALLERY):
            return
        ranked, shown, waiting = await self._standings(event)
        files = await self._gallery_files(event, ranked, shown)
        channel = self.cards.client.get_partial_messageable(event.channel_id, guild_id=event.guild_id)
        message = channel.get_partial_message(event.gallery_message_id)  # type: ignore[arg-type]
        try:
            await message.edit(content=_closing_text(event, ranked, waiting), attachments=files)
        except discord.HTTPException as exc:
            log.info("gallery not redrawn", extra={"event_id": event.event_id, "status": exc.status})
        await self.cards.finish(event, entries=len(ranked), standings=ranked, gallery_url=message.jump_url)

    async def _failed(self, event: StyleEvent) -> bool:
        """A gallery that could not be posted is tried again a few times, then given up (logged)."""
        tries = self._failures[event.event_id] = self._failures.get(event.event_id, 0) + 1
        if tries < 5:
            return False
        log.error("the event's gallery could not be posted; giving up", extra={"event_id": event.event_id})
        await self.store.set_event_fields(event.event_id, gallery_message_id=_NO_GALLERY)
        return True

    async def _gallery_files(self, event: StyleEvent, ranked: list[Standing],
                             shown: list[tuple[Standing, bytes | None]]) -> list[discord.File]:
        """The gallery picture (none when no entry was painted)."""
        if not ranked:
            return []
        data, ext = await asyncio.to_thread(gallery_picture, event.title, shown, len(ranked), event.upload_limit)
        return [discord.File(io.BytesIO(data), f"{GALLERY_BASENAME}.{ext}")]

    async def _standings(self, event: StyleEvent) -> tuple[list[Standing], list[tuple[Standing, bytes | None]], int]:
        """The painted entries in order, the top ones with their pictures, and how many are still being painted."""
        entries = await self.store.entries(event.event_id)
        pictures: dict[str, bytes | None] = {}
        for entry in entries:
            pictures[entry.job_id] = await self.book.thumb_of(entry)
        painted = [e for e in entries if pictures[e.job_id] is not None]
        ranked = standings(painted, await self.store.vote_counts(event.event_id))
        return ranked, [(s, pictures[s.entry.job_id]) for s in ranked[:GALLERY_MOST]], len(entries) - len(painted)


def _closing_text(event: StyleEvent, ranked: list[Standing], waiting: int) -> str:
    entries = "entry" if len(ranked) == 1 else "entries"
    lines = [f"🏁 **{clip(event.title, 100)}** has closed with {len(ranked)} {entries}."]
    if ranked:
        lines.append("Standings (votes were hidden until now):")
        lines += [f"{s.place}. <@{s.entry.user_id}> · {gallery_caption(s).rsplit(' · ', 1)[1]}"
                  for s in ranked[:10]]
        if len(ranked) > 10:
            lines.append(f"… and {len(ranked) - 10} more in the gallery.")
    if waiting:
        lines.append(f"{waiting} entr{'y was' if waiting == 1 else 'ies were'} still being painted at the close: "
                     "they are posted in the thread when done, outside the gallery.")
    return clip("\n".join(lines), 2000)
