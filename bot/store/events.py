"""Style events in the job store (:mod:`bot.core.event`): the event, its entries (each one a
job) and its votes, so an event's deadline, entries and votes survive a restart.

The vote rules are kept here, in one transaction each, so two presses at once cannot slip
past them: one vote per member per entry, never one's own, at most ``limit`` per member per
event, and a second press takes the vote back. An event's style picture, when it was
attached rather than taken from the library, is kept in its row (the bot's own PNG, at most
the upload limit; a server has at most a few events open).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from bot.core.event import Entry, EventState, StyleEvent
from bot.core.job import JobState
from bot.core.refusals import EventRefused
from bot.store.room import SpoolRoom
from bot.store.schema import transaction

__all__ = ["EventRecords", "ENTRY_FAILED"]

# An entry whose job ended this way is no entry: it does not count against its member, nor in the gallery.
ENTRY_FAILED = tuple(s.value for s in (JobState.FAILED, JobState.NOTIFYING, JobState.NOTIFIED, JobState.UNNOTIFIED,
                                      JobState.CANCELLED))
_FAILED = ", ".join(f"'{s}'" for s in ENTRY_FAILED)
_ACTIVE = (f"e.removed = 0 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = e.job_id AND j.state IN ({_FAILED}))")
_EVENT_FIELDS = ("card_message_id", "thread_id", "scheduled_event_id", "gallery_message_id")


class EventRecords(SpoolRoom):
    """The events' records."""

    # ------------------------------------------------------------------ events

    async def add_event(self, event: StyleEvent, style_png: bytes | None) -> None:
        await self._run(self._add_event, event, style_png)

    def _add_event(self, event: StyleEvent, style_png: bytes | None) -> None:
        self.db.execute(
            "INSERT INTO events (event_id, guild_id, channel_id, host_id, title, style_label, library_style, "
            "style_png, preset, per_member, closes_at, created_at, upload_limit, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, event.guild_id, event.channel_id, event.host_id, event.title, event.style_label,
             event.library_style, style_png, event.preset, event.per_member, event.closes_at, event.created_at,
             event.upload_limit, event.state.value))

    async def set_event_fields(self, event_id: str, **fields: int | None) -> None:
        """Record the ids of the event's Discord objects (card, thread, scheduled event, gallery)."""
        unknown = set(fields) - set(_EVENT_FIELDS)
        if unknown:
            raise ValueError(f"not an event field: {sorted(unknown)}")
        names = ", ".join(f"{k} = ?" for k in fields)
        await self._run(lambda: self.db.execute(f"UPDATE events SET {names} WHERE event_id = ?",
                                                (*fields.values(), event_id)))

    async def end_event(self, event_id: str, state: EventState, closes_at: float | None = None) -> bool:
        """Close or cancel an open event (``closes_at``: it ended before its time, then); False
        when it was no longer open (someone else ended it first)."""
        return await self._run(lambda: self.db.execute(
            "UPDATE events SET state = ?, closes_at = COALESCE(?, closes_at) WHERE event_id = ? AND state = 'open'",
            (state.value, closes_at, event_id)).rowcount == 1)

    async def galleries_owed(self) -> list[StyleEvent]:
        """Closed events whose gallery has not been posted yet (the bot stopped, or Discord refused)."""
        return await self._run(self._events, "WHERE state = 'closed' AND gallery_message_id IS NULL", ())

    async def event(self, event_id: str) -> StyleEvent | None:
        rows = await self._run(self._events, "WHERE event_id = ?", (event_id,))
        return rows[0] if rows else None

    async def open_events(self) -> list[StyleEvent]:
        """Every open event, the one that closes first first."""
        return await self._run(self._events, "WHERE state = 'open' ORDER BY closes_at", ())

    async def open_events_in(self, guild_id: int) -> list[StyleEvent]:
        return await self._run(self._events, "WHERE state = 'open' AND guild_id = ? ORDER BY closes_at", (guild_id,))

    async def latest_event_in(self, guild_id: int, channel_id: int) -> StyleEvent | None:
        """The event started last in that channel (or with its entries in that thread), whatever its state."""
        rows = await self._run(self._events, "WHERE guild_id = ? AND (channel_id = ? OR thread_id = ?) "
                               "ORDER BY created_at DESC LIMIT 1", (guild_id, channel_id, channel_id))
        return rows[0] if rows else None

    def _events(self, where: str, args: tuple) -> list[StyleEvent]:
        return [_event(row) for row in self.db.execute(f"SELECT * FROM events {where}", args)]

    async def event_style(self, event_id: str) -> bytes | None:
        """An event's own style picture (None: it uses the library's)."""
        return await self._run(lambda: (self.db.execute("SELECT style_png FROM events WHERE event_id = ?",
                                                        (event_id,)).fetchone() or (None,))[0])

    def _purge_events(self, cutoff: float) -> int:
        """Forget events that ended before ``cutoff``, with their entries and votes (on the store's thread)."""
        ids = [r[0] for r in self.db.execute("SELECT event_id FROM events WHERE state != 'open' AND closes_at < ?",
                                             (cutoff,))]
        with transaction(self.db):
            for event_id in ids:
                for table in ("event_votes", "event_entries", "events"):
                    self.db.execute(f"DELETE FROM {table} WHERE event_id = ?", (event_id,))
        return len(ids)

    # ------------------------------------------------------------------ entries

    async def add_entry(self, entry: Entry) -> None:
        await self._run(lambda: self.db.execute(
            "INSERT INTO event_entries (job_id, event_id, user_id, author, entered_at) VALUES (?, ?, ?, ?, ?)",
            (entry.job_id, entry.event_id, entry.user_id, entry.author, entry.entered_at)))

    async def entry(self, job_id: str) -> Entry | None:
        rows = await self._run(self._entries, "WHERE e.job_id = ?", (job_id,))
        return rows[0] if rows else None

    async def entries(self, event_id: str) -> list[Entry]:
        """The event's entries still in it (not removed, their job not failed or cancelled), in order."""
        return await self._run(self._entries, f"WHERE e.event_id = ? AND {_ACTIVE} ORDER BY e.entered_at",
                               (event_id,))

    async def entries_of(self, event_id: str, user_id: int) -> int:
        """How many entries ``user_id`` has in the event (those that failed or were removed not counted)."""
        return await self._run(lambda: int(self.db.execute(
            f"SELECT COUNT(*) FROM event_entries e WHERE e.event_id = ? AND e.user_id = ? AND {_ACTIVE}",
            (event_id, user_id)).fetchone()[0]))

    async def unfinished_entries(self) -> list[tuple[str, str]]:
        """(job id, event id) of entries whose job is still waiting, running or being delivered."""
        done = ", ".join(f"'{s.value}'" for s in JobState if s.ended or s.value in ENTRY_FAILED)
        return await self._run(lambda: [(r[0], r[1]) for r in self.db.execute(
            f"SELECT e.job_id, e.event_id FROM event_entries e JOIN jobs j ON j.job_id = e.job_id "
            f"WHERE j.state NOT IN ({done})")])

    async def entries_in_line(self, event_id: str) -> list[Entry]:
        """The event's entries whose job is still waiting or running."""
        return await self._run(self._entries, "JOIN jobs j ON j.job_id = e.job_id WHERE e.event_id = ? AND "
                               "j.state IN ('waiting', 'running') ORDER BY e.entered_at", (event_id,))

    def _entries(self, where: str, args: tuple) -> list[Entry]:
        return [_entry(row) for row in self.db.execute(
            f"SELECT e.job_id, e.event_id, e.user_id, e.author, e.entered_at, e.message_id, e.removed, "
            f"e.thumb IS NOT NULL AS has_picture FROM event_entries e {where}", args)]

    async def entry_posted(self, job_id: str, message_id: int, thumb: bytes | None) -> None:
        """The entry's picture was posted (``message_id``); ``thumb``: a small copy for the gallery."""
        await self._run(lambda: self.db.execute(
            "UPDATE event_entries SET message_id = ?, thumb = COALESCE(?, thumb) WHERE job_id = ?",
            (message_id, thumb, job_id)))

    async def save_thumb(self, job_id: str, thumb: bytes) -> None:
        await self._run(lambda: self.db.execute("UPDATE event_entries SET thumb = ? WHERE job_id = ?",
                                                (thumb, job_id)))

    async def thumbs(self, job_ids: list[str]) -> dict[str, bytes]:
        def read() -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            for job_id in job_ids:
                row = self.db.execute("SELECT thumb FROM event_entries WHERE job_id = ?", (job_id,)).fetchone()
                if row is not None and row[0] is not None:
                    out[job_id] = bytes(row[0])
            return out
        return await self._run(read)

    async def remove_entry(self, job_id: str) -> bool:
        """Take an entry out of its event (and gallery) with its votes; False if it was not in one."""
        def remove() -> bool:
            with transaction(self.db):
                done = self.db.execute("UPDATE event_entries SET removed = 1, thumb = NULL WHERE job_id = ? AND "
                                       "removed = 0", (job_id,)).rowcount == 1
                self.db.execute("DELETE FROM event_votes WHERE job_id = ?", (job_id,))
            return done
        return await self._run(remove)

    # ------------------------------------------------------------------ votes

    async def toggle_vote(self, entry: Entry, voter_id: int, limit: int) -> tuple[bool, int]:
        """Vote for ``entry``, or take the vote back if there is one; returns (voted now, the
        voter's votes in the event after it). :class:`EventRefused` for one's own entry, or a
        vote beyond ``limit``."""
        return await self._run(self._toggle_vote, entry, voter_id, limit)

    def _toggle_vote(self, entry: Entry, voter_id: int, limit: int) -> tuple[bool, int]:
        if entry.user_id == voter_id:
            raise EventRefused("That is your own entry: you can vote for anyone's but yours.")
        with transaction(self.db):
            if self.db.execute("DELETE FROM event_votes WHERE job_id = ? AND voter_id = ?",
                               (entry.job_id, voter_id)).rowcount:
                return False, self._votes_of(entry.event_id, voter_id)
            used = self._votes_of(entry.event_id, voter_id)
            if used >= limit:
                raise EventRefused(f"You have used your {limit} votes in this event. Press Vote again on one of "
                                   "the entries you voted for to take that vote back, then vote for this one.")
            self.db.execute("INSERT INTO event_votes (event_id, job_id, voter_id, at) VALUES (?, ?, ?, ?)",
                            (entry.event_id, entry.job_id, voter_id, self.clock()))
            return True, used + 1

    def _votes_of(self, event_id: str, voter_id: int) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM event_votes WHERE event_id = ? AND voter_id = ?",
                                   (event_id, voter_id)).fetchone()[0])

    async def vote_counts(self, event_id: str) -> dict[str, int]:
        """Votes per entry (job id) of the event; entries without votes are left out."""
        return await self._run(lambda: {r[0]: int(r[1]) for r in self.db.execute(
            "SELECT job_id, COUNT(*) FROM event_votes WHERE event_id = ? GROUP BY job_id", (event_id,))})


def _event(row: sqlite3.Row) -> StyleEvent:
    fields: dict[str, Any] = {k: row[k] for k in (
        "event_id", "guild_id", "channel_id", "host_id", "title", "style_label", "library_style", "preset",
        "per_member", "closes_at", "created_at", "upload_limit", *_EVENT_FIELDS)}
    return StyleEvent(**fields, state=EventState(row["state"]))


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(event_id=row["event_id"], job_id=row["job_id"], user_id=row["user_id"], author=row["author"],
                 entered_at=row["entered_at"], message_id=row["message_id"], removed=bool(row["removed"]),
                 has_picture=bool(row["has_picture"]))
