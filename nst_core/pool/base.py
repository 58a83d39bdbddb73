"""The backend-neutral worker-pool interface: job specs, events, handles and the pool ABC.

Everything here is plain, picklable data or asyncio glue; nothing imports TensorFlow, so
the bot can use it in its own process. A backend (the local process pool in
:mod:`nst_core.pool.local`, the Ray cluster in :mod:`nst_core.pool.ray_pool`, both built on
:mod:`nst_core.pool.queueing`, which handles faults the same way for both) implements
:class:`WorkerPool` and feeds each job's events to its :class:`JobHandle` with
:meth:`JobHandle.deliver`.

Event semantics (the same for every backend):

* ``Queued`` is always the first event, emitted by ``submit``.
* ``Started`` when a worker has taken the job (it carries the worker's name and pid).
* ``Progress`` while it runs: throttled, with losses; ``preview_png`` only at the end of
  each scale. The last step is always reported.
* ``Retrying`` when the job starts over (its worker died and retries are allowed, or the
  GPU ran out of memory and the job continues at a smaller size). Another ``Started``
  follows and progress restarts from step 1.
* Exactly one terminal event ends every job: ``Finished`` (the PNG and the loss summary)
  or ``Failed`` (``reason`` is a sentence for the user; ``kind`` is one of
  :data:`FAILURE_KINDS`). A cancelled job ends with ``Failed(kind="cancelled")``; there is
  no separate cancelled event. Nothing is delivered after the terminal event.
"""

from __future__ import annotations

import abc
import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Union

from ..images import DEFAULT_MAX_PIXELS

__all__ = [
    "JobSpec", "Event", "TerminalEvent", "Queued", "Started", "Progress", "Retrying", "Finished",
    "Failed", "FailureKind", "FAILURE_KINDS", "JobHandle", "WorkerPool", "PoolStats", "PoolError",
    "PoolClosed", "WorkerStartError",
]

FailureKind = Literal[
    "invalid_input",  # an image could not be decoded, or a parameter is out of range
    "timeout",  # the job ran past its time limit; its worker was replaced
    "worker_died",  # the worker crashed or was killed (and no retry was left)
    "out_of_memory",  # the GPU ran out of memory even at the smallest size tried
    "cancelled",  # handle.cancel() was called
    "shutdown",  # the pool shut down without draining
    "error",  # anything else (a bug, missing weights, no worker could start)
]
FAILURE_KINDS: tuple[str, ...] = FailureKind.__args__  # type: ignore[attr-defined]


class PoolError(RuntimeError):
    """Misuse of a pool (not started, duplicate job id) or a pool that cannot work."""


class PoolClosed(PoolError):
    """``submit`` after ``shutdown`` began."""


