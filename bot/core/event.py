"""A style event: a server paints in one style, votes, and gets a gallery. The vocabulary and
its rules, no Discord and no I/O.

An event is open from its start until ``closes_at`` (or until its host closes or cancels it);
its entries are ordinary jobs, each remembered as an :class:`Entry`. Votes: one per member per
entry, at most :data:`VOTES_PER_MEMBER` per member per event, never for one's own entry; the
counts stay hidden until the close. :func:`standings` orders the entries for the gallery.
"""

from __future__ import annotations

import enum
import math
import re
import secrets
from dataclasses import dataclass
from typing import Iterable, Mapping

from bot.core.refusals import EventRefused

__all__ = ["EventState", "StyleEvent", "Entry", "Standing", "standings", "parse_duration", "new_event_id",
           "MIN_DURATION_S", "MAX_DURATION_S", "VOTES_PER_MEMBER", "GALLERY_MOST", "OPEN_EVENTS_PER_SERVER",
           "MAX_ENTRIES_PER_MEMBER", "closed_refusal", "discord_time"]

MIN_DURATION_S = 10 * 60.0
MAX_DURATION_S = 7 * 86400.0
VOTES_PER_MEMBER = 3
GALLERY_MOST = 30  # entries drawn on the gallery; the rest are counted under it
OPEN_EVENTS_PER_SERVER = 3  # each holds a style picture and a timer: a server cannot start without end
MAX_ENTRIES_PER_MEMBER = 5


class EventState(str, enum.Enum):
    OPEN = "open"
    CLOSED = "closed"  # at its time or by its host: the gallery is (being) posted
    CANCELLED = "cancelled"  # by its host: entries in line were cancelled, no gallery


def new_event_id() -> str:
    return secrets.token_hex(5)


@dataclass(eq=False)
class StyleEvent:
    """One event in one server's channel. The ids of its Discord objects are filled in as they are made."""

    event_id: str
    guild_id: int
    channel_id: int  # where the card is
    host_id: int
    title: str
    style_label: str  # the painting's title, or the attached picture's file name
    library_style: str | None  # the library's name; None: the event keeps its own picture
    preset: str
    per_member: int  # entries each member may make
    closes_at: float  # epoch seconds
    created_at: float
    upload_limit: int  # bytes a message in that server may carry (the gallery fits it)
    state: EventState = EventState.OPEN
    card_message_id: int | None = None
    thread_id: int | None = None  # entries are posted there; None: in the channel itself
    scheduled_event_id: int | None = None
    gallery_message_id: int | None = None

    @property
    def is_open(self) -> bool:
        return self.state is EventState.OPEN

    @property
    def entries_channel_id(self) -> int:
        return self.thread_id or self.channel_id


@dataclass(eq=False)
class Entry:
    """One member's entry: a job of the event. ``message_id``: its picture in the thread, once posted."""

    event_id: str
    job_id: str
    user_id: int
    author: str  # the member's display name when they entered, for the gallery
    entered_at: float
    message_id: int | None = None
    removed: bool = False  # deleted by its author or a moderator: out of the event and the gallery
    has_picture: bool = False  # its thumbnail is kept for the gallery


@dataclass(frozen=True)
class Standing:
    place: int  # 1-based; entries with equal votes share a place
    entry: Entry
    votes: int


def standings(entries: Iterable[Entry], votes: Mapping[str, int]) -> list[Standing]:
    """The entries still in the event, most votes first; equal votes share a place and keep
    the order they were entered in (the earlier first)."""
    kept = sorted((e for e in entries if not e.removed), key=lambda e: (-votes.get(e.job_id, 0), e.entered_at))
    out: list[Standing] = []
    for i, entry in enumerate(kept):
        n = votes.get(entry.job_id, 0)
        place = out[-1].place if out and out[-1].votes == n else i + 1
        out.append(Standing(place, entry, n))
    return out


_UNITS = {"m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m)\b")


def discord_time(at: float, style: str = "f") -> str:
    """A Discord timestamp: each reader sees it in their own time zone."""
    return f"<t:{int(at)}:{style}>"


def parse_duration(text: str) -> float:
    """Seconds in ``"90m"``, ``"2h"``, ``"1d 12h"`` or a plain number of minutes, within the
    bounds; :class:`EventRefused` saying how to write it otherwise."""
    raw = " ".join(text.lower().split())
    if re.fullmatch(r"\d+", raw):
        seconds = int(raw) * 60.0
    else:
        parts = _PART.findall(raw)
        if not parts or _PART.sub("", raw).strip():
            raise EventRefused(f"`{text[:40]}` is not a duration the bot understands: write it like `45m`, `2h` "
                               "or `1d 12h` (between 10 minutes and 7 days).")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not MIN_DURATION_S <= seconds <= MAX_DURATION_S or not math.isfinite(seconds):
        raise EventRefused("An event lasts between 10 minutes and 7 days.")
    return seconds


def closed_refusal(event: StyleEvent) -> EventRefused:
    when = discord_time(event.closes_at)
    if event.state is EventState.CANCELLED:
        return EventRefused(f"The event **{event.title}** was cancelled by its host, so it takes no more entries or "
                            "votes.")
    return EventRefused(f"The event **{event.title}** closed at {when}, so it takes no more entries or votes.")

