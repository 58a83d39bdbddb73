"""The bot's budget of Discord calls: at most ``per_second`` REST calls in any window of a
little over a second, whatever the length of the line, served by priority, then server by server.

Discord allows a bot about 50 requests a second in all; past that it answers 429 and every
call waits behind the penalty, results and refusals included. So each call that counts
toward that limit, and each status edit whatever its route, takes a slot here first
(:mod:`bot.delivery.discord_calls` decides, for each request the client sends) and waits
while the window is full:

* ``URGENT`` calls (results, notices, refusals, replies to commands: the default) go first;
* ``BACKGROUND`` calls (progress and place-in-line edits) fill what is left, and never take
  the last ``reserve`` slots of a window, so an urgent call finds room at once.

Within a priority, servers take turns (round robin), then each server's calls go in order:
a server with 200 waiting jobs delays another server's edit by one call, not by 200.
Interaction callbacks (the 3-second deferrals) and the answers sent through an
interaction's webhook never wait here: Discord does not count them against the global limit,
and a member is waiting for them.

No Discord here; a call's priority and server come from the task that makes it
(:func:`calls_as`), so the code that makes a call need not know about the budget.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import enum
import time
from dataclasses import dataclass
from typing import Callable, Deque, Iterator

__all__ = ["CallBudget", "Priority", "Caller", "calls_as", "current_caller", "prepaid"]


# At most ``per_second`` calls in any 1.1 s, not 1 s: calls sent just inside one window can
# reach Discord bunched together (a slow upload, a busy loop), and must still arrive under its limit.
WINDOW_S = 1.1


class Priority(enum.IntEnum):
    URGENT = 0
    BACKGROUND = 1


@dataclass(frozen=True)
class Caller:
    """Who a call is for: its priority and the server it serves (0: none, e.g. command sync)."""

    priority: Priority = Priority.URGENT
    guild_id: int = 0


_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("discord_caller", default=Caller())
# Slots already taken for the calls about to be made (see :meth:`CallBudget.prepaid`).
_PREPAID: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("discord_prepaid", default=None)


def current_caller() -> Caller:
    return _CALLER.get()


@contextlib.contextmanager
def calls_as(priority: Priority, guild_id: int = 0) -> Iterator[None]:
    """The Discord calls made inside this block (in this task) are for ``guild_id`` at ``priority``."""
    token = _CALLER.set(Caller(priority, guild_id))
    try:
        yield
    finally:
        _CALLER.reset(token)


@contextlib.contextmanager
def prepaid(slots: int = 1) -> Iterator[None]:
    """The next ``slots`` calls in this block were paid for with :meth:`CallBudget.take` beforehand."""
    token = _PREPAID.set([slots])
    try:
        yield
    finally:
        _PREPAID.reset(token)


class CallBudget:
    """A sliding one-second window of calls, handed out by priority, then server by server."""

    def __init__(self, per_second: int, *, reserve: int | None = None, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_second < 1:
            raise ValueError("per_second must be at least 1")
        self.per_second = per_second
        # what background calls leave free in each window (a fifth, at least one)
        self.reserve = max(1, per_second // 5) if reserve is None else max(0, min(reserve, per_second - 1))
        self.window_s = window_s
        self._clock = clock
        self._sent: Deque[float] = collections.deque()  # when each call in the window took its slot
        # priority -> server -> waiting calls (the dict's order is the servers' turn order)
        self._waiting: dict[Priority, dict[int, Deque[asyncio.Future[None]]]] = {p: {} for p in Priority}
        self._timer: asyncio.TimerHandle | None = None
        self.granted = {p: 0 for p in Priority}  # calls that took a slot, by priority (for metrics)

    @property
    def waiting(self) -> int:
        return sum(len(q) for by_server in self._waiting.values() for q in by_server.values())

    def in_window(self) -> int:
        self._prune(self._clock())
        return len(self._sent)

    async def take(self, caller: Caller | None = None) -> None:
        """Wait for a slot for one call (``caller``: this task's, see :func:`calls_as`)."""
        caller = caller or _CALLER.get()
        paid = _PREPAID.get()
        if paid is not None and paid[0] > 0:
            paid[0] -= 1
            return
        now = self._clock()
        self._prune(now)
        if not self._ahead_of(caller.priority) and self._room(caller.priority):
            self._grant(caller.priority, now)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[caller.priority].setdefault(caller.guild_id, collections.deque()).append(future)
        self._arm()
        try:
            await future
        except asyncio.CancelledError:
            # a slot granted just as the caller went away stays spent: the window stays honest
            self._forget(caller, future)
            raise

    def _ahead_of(self, priority: Priority) -> bool:
        """Whether calls of this priority or a higher one are already waiting."""
        return any(self._waiting[p] for p in Priority if p <= priority)

    def _room(self, priority: Priority) -> bool:
        limit = self.per_second - (self.reserve if priority is Priority.BACKGROUND else 0)
        return len(self._sent) < limit

    def _grant(self, priority: Priority, now: float) -> None:
        self._sent.append(now)
        self.granted[priority] += 1

    def _prune(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.window_s:
            self._sent.popleft()

    def _forget(self, caller: Caller, future: asyncio.Future[None]) -> None:
        by_server = self._waiting[caller.priority]
        queue = by_server.get(caller.guild_id)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del by_server[caller.guild_id]

    def _pump(self) -> None:
        """Hand free slots to waiting calls: highest priority first, servers in turn."""
        self._timer = None
        now = self._clock()
        self._prune(now)
        for priority in Priority:
            by_server = self._waiting[priority]
            while by_server and self._room(priority):
                guild_id = next(iter(by_server))
                queue = by_server.pop(guild_id)
                future = queue.popleft()
                if queue:
                    by_server[guild_id] = queue  # back at the end: the next server's turn
                if future.done():
                    continue  # its caller gave up
                self._grant(priority, now)
                future.set_result(None)
            if by_server:
                break  # this priority still waits: nothing lower may go before it
        self._arm()

    def _arm(self) -> None:
        """Wake up when the oldest call leaves the window, if anyone is waiting."""
        if self._timer is not None or not self.waiting:
            return
        loop = asyncio.get_running_loop()
        delay = (self._sent[0] + self.window_s - self._clock()) if self._sent else 0.0
        self._timer = loop.call_later(max(0.0, delay) + 1e-3, self._pump)