class WorkerStartError(PoolError):
    """No worker could start (TensorFlow or the backbone failed to load, a worker was killed).

    Raised by ``start``. For a worker that failed to start the pool is still started and
    keeps retrying in the background; the caller shuts it down as always.
    """


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One stylisation, as plain data: encoded image bytes and ``StylizeParams.to_dict()``.

    ``timeout_s`` counts from the moment a worker takes the job (time spent waiting in a
    queue does not count); ``None`` uses the pool's default. ``retries`` is how many times
    the job is run again when its worker dies; ``None`` uses the pool's default.
    """

    content: bytes
    style: tuple[bytes, ...]  # one or several style images; a single ``bytes`` is accepted
    params: dict[str, Any] = field(default_factory=dict)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse inputs with more pixels than this
    timeout_s: float | None = None
    retries: int | None = None

    def __post_init__(self) -> None:
        style = self.style
        if isinstance(style, (bytes, bytearray, memoryview)):
            style = (style,)
        object.__setattr__(self, "style", tuple(bytes(s) for s in style))
        object.__setattr__(self, "content", bytes(self.content))
        if not self.style:
            raise ValueError("a job needs at least one style image")
        if not isinstance(self.params, dict):
            raise TypeError("params must be a dict (StylizeParams.to_dict())")
        if not self.job_id or not isinstance(self.job_id, str):
            raise ValueError("job_id must be a non-empty string")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.retries is not None and self.retries < 0:
            raise ValueError("retries must not be negative")


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int  # jobs ahead of this one in the pool's own waiting line (0: next)


@dataclass(frozen=True)
class Started:
    job_id: str
    worker: str  # e.g. "gpu0" or "cpu1"
    pid: int | None = None  # the worker's process id where there is one
    attempt: int = 1  # 2 and up after a retry


@dataclass(frozen=True)
class Progress:
    job_id: str
    step: int  # 1-based over all scales
    total: int
    scale: int  # 0-based
    scales: int
    size: tuple[int, int]  # (width, height) of the current scale
    losses: dict[str, float]  # content, style, tv, total
    preview_png: bytes | None = None  # small PNG, only at the last step of a scale


@dataclass(frozen=True)
class Retrying:
    job_id: str
    kind: str  # "worker_died" or "out_of_memory"
    reason: str  # a sentence for the user, e.g. "... retrying at 768 px."


@dataclass(frozen=True)
class Finished:
    job_id: str
    image_png: bytes
    summary: dict[str, Any]  # LossSummary.to_dict(); LossSummary.from_dict() restores it
    notes: tuple[str, ...] = ()  # the summary's notes, e.g. a smaller size after running out of memory
    worker: str = ""
    seconds: float = 0.0  # time the worker spent on the job (decode, stylise, encode)
    style_cache_hits: int = 0  # style-target cache hits in this job (0: computed afresh)


@dataclass(frozen=True)
class Failed:
    job_id: str
    reason: str  # a complete sentence a user can read
    kind: str = "error"  # one of FAILURE_KINDS

    @property
    def cancelled(self) -> bool:
        return self.kind == "cancelled"


TerminalEvent = Union[Finished, Failed]
Event = Union[Queued, Started, Progress, Retrying, Finished, Failed]


# --------------------------------------------------------------------------- handle


class JobHandle:
    """The caller's side of one job: an async iterator of its events, and ``cancel``.

    Iteration yields every event in order and stops after the terminal one. There is one
    consumer per handle. ``wait()`` returns the terminal event without consuming the
    iterator. Backends create handles and push events with :meth:`deliver`.
    """

    def __init__(self, job_id: str, canceller: Callable[[str], None]) -> None:
        self.job_id = job_id
        self._canceller = canceller
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._ended = asyncio.Event()
        self._terminal: TerminalEvent | None = None
        self._iteration_over = False

    # -- for consumers

    @property
    def done(self) -> bool:
        return self._terminal is not None

    @property
    def terminal(self) -> TerminalEvent | None:
        """The terminal event once delivered, else ``None``."""
        return self._terminal

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._iteration_over:
            raise StopAsyncIteration
        event = await self._events.get()
        if isinstance(event, (Finished, Failed)):
            self._iteration_over = True
        return event

    async def wait(self) -> TerminalEvent:
        """Wait for the job to end; returns its terminal event."""
        await self._ended.wait()
        assert self._terminal is not None
        return self._terminal

    async def cancel(self) -> bool:
        """Cancel the job and wait until it has ended.

        A queued job never reaches a worker; a running one stops within one step (or its
        worker is replaced if it does not). Returns True if the job ended as cancelled,
        False if it had already ended (or finished before the request took effect).
        """
        if self._terminal is None:
            self._canceller(self.job_id)
        terminal = await self.wait()
        return isinstance(terminal, Failed) and terminal.kind == "cancelled"

    # -- for backends

    def deliver(self, event: Event) -> bool:
        """Queue an event for the consumer; ignored (returns False) after the terminal one."""
        if self._terminal is not None:
            return False
        if isinstance(event, (Finished, Failed)):
            self._terminal = event
            self._ended.set()
        self._events.put_nowait(event)
        return True

    def __repr__(self) -> str:
        state = type(self._terminal).__name__ if self._terminal else "pending"
        return f"<JobHandle {self.job_id} {state}>"


# --------------------------------------------------------------------------- pool


@dataclass(frozen=True)
class PoolStats:
    capacity: int
    free_slots: int
    running: int  # jobs on a worker now
    queued: int  # jobs waiting inside the pool (0 when the caller respects free_slots)
    workers_alive: int  # workers started and ready
    restarts: int  # replacement workers started (after a crash, a timeout or a stuck cancel)
    submitted: int = 0
    finished: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by failure kind
    retries: int = 0  # Retrying events (worker death and out-of-memory)


class WorkerPool(abc.ABC):
    """Runs stylisation jobs on warm workers, at most ``capacity`` at once.

    ``free_slots`` is ``capacity`` minus the jobs the pool holds (running or waiting in
    it). A scheduler that submits only while ``free_slots > 0`` keeps the pool's own
    waiting line empty and so knows every job's exact position in its own line. Jobs
    submitted beyond capacity are accepted and wait in the pool, first in first out.

    Use it from one asyncio event loop (the one ``start`` ran on); ``submit`` never blocks.
    """

    @property
    @abc.abstractmethod
    def capacity(self) -> int: ...

    @property
    @abc.abstractmethod
    def free_slots(self) -> int: ...

    @property
    @abc.abstractmethod
    def workers_alive(self) -> int: ...

    @abc.abstractmethod
    def stats(self) -> PoolStats: ...

    @property
    def unavailable_reason(self) -> str | None:
        """Why no job can run now, as a short sentence for an operator; ``None`` while it can.

        ``None`` while the pool is open and at least one worker is ready (``workers_alive``).
        Otherwise e.g. ``"workers are starting"`` or ``"no worker could start: <why>;
        retrying in 8 s"``. Jobs submitted meanwhile wait in the pool.
        """
        return None if self.workers_alive > 0 else "workers are starting"

    @property
    def closed(self) -> bool:
        """True once the pool was shut down, or gave up at start (a cluster it could not reach):
        it starts no worker again, and a caller wanting workers needs a new pool."""
        return False

    @property
    def start_failing(self) -> bool:
        """True while no worker is ready because starting one failed (it is being retried):
        a caller can tell "no worker can start" from "a worker is being replaced"."""
        return False

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the workers; return once each has become ready or failed its first start.

        A worker that fails to start (or dies while starting) is started again after a
        growing delay, for as long as the pool is open. If none became ready, this raises
        :class:`WorkerStartError` with a readable reason, yet the pool stays started and keeps
        retrying in the background (``unavailable_reason`` says why no worker runs); call
        ``shutdown`` as always. A backend may also raise it for a fault it does not retry
        (e.g. its cluster cannot be reached); the pool is then already shut down, and
        ``unavailable_reason`` still says why.
        """

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> JobHandle:
        """Accept a job; its ``Queued`` event is already in the returned handle.

        Raises :class:`PoolClosed` after ``shutdown`` began and :class:`PoolError` for a
        job id that is still in the pool.
        """

    @abc.abstractmethod
    async def shutdown(self, drain: bool = False, timeout: float = 30.0) -> None:
        """Stop accepting jobs and stop every worker; idempotent.

        ``drain=True`` lets running and queued jobs finish (within ``timeout`` seconds,
        then they are cancelled); ``drain=False`` ends them now with
        ``Failed(kind="shutdown")``. Returns once no worker process is left.
        """

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every worker slot has a ready worker (e.g. after a replacement)."""
        async def poll() -> None:
            while self.workers_alive < self.capacity:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    async def __aenter__(self) -> "WorkerPool":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()
