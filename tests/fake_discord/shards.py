"""Shards: which gateway session serves which guild, and the test-facing shard controls.

``FakeDiscord(shards=N, max_concurrency=M)`` (default 1 and 1). ``GET /gateway/bot`` answers
``"shards": N`` and ``session_start_limit`` ``{"total": 1000, "remaining", "reset_after",
"max_concurrency": M}`` (``remaining`` drops by one per accepted IDENTIFY, as on Discord).

IDENTIFY's ``shard`` (``[shard_id, shard_count]``), checked after the token and intents:

* missing while N > 1, or a count other than N → close **4011** "Sharding required" (Discord also
  takes more shards than it recommends; the fake insists on N so each guild has one shard);
* ``shard_id`` outside ``0..count-1`` → close **4010** "Invalid shard";
* an unsharded IDENTIFY when N == 1 is shard 0.

A guild belongs to shard ``(guild_id >> 22) % N`` (Discord's formula; guild ids are spread a
millisecond apart so that guilds made together spread over shards); DMs belong to shard 0. A
shard's session gets READY with ``shard: [id, N]`` listing only its guilds (unavailable), then
GUILD_CREATE for those only; every later event of a guild (INTERACTION_CREATE, MESSAGE_CREATE,
``dispatch``) goes to the *current session* of the guild's shard (the latest one to IDENTIFY or
RESUME for that shard id).

Identify concurrency: Discord allows one IDENTIFY per 5 s per bucket ``shard_id % max_concurrency``.
The fake does not refuse the excess; it records every IDENTIFY in ``shard_identifies`` and
``identify_concurrency_violations()`` lists the pairs that broke the rule. discord.py's
``AutoShardedClient`` (2.7) launches its shards one after another and sleeps 5 s before every
IDENTIFY but the first (``Client.before_identify_hook``), whatever ``max_concurrency`` says; a bot
that wants faster start-ups overrides that hook.

A shard down: ``await take_shard_down(i)`` closes shard i's socket with 4000 and, until
``bring_shard_up(i)``, answers its RESUMEs and IDENTIFYs with op 9 Invalid Session (``d: false``).
discord.py then IDENTIFYs again every ~5 s (the hook's sleep), reports ``on_shard_disconnect``
each time, and its ``ShardInfo.is_closed()`` is true in between.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .models import Guild, as_id, spread_snowflake

if TYPE_CHECKING:  # pragma: no cover
    from .gateway import GatewaySession

IDENTIFY_WINDOW_S = 5.0  # Discord: one IDENTIFY per bucket per 5 s
SESSION_START_TOTAL = 1000  # Discord's daily session starts for a bot below 150,000 guilds
SESSION_START_PERIOD_MS = 24 * 3600 * 1000


@dataclass(eq=False)
class ShardIdentify:
    """One IDENTIFY that got past the token and intents checks."""

    t: float  #: monotonic time it arrived
    shard_id: Optional[int]  #: None when it named no valid shard
    shard_count: Optional[int]
    accepted: bool  #: READY sent
    close_code: Optional[int] = None  #: 4010 / 4011 when refused that way
    invalid_session: bool = False  #: answered op 9 because the shard was taken down
    session_id: Optional[str] = None

    def __repr__(self) -> str:
        outcome = "ready" if self.accepted else ("op 9" if self.invalid_session else f"closed {self.close_code}")
        return f"<ShardIdentify shard={self.shard_id}/{self.shard_count} t={self.t:.3f} {outcome}>"


class ShardsMixin:
    """``FakeDiscord``'s shards (state: ``shard_count``, ``max_concurrency``, ``_shard_sessions``,
    ``shard_identifies``, ``shards_down``)."""

    # -- where guilds live (test-facing) ----------------------------------------
    def shard_of(self, guild: Any) -> int:
        """The shard id serving *guild* (a ``Guild`` or an id): ``(id >> 22) % shard_count``."""
        return (as_id(guild) >> 22) % self.shard_count

    def guilds_on_shard(self, shard_id: int) -> List[Guild]:
        return [g for g in self.guilds.values() if self.shard_of(g.id) == shard_id]

    def guild_on_shard(self, shard_id: int, *, members: int = 2) -> Guild:
        """The first guild on *shard_id*; when it has none, a new one (as ``add_guilds`` makes:
        a "general" channel and *members* users). Make it before the bot connects: the fake sends
        no GUILD_CREATE for guilds added later."""
        self._check_shard_id(shard_id)
        for guild in self.guilds.values():
            if self.shard_of(guild.id) == shard_id:
                return guild
        return self.add_guilds(1, members=members, name=f"Shard {shard_id} Guild", shard=shard_id)[0]

    def _snowflake_on_shard(self, shard_id: int) -> int:
        self._check_shard_id(shard_id)
        while True:  # consecutive guild snowflakes cycle through the shards
            gid = spread_snowflake()
            if self.shard_of(gid) == shard_id:
                return gid

    def _check_shard_id(self, shard_id: int) -> None:
        if not 0 <= shard_id < self.shard_count:
            raise ValueError(f"shard {shard_id} does not exist: the fake has {self.shard_count} shard(s)")

    # -- sessions per shard (test-facing) ----------------------------------------
    def shard_session(self, shard_id: int) -> Optional["GatewaySession"]:
        """The current session of *shard_id* (None before it identified)."""
        return self._shard_sessions.get(shard_id)

    def sessions_by_shard(self) -> Dict[int, List["GatewaySession"]]:
        """Every session that identified, by shard id, oldest first."""
        out: Dict[int, List["GatewaySession"]] = {}
        for session in self.sessions.values():
            out.setdefault(session.shard_id, []).append(session)
        return out

    def identify_concurrency_violations(self, window: float = IDENTIFY_WINDOW_S
                                        ) -> List[Tuple[ShardIdentify, ShardIdentify]]:
        """Pairs of IDENTIFYs in the same bucket (``shard_id % max_concurrency``) less than
        *window* seconds apart: what Discord's identify rate limit forbids."""
        last: Dict[int, ShardIdentify] = {}
        pairs: List[Tuple[ShardIdentify, ShardIdentify]] = []
        for ident in self.shard_identifies:
            if ident.shard_id is None:
                continue
            bucket = ident.shard_id % self.max_concurrency
            prev = last.get(bucket)
            if prev is not None and ident.t - prev.t < window:
                pairs.append((prev, ident))
            last[bucket] = ident
        return pairs

    # -- outages (test-facing) ----------------------------------------------------
    async def take_shard_down(self, shard_id: int) -> None:
        """Close *shard_id*'s socket (4000) and refuse it (op 9) until ``bring_shard_up``."""
        self._check_shard_id(shard_id)
        self.shards_down.add(shard_id)
        session = self._shard_sessions.get(shard_id)
        if session is not None and session.connection is not None:
            await session.connection.close(4000, b"shard taken down")
        self._record("shard_down", shard_id)

    def bring_shard_up(self, shard_id: int) -> None:
        """Let *shard_id* IDENTIFY again (discord.py does so within ~5 s)."""
        self.shards_down.discard(shard_id)
        self._record("shard_up", shard_id)

    # -- used by the gateway and the senders --------------------------------------
    def _session_for_guild(self, guild: Any) -> Optional["GatewaySession"]:
        """The current session of the shard serving *guild* (shard 0 for None: DMs)."""
        return self._shard_sessions.get(0 if guild is None else self.shard_of(guild))

    async def _wait_session_for(self, guild: Any) -> "GatewaySession":
        """Wait until the shard serving *guild* (None: DMs, shard 0) has a READY session."""
        return await self.wait_ready(shards=[0 if guild is None else self.shard_of(guild)])

    def _shard_of_identify(self, shard: Any) -> Tuple[Optional[int], Optional[int], Optional[Tuple[int, bytes]]]:
        """``(shard_id, shard_count, refusal)`` for IDENTIFY's ``shard`` field; refusal is the
        close ``(code, reason)`` Discord would send, else None."""
        if shard is None:
            if self.shard_count > 1:
                return None, None, (4011, b"Sharding required.")
            return 0, 1, None
        try:
            shard_id, count = int(shard[0]), int(shard[1])
        except (TypeError, ValueError, IndexError):
            return None, None, (4010, b"Invalid shard.")
        if count != self.shard_count:
            return None, count, (4011, b"Sharding required.")
        if not 0 <= shard_id < count:
            return None, count, (4010, b"Invalid shard.")
        return shard_id, count, None

    def _session_start_limit(self) -> Dict[str, int]:
        started = [i for i in self.shard_identifies if i.accepted]
        elapsed_ms = int((time.monotonic() - started[0].t) * 1000) if started else 0
        return {"total": SESSION_START_TOTAL, "remaining": max(SESSION_START_TOTAL - len(started), 0),
                "reset_after": max(SESSION_START_PERIOD_MS - elapsed_ms, 0),
                "max_concurrency": self.max_concurrency}
