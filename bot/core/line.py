"""The waiting line's order, its time estimates and what it shows; plain data, no jobs, no Discord.

:class:`FairLine` takes servers in turn, then members in turn within a server, then each
member's items in order; :class:`DurationStats` and :func:`estimate_start` say when an item
will start; :class:`LineStatus` and :class:`GuildLine` are what ``/stylebot status`` shows.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import statistics
from dataclasses import dataclass
from typing import Generic, Hashable, Iterable, Sequence, TypeVar

__all__ = ["FairLine", "DurationStats", "estimate_start", "start_estimates", "LineStatus", "GuildLine"]

T = TypeVar("T")


class _Rounds:
    """Round-robin bookkeeping: which round is being served, and each key's last served round.

    A key's k-th waiting item (0-based) is in round ``base(key) + k``: the round being served
    now, or the one after the key's last served item if that was in this round. Items are
    taken in (round, arrival) order, so a newcomer joins the current round and goes before
    the second item of a key that was already served in it.
    """

    def __init__(self) -> None:
        self.current = 0
        self._served: dict[Hashable, int] = {}

    def base(self, key: Hashable) -> int:
        served = self._served.get(key)
        return self.current if served is None else max(self.current, served + 1)

    def served(self, key: Hashable) -> bool:
        """Whether ``key`` was served in the current round."""
        return key in self._served

    def took(self, key: Hashable, rnd: int) -> None:
        self.current = rnd
        self._served[key] = rnd
        # Only keys served in the current round still affect anyone's base round.
        self._served = {k: r for k, r in self._served.items() if r >= self.current}


class _Lane(Generic[T]):
    """One server's waiting items: round-robin between its users, first come first served per user."""

    def __init__(self) -> None:
        self.queues: dict[Hashable, collections.deque[tuple[int, T]]] = {}
        self.rounds = _Rounds()

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def ordered(self) -> list[tuple[int, int, Hashable, T]]:
        """``(round, arrival, user, item)`` in the order this lane's items are taken."""
        entries = [(self.rounds.base(user) + k, seq, user, item)
                   for user, queue in self.queues.items() for k, (seq, item) in enumerate(queue)]
        entries.sort(key=lambda e: (e[0], e[1]))
        return entries

    def pop(self) -> T:
        rnd, _, user, item = self.ordered()[0]
        self.queues[user].popleft()
        if not self.queues[user]:
            del self.queues[user]
        self.rounds.took(user, rnd)
        return item

    def remove(self, item: T) -> bool:
        for user, queue in self.queues.items():
            for entry in queue:
                if entry[1] is item:
                    queue.remove(entry)
                    if not queue:
                        del self.queues[user]
                    return True
        return False


class FairLine(Generic[T]):
    """Round-robin between servers, then between users within a server, first come first
    served per user.

    Both levels use the same rounds (:class:`_Rounds`): a server's k-th item, in the order
    its own lane takes them, is in round ``base(server) + k``; so a busy server gets one turn
    per round like a quiet one, and within its turns its members take turns. Items are taken
    in (round, arrival) order; positions are computed from that same order, so they are exact.

    Items put back after a restart (:meth:`push_front`) form a front segment, taken first and
    in the order given, so the line resumes as it was.
    """

    def __init__(self) -> None:
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._rounds = _Rounds()
        self._seq = itertools.count()
        self._front: collections.deque[tuple[Hashable, Hashable, T]] = collections.deque()  # (guild, user, item)

    def __len__(self) -> int:
        return len(self._front) + sum(len(lane) for lane in self._lanes.values())

    def __contains__(self, item: object) -> bool:
        return any(it is item for it in self.order())

    def push(self, user: Hashable, item: T, guild: Hashable = None) -> None:
        lane = self._lanes.setdefault(guild, _Lane())
        lane.queues.setdefault(user, collections.deque()).append((next(self._seq), item))

    def push_front(self, user: Hashable, item: T, guild: Hashable = None) -> None:
        """Put ``item`` at the back of a front segment taken before every round: for jobs that
        were already in line (or running) before a restart, pushed in their old order."""
        self._front.append((guild, user, item))

    def waiting_of(self, user: Hashable) -> int:
        """Items of ``user`` waiting, in every server."""
        return (sum(1 for _, u, _ in self._front if u == user)
                + sum(len(lane.queues.get(user, ())) for lane in self._lanes.values()))

    def waiting_in(self, guild: Hashable) -> int:
        """Items waiting from ``guild``."""
        lane = self._lanes.get(guild)
        return sum(1 for g, _, _ in self._front if g == guild) + (len(lane) if lane else 0)

    def _ordered(self) -> list[tuple[int, int, Hashable, T]]:
        """``(round, arrival, guild, item)`` after the front segment, in the order taken."""
        entries = []
        for guild, lane in self._lanes.items():
            base = self._rounds.base(guild)
            entries.extend((base + k, seq, guild, item) for k, (_, seq, _, item) in enumerate(lane.ordered()))
        entries.sort(key=lambda e: (e[0], e[1]))
        return entries

    def order(self) -> list[T]:
        """Waiting items in the order they will be taken."""
        return [it for _, _, it in self._front] + [e[3] for e in self._ordered()]

    def position(self, item: T) -> int | None:
        """1-based place in :meth:`order` (1: taken next), or None if not waiting."""
        for i, it in enumerate(self.order(), 1):
            if it is item:
                return i
        return None

    def pop(self) -> T:
        if self._front:
            return self._front.popleft()[2]
        entries = self._ordered()
        if not entries:
            raise IndexError("the line is empty")
        rnd, _, guild, item = entries[0]
        lane = self._lanes[guild]
        taken = lane.pop()
        assert taken is item
        self._rounds.took(guild, rnd)
        self._prune()
        return item

    def _prune(self) -> None:
        # An empty lane still matters while its server was served in the current round (its
        # users' turns within that round); after that it carries nothing and can go.
        for guild in [g for g, lane in self._lanes.items() if not len(lane) and not self._rounds.served(g)]:
            del self._lanes[guild]

    def remove(self, item: T) -> bool:
        for entry in self._front:
            if entry[2] is item:
                self._front.remove(entry)
                return True
        for guild, lane in self._lanes.items():
            if lane.remove(item):
                self._prune()
                return True
        return False

    def clear(self) -> list[T]:
        items = self.order()
        self._lanes.clear()
        self._front.clear()
        return items


