"""Shards: which server is on which, how long a shard has been down, when each may identify."""

from __future__ import annotations

import asyncio
import time

from bot.core.shards import DOWN_TOO_LONG_S, IdentifyGate, ShardStatus, ShardWatch, shard_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_server_is_on_the_shard_discord_sends_its_events_on():
    guild = (1234 << 22) | 99  # the timestamp part of the snowflake decides
    assert shard_of(guild, 4) == 1234 % 4
    assert shard_of(guild, 1) == 0


def test_a_shard_that_never_connected_counts_as_down_since_the_start():
    clock = Clock()
    watch = ShardWatch(clock)
    clock.now += 30
    watch.expect([0, 1])
    watch.connected(0)
    assert watch.down_for(0) is None
    assert watch.down_for(1) == 30
    clock.now += 31
    assert ShardStatus(1, False, None, 0, watch.down_for(1)).down_too_long


def test_a_reconnect_is_not_an_outage_but_a_minute_down_is():
    clock = Clock()
    watch = ShardWatch(clock)
    watch.expect([0])
    watch.connected(0)
    clock.now += 500
    watch.disconnected(0)
    clock.now += 10
    watch.disconnected(0)  # a second disconnect event does not restart the count
    clock.now += 10
    assert watch.down_for(0) == 20
    assert not ShardStatus(0, False, None, 3, watch.down_for(0)).down_too_long
    clock.now += DOWN_TOO_LONG_S
    assert ShardStatus(0, False, None, 3, watch.down_for(0)).down_too_long
    watch.connected(0)
    assert watch.down_for(0) is None and watch.shard_ids == [0]


async def test_shards_in_different_buckets_identify_together_and_one_bucket_waits_its_spacing():
    gate = IdentifyGate(max_concurrency=2, spacing_s=0.3)
    started = time.monotonic()
    waits = await asyncio.gather(gate.wait_turn(0), gate.wait_turn(1))
    assert waits == [0.0, 0.0] and time.monotonic() - started < 0.1
    # shard 2 shares shard 0's bucket: it waits out the spacing
    assert gate.bucket(2) == 0
    assert 0.2 < await gate.wait_turn(2) <= 0.3
    assert time.monotonic() - started >= 0.25


async def test_with_a_concurrency_of_one_every_identify_waits_for_the_one_before():
    gate = IdentifyGate(max_concurrency=1, spacing_s=0.1)
    waits = await asyncio.gather(*(gate.wait_turn(i) for i in range(3)))
    assert waits[0] == 0.0 and 0.05 < waits[1] <= 0.1 and 0.15 < waits[2] <= 0.2
