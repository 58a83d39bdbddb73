"""The threads that check uploads, shared fairly between servers by the CPU time they used.

Decoding a stranger's picture is what the bot spends its own CPU on for each request, and a
crafted picture can cost a second or more even within the decode-cost checks. So checks do
not simply queue up: each one's CPU time (``time.thread_time`` on its thread) is charged to
its server for ``window_s``. When a thread frees, the next check is the waiting one whose
server used the least in the window (first come, first served within a server), so a server
that sends many costly pictures only ever delays another server's check by the one it is
running. With several threads one server may use all but one of them, so another server's
check can start at once however many costly pictures the first one sent. A server past
``share_s`` of CPU in the window waits until its older checks leave the window, even when
nobody else is waiting: its share is what it may use, not a priority.

No Discord here; the caller (:class:`bot.intake.uploads.UploadChecker`) decides what to tell whom.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import os
import threading
import time
from typing import Any, Callable, Deque, Generic, Hashable, TypeVar

__all__ = ["CheckPool", "Ticket"]

T = TypeVar("T")


CHECK_NICENESS = 10  # checks yield the CPU to the event loop and to jobs running beside them


def _lower_priority() -> None:
    """Run this check thread at a lower priority (Linux schedules threads one by one), so a
    server's costly pictures do not slow the jobs or the answers of every other server."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECK_NICENESS)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the fair order and the shares still hold


class Ticket(Generic[T]):
    """One check: waiting for a thread, running, or done. ``result`` is awaited by its caller."""

    def __init__(self, seq: int, server: Hashable, fn: Callable[[], T], result: "asyncio.Future[T]") -> None:
        self.seq = seq
        self.server = server
        self.fn = fn
        self.result = result
        self.started = False
        self.cpu_s = 0.0  # the check's CPU time, once it has run

    def _run(self) -> T:  # on a pool thread
        begun = time.thread_time()
        try:
            return self.fn()
        finally:
            self.cpu_s = time.thread_time() - begun


class CheckPool:
    """Runs checks on ``workers`` threads, fairly between servers; use from one event loop."""

    def __init__(self, workers: int, *, share_s: float, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workers = workers
        self.share_s = share_s
        self.window_s = window_s
        self.clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="upload-check",
                                                               initializer=_lower_priority)
        self._waiting: list[Ticket[Any]] = []
        self._running = 0
        self._running_for: dict[Hashable, int] = {}  # per server
        self._used: dict[Hashable, Deque[tuple[float, float]]] = {}  # server -> (ended at, CPU seconds)
        self._seq = itertools.count()
        self._wake: asyncio.TimerHandle | None = None
        self._closed = False

    # -- what the caller sees

    def submit(self, server: Hashable, fn: Callable[[], T]) -> Ticket[T]:
        """Queue ``fn`` for ``server``; await ``ticket.result``. Raises RuntimeError once closed."""
        if self._closed:
            raise RuntimeError("the check pool is closed")
        ticket: Ticket[T] = Ticket(next(self._seq), server, fn, asyncio.get_running_loop().create_future())
        self._waiting.append(ticket)
        self._dispatch()
        return ticket

    def withdraw(self, ticket: Ticket[Any]) -> bool:
        """Take a check that has not started out of the queue (its caller gave up); False once started."""
        if ticket.started:
            return False
        if ticket in self._waiting:
            self._waiting.remove(ticket)
            if not ticket.result.done():
                ticket.result.cancel()
        return True

    def used(self, server: Hashable) -> float:
        """CPU seconds ``server``'s checks used within the window."""
        return sum(cpu for _, cpu in self._recent(server))

    def over_share(self, server: Hashable) -> bool:
        return self.used(server) >= self.share_s

    def back_under_share_in(self, server: Hashable) -> float:
        """Seconds until ``server`` may start a check again (0: it may now)."""
        charges = self._recent(server)
        used = sum(cpu for _, cpu in charges)
        if used < self.share_s:
            return 0.0
        for ended, cpu in charges:  # oldest first: they leave the window in this order
            used -= cpu
            if used < self.share_s:
                return max(0.0, ended + self.window_s - self.clock())
        return self.window_s  # not reached: with every charge gone nothing is used

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.cancel()
        for ticket in self._waiting:
            if not ticket.result.done():
                ticket.result.cancel()
        self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the order

    def _recent(self, server: Hashable) -> Deque[tuple[float, float]]:
        charges = self._used.get(server)
        if charges is None:
            return collections.deque()
        cutoff = self.clock() - self.window_s
        while charges and charges[0][0] <= cutoff:
            charges.popleft()
        if not charges:
            del self._used[server]
        return charges

    def _next(self) -> Ticket[Any] | None:
        """The waiting check to start: least-used server under its share, oldest first."""
        best: tuple[float, int] | None = None
        chosen = None
        most = max(1, self.workers - 1)  # threads one server may hold: one stays for the others
        for ticket in self._waiting:
            used = self.used(ticket.server)
            if used >= self.share_s or self._running_for.get(ticket.server, 0) >= most:
                continue
            key = (used, ticket.seq)
            if best is None or key < best:
                best, chosen = key, ticket
        return chosen

    def _dispatch(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if len(self._used) > 1000:  # servers that went quiet: forget what has left the window
            for server in list(self._used):
                self._recent(server)
        while not self._closed and self._running < self.workers and self._waiting:
            ticket = self._next()
            if ticket is None:
                # Each waiting server is over its share (look again when one is not) or holds its
                # threads (a check that ends dispatches again).
                delays = [self.back_under_share_in(t.server) for t in self._waiting]
                if all(delays) and self._wake is None:
                    self._wake = asyncio.get_running_loop().call_later(max(0.05, min(delays)), self._dispatch)
                return
            self._waiting.remove(ticket)
            self._start(ticket)

    def _start(self, ticket: Ticket[Any]) -> None:
        ticket.started = True
        self._running += 1
        self._running_for[ticket.server] = self._running_for.get(ticket.server, 0) + 1
        try:
            running = asyncio.wrap_future(self._executor.submit(ticket._run))
        except RuntimeError as exc:  # shut down under us: the bot is stopping
            self._ended(ticket)
            ticket.result.set_exception(exc)
            return

        def ended(done: "asyncio.Future[Any]") -> None:
            self._ended(ticket)
            self._used.setdefault(ticket.server, collections.deque()).append((self.clock(), ticket.cpu_s))
            if not ticket.result.done():
                if done.cancelled():
                    ticket.result.cancel()
                elif done.exception() is not None:
                    ticket.result.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    ticket.result.set_result(done.result())
            elif not done.cancelled():
                done.exception()  # retrieved: a late failure is not "never retrieved"
            self._dispatch()
        running.add_done_callback(ended)

    def _ended(self, ticket: Ticket[Any]) -> None:
        self._running -= 1
        left = self._running_for[ticket.server] - 1
        if left:
            self._running_for[ticket.server] = left
        else:
            del self._running_for[ticket.server]
