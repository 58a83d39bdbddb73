"""A style event's rules: durations, standings and the refusal that names the closing time."""

from __future__ import annotations

import pytest

from bot.core.event import (MAX_DURATION_S, MIN_DURATION_S, Entry, EventState, StyleEvent, closed_refusal,
                            parse_duration, standings)
from bot.core.refusals import EventRefused


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("45m", 2700), ("90 min", 5400), ("2h", 7200),
                                           ("1d 12h", 129600), ("1.5h", 5400), ("7d", 604800), ("30", 1800),
                                           (" 2H ", 7200)])
def test_durations_are_written_the_way_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["9m", "8d", "0", "6d 25h"])
def test_an_event_lasts_between_ten_minutes_and_seven_days(text):
    with pytest.raises(EventRefused, match="between 10 minutes and 7 days"):
        parse_duration(text)
    assert MIN_DURATION_S == 600 and MAX_DURATION_S == 7 * 86400


@pytest.mark.parametrize("text", ["soon", "2 hours", "1h and 2m", "-2h", "2h30", "1e3m", ""])
def test_other_texts_are_refused_with_how_to_write_one(text):
    with pytest.raises(EventRefused, match="`45m`, `2h` or `1d 12h`"):
        parse_duration(text)


def entry(job_id: str, user: int, at: float, removed: bool = False) -> Entry:
    return Entry(event_id="e1", job_id=job_id, user_id=user, author=f"member {user}", entered_at=at, removed=removed)


def test_standings_put_most_votes_first_and_ties_share_a_place_in_entry_order():
    entries = [entry("a", 1, 10.0), entry("b", 2, 5.0), entry("c", 3, 7.0), entry("d", 4, 1.0)]
    ranked = standings(entries, {"a": 3, "b": 1, "c": 1})
    assert [(s.place, s.entry.job_id, s.votes) for s in ranked] == [(1, "a", 3), (2, "b", 1), (2, "c", 1),
                                                                     (4, "d", 0)]


def test_a_removed_entry_is_not_in_the_standings_whatever_its_votes():
    ranked = standings([entry("a", 1, 1.0, removed=True), entry("b", 2, 2.0)], {"a": 5})
    assert [(s.place, s.entry.job_id) for s in ranked] == [(1, "b")]
    assert standings([], {}) == []


def event(state: EventState) -> StyleEvent:
    return StyleEvent(event_id="e1", guild_id=1, channel_id=2, host_id=3, title="Harbour", style_label="The Scream",
                      library_style="the-scream", preset="fast", per_member=1, closes_at=1_700_000_000.9,
                      created_at=1_699_990_000.0, upload_limit=8 << 20, state=state)


def test_a_closed_event_refuses_with_its_closing_time_in_each_readers_time_zone():
    assert "closed at <t:1700000000:f>" in str(closed_refusal(event(EventState.CLOSED)))
    assert "cancelled by its host" in str(closed_refusal(event(EventState.CANCELLED)))
    assert closed_refusal(event(EventState.CLOSED)).reason == "event"