# --------------------------------------------------------------------------- estimates


class DurationStats:
    """Recent job durations (from start on a worker to the result), per preset."""

    def __init__(self, keep: int = 20) -> None:
        self._recent: collections.deque[tuple[str, float]] = collections.deque(maxlen=keep)

    def add(self, preset: str, seconds: float) -> None:
        self._recent.append((preset, max(0.0, seconds)))

    def __len__(self) -> int:
        return len(self._recent)

    def average(self, preset: str | None = None) -> float | None:
        """Mean of the recent jobs of ``preset`` (all recent jobs when it has none yet)."""
        values = [s for p, s in self._recent if p == preset] if preset is not None else []
        if not values:
            values = [s for _, s in self._recent]
        return statistics.fmean(values) if values else None


def start_estimates(durations: Sequence[float | None], running_left: Iterable[float],
                    workers: int) -> list[float | None]:
    """Seconds until each item of a line starts, in one pass: the i-th is
    ``estimate_start(durations[:i], running_left, workers)``. An item whose own duration is
    unknown still gets its estimate; those behind it get None. A line of N costs N log W,
    not the N² of asking for each item's estimate in turn."""
    free = sorted(list(running_left)[:max(1, workers)])
    free += [0.0] * (max(1, workers) - len(free))
    heapq.heapify(free)
    estimates: list[float | None] = []
    for duration in durations:
        estimates.append(free[0])
        if duration is None:
            break
        heapq.heapreplace(free, free[0] + duration)  # the worker that frees up first takes it
    return estimates + [None] * (len(durations) - len(estimates))


def estimate_start(ahead: Iterable[float], running_left: Iterable[float], workers: int) -> float:
    """Seconds until a job starts, given the durations of the jobs ahead of it and how long
    each running job still needs, with ``workers`` running in parallel (each job ahead goes
    to the worker that frees up first)."""
    workers = max(1, workers)
    free = sorted(list(running_left)[:workers])
    free += [0.0] * (workers - len(free))
    for duration in ahead:
        free.sort()
        free[0] += duration
    return min(free)


# --------------------------------------------------------------------------- what the line shows


@dataclass(frozen=True)
class LineStatus:
    waiting: int
    queue_max: int
    running: int
    capacity: int
    workers_alive: int
    average_s: float | None  # recent jobs, all presets
    recent_jobs: int
    accepting: bool
    pool_ready: bool
    workers_down: bool = False  # no worker could start; jobs wait (and new ones are refused) until one does


@dataclass(frozen=True)
class GuildLine:
    """One server's part of the line, for ``/stylebot status`` there."""

    waiting: int
    running: int
    positions: tuple[int, ...]  # places in the whole line of this server's waiting jobs
    per_guild_waiting: int
