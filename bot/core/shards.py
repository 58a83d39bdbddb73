"""The gateway's shards as the bot sees them: which are up, since when each is down, and when
each may identify. Plain data and clocks, no Discord.

A bot in 2,500 servers or more must split its gateway connection into shards; a server's
events arrive on shard ``(guild_id >> 22) % shard_count``. :class:`ShardWatch` follows the
shards this process runs (told by the client's connect and disconnect events), so that
``/healthz`` can say a shard has been down too long and ``/stylebot status`` can say which.
:class:`IdentifyGate` spaces the shards' IDENTIFYs the way Discord allows: one per
``max_concurrency`` bucket (``shard_id % max_concurrency``) every 5 seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = ["ShardStatus", "ShardWatch", "IdentifyGate", "shard_of", "DOWN_TOO_LONG_S", "IDENTIFY_SPACING_S"]

DOWN_TOO_LONG_S = 60.0  # a shard down longer than this makes /healthz answer 503
IDENTIFY_SPACING_S = 5.0  # Discord: one IDENTIFY per max_concurrency bucket per 5 s


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard whose connection carries a server's events (Discord's formula)."""
    return (guild_id >> 22) % max(1, shard_count)


@dataclass(frozen=True)
class ShardStatus:
    """One shard at one moment."""

    shard_id: int
    connected: bool
    latency_ms: float | None  # the last heartbeat's round trip; None while down
    guilds: int  # servers on this shard that the bot knows
    down_for_s: float | None  # None while connected

    @property
    def down_too_long(self) -> bool:
        return self.down_for_s is not None and self.down_for_s > DOWN_TOO_LONG_S


class ShardWatch:
    """When each of this process's shards went down. A shard that never connected counts
    as down since the watch began (the process's start), so a shard that cannot connect at
    all is noticed too."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._down_since: dict[int, float] = {}
        self._up: set[int] = set()

    def expect(self, shard_ids: Iterable[int]) -> None:
        """The shards this process runs (known once the shard count is)."""
        for shard_id in shard_ids:
            if shard_id not in self._up:
                self._down_since.setdefault(shard_id, self._started)

    def age_s(self) -> float:
        """Seconds since the watch began."""
        return self._clock() - self._started

    @property
    def shard_ids(self) -> list[int]:
        return sorted(self._up | set(self._down_since))

    def connected(self, shard_id: int) -> None:
        self._up.add(shard_id)
        self._down_since.pop(shard_id, None)

    def disconnected(self, shard_id: int) -> None:
        if shard_id in self._up or shard_id not in self._down_since:
            self._up.discard(shard_id)
            self._down_since[shard_id] = self._clock()

    def down_for(self, shard_id: int) -> float | None:
        since = self._down_since.get(shard_id)
        return None if since is None else self._clock() - since


class IdentifyGate:
    """Waits until a shard may identify: at most one IDENTIFY per bucket per 5 s, where the
    bucket is ``shard_id % max_concurrency`` (Discord's session start limit). Shards in
    different buckets identify together, so a large bot starts in seconds, not minutes."""

    def __init__(self, max_concurrency: int = 1, spacing_s: float = IDENTIFY_SPACING_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self._spacing = spacing_s
        self._clock = clock
        self._next: dict[int, float] = {}  # bucket -> earliest time its next IDENTIFY may go
        self._lock = asyncio.Lock()

    def bucket(self, shard_id: int) -> int:
        return shard_id % self.max_concurrency

    async def wait_turn(self, shard_id: int) -> float:
        """Wait for ``shard_id``'s turn and take it; returns the seconds waited."""
        async with self._lock:  # turns are taken in order of asking
            bucket = self.bucket(shard_id)
            now = self._clock()
            wait = max(0.0, self._next.get(bucket, now) - now)
            self._next[bucket] = now + wait + self._spacing
        if wait:
            await asyncio.sleep(wait)
        return wait
