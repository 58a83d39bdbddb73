"""Style events in the job store: the vote rules under one transaction each, entries that count,
removal, the close recorded once, the upgrade from version 5 and the purge."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3

import pytest

from bot.core.event import Entry, EventState, StyleEvent
from bot.core.job import Job
from bot.core.refusals import EventRefused
from bot.store.job_store import JobStore
from nst_core.params import StylizeParams

pytestmark = pytest.mark.timeout(30)

_ids = itertools.count(1)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path, clock):
    s = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool", retention_s=3600, clock=clock)
    await s.open()
    yield s
    await s.close()


def event(guild: int = 6, channel: int = 5, closes_at: float = 1_000_600.0, **fields) -> StyleEvent:
    return StyleEvent(event_id=f"{next(_ids):010x}", guild_id=guild, channel_id=channel, host_id=1, title="Harbour",
                      style_label="The Scream", library_style="the-scream", preset="fast", per_member=1,
                      closes_at=closes_at, created_at=1_000_000.0, upload_limit=8 << 20, **fields)


async def entered(store: JobStore, ev: StyleEvent, user: int, at: float = 1.0) -> Entry:
    """An entry with its job accepted in the store."""
    job = Job(job_id=f"{next(_ids):010x}", user_id=user, channel_id=ev.channel_id, guild_id=ev.guild_id,
              application_id=7, interaction_token="", token_created_at=0.0, upload_limit=8 << 20,
              params=StylizeParams(preset="fast", seed=1), content=b"c", style=b"s", style_label="The Scream")
    await store.accept(job)
    entry = Entry(event_id=ev.event_id, job_id=job.job_id, user_id=user, author=f"member {user}", entered_at=at)
    await store.add_entry(entry)
    return entry


async def test_one_vote_per_member_per_entry_a_second_press_takes_it_back(store):
    ev = event()
    await store.add_event(ev, None)
    a = await entered(store, ev, user=1)
    assert await store.toggle_vote(a, 2, 3) == (True, 1)
    assert await store.vote_counts(ev.event_id) == {a.job_id: 1}
    assert await store.toggle_vote(a, 2, 3) == (False, 0)
    assert await store.vote_counts(ev.event_id) == {}


async def test_never_for_ones_own_entry(store):
    ev = event()
    await store.add_event(ev, None)
    a = await entered(store, ev, user=1)
    with pytest.raises(EventRefused, match="your own entry"):
        await store.toggle_vote(a, 1, 3)
    assert await store.vote_counts(ev.event_id) == {}


async def test_three_votes_per_member_per_event_even_pressed_at_once(store):
    ev, other = event(), event(channel=9)
    await store.add_event(ev, None)
    await store.add_event(other, None)
    entries = [await entered(store, ev, user=u) for u in (1, 2, 3, 4, 5)]
    results = await asyncio.gather(*(store.toggle_vote(e, 9, 3) for e in entries), return_exceptions=True)
    assert sum(1 for r in results if isinstance(r, tuple)) == 3
    assert all("used your 3 votes" in str(r) for r in results if isinstance(r, EventRefused))
    assert sum((await store.vote_counts(ev.event_id)).values()) == 3
    # another event has its own three
    assert await store.toggle_vote(await entered(store, other, user=1), 9, 3) == (True, 1)


async def test_entries_of_a_member_leave_out_removed_and_failed_ones(store):
    ev = event()
    await store.add_event(ev, None)
    first = await entered(store, ev, user=1)
    second = await entered(store, ev, user=1, at=2.0)
    failed = await entered(store, ev, user=1, at=3.0)
    await store.toggle_vote(first, 2, 3)
    await store.update(failed.job_id, state="failed")
    assert await store.entries_of(ev.event_id, 1) == 2
    assert await store.remove_entry(first.job_id) is True
    assert await store.remove_entry(first.job_id) is False  # once
    assert await store.entries_of(ev.event_id, 1) == 1
    assert [e.job_id for e in await store.entries(ev.event_id)] == [second.job_id]
    assert await store.vote_counts(ev.event_id) == {}  # its votes went with it
    assert (await store.entry(first.job_id)).removed


async def test_an_event_is_closed_or_cancelled_once(store, clock):
    ev = event()
    await store.add_event(ev, b"style png")
    assert [e.event_id for e in await store.open_events()] == [ev.event_id]
    assert await store.event_style(ev.event_id) == b"style png"
    assert await store.end_event(ev.event_id, EventState.CLOSED, 1_000_100.0) is True
    assert await store.end_event(ev.event_id, EventState.CANCELLED) is False
    stored = await store.event(ev.event_id)
    assert stored.state is EventState.CLOSED and stored.closes_at == 1_000_100.0
    assert await store.open_events() == [] and [e.event_id for e in await store.galleries_owed()] == [ev.event_id]
    await store.set_event_fields(ev.event_id, gallery_message_id=77)
    assert await store.galleries_owed() == []
    with pytest.raises(ValueError):
        await store.set_event_fields(ev.event_id, state="open")


async def test_the_entries_in_line_are_those_still_waiting_or_running(store):
    ev = event()
    await store.add_event(ev, None)
    entries = [await entered(store, ev, u, at=float(u)) for u in (1, 2, 3)]
    await store.update(entries[1].job_id, state="running")
    await store.update(entries[2].job_id, state="cancelled")
    assert [e.job_id for e in await store.entries_in_line(ev.event_id)] == [entries[0].job_id, entries[1].job_id]
    assert set(dict(await store.unfinished_entries())) == {entries[0].job_id, entries[1].job_id}


async def test_ended_events_go_with_their_entries_and_votes_after_the_retention(store, clock):
    old, still_open = event(closes_at=1_000_010.0), event(channel=8, closes_at=1_000_010.0)
    for ev in (old, still_open):
        await store.add_event(ev, None)
    a = await entered(store, old, user=1)
    await store.toggle_vote(a, 2, 3)
    await store.end_event(old.event_id, EventState.CLOSED)
    clock.now += 3601 + 10
    await store.purge()
    assert await store.event(old.event_id) is None and await store.entry(a.job_id) is None
    assert await store.vote_counts(old.event_id) == {}
    assert await store.event(still_open.event_id) is not None  # an open event is never purged


async def test_a_version_5_store_gains_the_event_tables(tmp_path, clock):
    async with JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool", clock=clock):
        pass
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")  # as version 5 left it
    db.executescript("DROP TABLE events; DROP TABLE event_entries; DROP TABLE event_votes; PRAGMA user_version = 5;")
    db.close()
    async with JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool", clock=clock) as s:
        ev = event()
        await s.add_event(ev, None)
        assert (await s.event(ev.event_id)).title == "Harbour"
