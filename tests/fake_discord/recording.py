"""What the fake saw, and waiting for it: the event log and ``wait_for``.

Every request, gateway op, message and callback is appended to ``fake.events`` through
``_record``, which also wakes the coroutines blocked in ``wait_for``; tests read the records
(``events_of``, ``requests_to``, ``calls_per_second``) or wait on a predicate over them.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from .models import Event, RequestRecord
from .ratelimits import counts_toward_global

WaitPredicate = Callable[[], Any]


@dataclass(frozen=True)
class CallRate:
    """API calls per second over a span (``FakeDiscord.calls_per_second``)."""

    peak: int  #: the most calls in any 1 s (a sliding window)
    mean: float  #: calls / seconds
    total: int
    seconds: float


class RecordingMixin:
    """``FakeDiscord``'s event log and waiters (state: ``events``, ``requests``, ``_waiters``)."""

    def _record(self, kind: str, data: Any = None) -> Event:
        ev = Event(kind=kind, t=time.monotonic(), data=data)
        self.events.append(ev)
        self._wake()
        return ev

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_for(self, predicate: WaitPredicate, timeout: float = 10.0, *, what: Optional[str] = None) -> Any:
        """Wait until ``predicate()`` (no arguments) returns something truthy; return it.

        Re-evaluated after every recorded event (request, gateway op, message...) and at
        least every 0.1 s. Raises ``asyncio.TimeoutError`` with a description on timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                desc = what or getattr(predicate, "__name__", repr(predicate))
                raise asyncio.TimeoutError(f"timed out after {timeout}s waiting for {desc}; "
                                           f"last events: {self.events[-8:]!r}")
            fut = loop.create_future()
            self._waiters.append(fut)
            await asyncio.wait({fut}, timeout=min(remaining, 0.1))

    async def wait_for_event(self, kind: Optional[str] = None, predicate: Optional[Callable[[Event], Any]] = None,
                             timeout: float = 10.0, *, since: Optional[float] = None) -> Event:
        """Wait for an :class:`Event` of *kind* (and matching ``predicate(event)``).

        Events already recorded count unless ``since`` (a monotonic time) excludes them.
        """
        def find():
            for ev in self.events:
                if since is not None and ev.t < since:
                    continue
                if kind is not None and ev.kind != kind:
                    continue
                if predicate is None or predicate(ev):
                    return ev
            return None
        return await self.wait_for(find, timeout, what=f"event {kind!r}")

    def events_of(self, kind: str) -> List[Event]:
        return [e for e in self.events if e.kind == kind]

    def requests_to(self, path: str, method: Optional[str] = None) -> List[RequestRecord]:
        """Recorded requests whose path matches regex *path* (``re.search``)."""
        rx = re.compile(path)
        return [r for r in self.requests if rx.search(r.path) and (method is None or r.method == method.upper())]

    def calls_per_second(self, since: Optional[float] = None, until: Optional[float] = None, *,
                         global_only: bool = False) -> CallRate:
        """The bot's API calls per second between monotonic times *since* (default: the first
        call) and *until* (default: now): the peak over any 1 s and the mean (over at least 1 s).
        The attachment CDN is not the API and is left out; 429s count (they were calls).
        ``global_only`` counts only the calls Discord counts toward the global limit (with the bot
        token, not interaction endpoints; see ``ratelimits.counts_toward_global``)."""
        limiter = getattr(self, "rate_limiter", None)
        webhooks = bool(limiter and limiter.config.interaction_webhooks_global)
        until = time.monotonic() if until is None else until
        times = [r.t for r in self.requests if r.api and (since is None or r.t >= since) and r.t <= until
                 and (not global_only or counts_toward_global(r.method, r.path, r.authorized,
                                                              interaction_webhooks=webhooks))]
        if not times:
            return CallRate(peak=0, mean=0.0, total=0, seconds=0.0)
        peak, first = 0, 0
        for last, t in enumerate(times):  # requests are recorded in arrival order
            while t - times[first] >= 1.0:
                first += 1
            peak = max(peak, last - first + 1)
        seconds = until - (times[0] if since is None else since)
        return CallRate(peak=peak, mean=len(times) / max(seconds, 1.0), total=len(times), seconds=seconds)
