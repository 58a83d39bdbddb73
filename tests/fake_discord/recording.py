"""What the fake saw, and waiting for it: the event log and ``wait_for``.

Every request, gateway op, message and callback is appended to ``fake.events`` through
``_record``, which also wakes the coroutines blocked in ``wait_for``; tests read the records
(``events_of``, ``requests_to``) or wait on a predicate over them.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Callable, List, Optional

from .models import Event, RequestRecord

WaitPredicate = Callable[[], Any]


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
