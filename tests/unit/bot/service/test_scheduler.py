"""The fair waiting line and the scheduler, against an in-memory pool (no processes, no Discord)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bot.core.job import Job, JobState
from bot.service.ledger import Ledger
import random

from bot.core.line import DurationStats, FairLine, estimate_start, start_estimates
from bot.core.refusals import LineFull, NotAccepting, UserLimitReached
from bot.service.scheduler import Scheduler
from nst_core.params import StylizeParams
from nst_core.pool.base import Failed, Finished, JobHandle, JobSpec, PoolStats, Progress, Queued, Started, WorkerPool

pytestmark = pytest.mark.timeout(20)


# --------------------------------------------------------------------------- the line alone


def drain(line: FairLine) -> list:
    out = []
    while len(line):
        out.append(line.pop())
    return out


def test_round_robin_between_users_fifo_per_user():
    line: FairLine[str] = FairLine()
    for item in ("a1", "a2", "a3"):
        line.push("alice", item)
    for item in ("b1", "b2"):
        line.push("bob", item)
    line.push("carol", "c1")
    assert line.order() == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert [line.position(x) for x in ("a1", "b1", "c1", "a2")] == [1, 2, 3, 4]
    assert drain(line) == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_newcomer_goes_before_the_second_job_of_someone_already_served():
    line: FairLine[str] = FairLine()
    line.push("alice", "a1")
    assert line.pop() == "a1"  # alice's first job is running
    line.push("alice", "a2")
    line.push("alice", "a3")
    line.push("bob", "b1")
    line.push("bob", "b2")
    assert line.order() == ["b1", "a2", "b2", "a3"]
    assert line.position("b1") == 1 and line.position("a3") == 4


def test_positions_predict_the_real_order_as_jobs_arrive_between_pops():
    line: FairLine[str] = FairLine()
    script = [("push", "alice", "a1"), ("push", "alice", "a2"), ("pop",), ("push", "bob", "b1"),
              ("push", "carol", "c1"), ("pop",), ("push", "bob", "b2"), ("push", "alice", "a3")]
    for step in script:
        if step[0] == "push":
            line.push(step[1], step[2])
        else:
            line.pop()
    predicted = line.order()
    assert drain(line) == predicted


def test_remove_and_per_user_counts():
    line: FairLine[str] = FairLine()
    line.push("alice", "a1")
    line.push("alice", "a2")
    line.push("bob", "b1")
    assert line.waiting_of("alice") == 2 and len(line) == 3
    assert line.remove("a1") and not line.remove("a1")
    assert line.order() == ["a2", "b1"] and line.waiting_of("alice") == 1
    assert line.clear() == ["a2", "b1"] and len(line) == 0
    with pytest.raises(IndexError):
        line.pop()


def test_estimates():
    assert estimate_start([], [], 1) == 0
    assert estimate_start([10, 10], [5], 1) == 25
    assert estimate_start([10, 10, 10], [4, 0], 2) == 14  # two workers share the jobs ahead
    stats = DurationStats(keep=3)
    assert stats.average() is None
    for preset, s in (("fast", 2), ("fast", 4), ("best", 30)):
        stats.add(preset, s)
    assert stats.average("fast") == 3 and stats.average("best") == 30
    assert stats.average("balanced") == 12  # no history for it: all recent jobs


def test_a_whole_lines_estimates_in_one_pass_match_each_items_own():
    rng = random.Random(7)
    for _ in range(50):
        durations = [rng.choice([5.0, 12.5, 60.0]) for _ in range(rng.randint(0, 30))]
        running = [rng.uniform(0, 30) for _ in range(rng.randint(0, 3))]
        workers = rng.randint(1, 3)
        assert start_estimates(durations, running, workers) == \
            [estimate_start(durations[:i], running, workers) for i in range(len(durations))]
    # an unknown duration: its own estimate stands, the ones behind it cannot be told
    assert start_estimates([10.0, None, 10.0], [5.0], 1) == [5.0, 15.0, None]


async def test_telling_a_long_line_its_places_costs_one_pass_not_one_per_job_ahead():
    # A line of 400 waiting jobs is told its places on every change. Asking each job's
    # estimate from the jobs ahead of it cost 80,000 duration lookups per change, and with
    # 1,000 servers sending commands that stalled the bot's event loop for seconds.
    s, pool, rec = make(per_user_waiting=1, queue_max=500)
    for user in range(401):
        s.submit(job(user))
    await settle()
    lookups = 0
    average = s.durations.average

    def counted(preset=None):
        nonlocal lookups
        lookups += 1
        return average(preset)

    s.durations.average = counted  # type: ignore[method-assign]
    s.durations.add("fast", 2.0)  # estimates become known: every place and time is told again
    s.pump()
    assert rec.last_position(s.line.order()[-1].job_id) == 400
    assert lookups <= 2 * 400, lookups


# --------------------------------------------------------------------------- scheduler with a fake pool


class FakePool(WorkerPool):
    """Jobs start and end only when the test says so."""

    def __init__(self, capacity: int = 1) -> None:
        self._capacity = capacity
        self.handles: dict[str, JobHandle] = {}
        self.submitted: list[str] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def free_slots(self) -> int:
        return self._capacity - sum(1 for h in self.handles.values() if not h.done)

    @property
    def workers_alive(self) -> int:
        return self._capacity

    def stats(self) -> PoolStats:
        return PoolStats(self._capacity, self.free_slots, 0, 0, self._capacity, 0)

    async def start(self) -> None:
        pass

    def submit(self, spec: JobSpec) -> JobHandle:
        handle = JobHandle(spec.job_id, self._cancel)
        handle.deliver(Queued(spec.job_id, 0))
        self.handles[spec.job_id] = handle
        self.submitted.append(spec.job_id)
        return handle

    def _cancel(self, job_id: str) -> None:
        self.handles[job_id].deliver(Failed(job_id, "The job was cancelled.", "cancelled"))

    def start_job(self, job_id: str) -> None:
        self.handles[job_id].deliver(Started(job_id, "cpu0", 1))

    def finish(self, job_id: str) -> None:
        self.handles[job_id].deliver(Finished(job_id, b"png", {"final": {}}, seconds=1.0))

    async def shutdown(self, drain: bool = False, timeout: float = 30.0) -> None:
        for job_id, handle in self.handles.items():
            handle.deliver(Failed(job_id, "shutting down", "shutdown"))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.etas: dict[str, float | None] = {}

    def job_waiting(self, job, position, eta_s, note=None):
        self.calls.append(("waiting", job.job_id, position))
        self.etas[job.job_id] = eta_s

    def cancel_requested(self, job, by_user):
        self.calls.append(("cancel", job.job_id, by_user))

    def job_started(self, job, worker=None):
        self.calls.append(("started", job.job_id))

    def job_progress(self, job, event):
        self.calls.append(("progress", job.job_id, event.step))

    def job_retrying(self, job, event):
        self.calls.append(("retrying", job.job_id))

    def job_finished(self, job, event):
        self.calls.append(("finished", job.job_id))

    def job_failed(self, job, event):
        self.calls.append(("failed", job.job_id, event.kind))

    def job_paused(self, job, was_running):
        self.calls.append(("paused", job.job_id, was_running))

    def last_position(self, job_id: str) -> int | None:
        found = [c[2] for c in self.calls if c[0] == "waiting" and c[1] == job_id]
        return found[-1] if found else None


_ids = itertools.count()


def job(user: int, preset: str = "fast") -> Job:
    return Job(job_id=f"job{next(_ids)}", user_id=user, channel_id=1, guild_id=1, application_id=1,
               interaction_token="t", token_created_at=0.0, upload_limit=10_000_000,
               params=StylizeParams(preset=preset), content=b"c", style=b"s", style_label="s.png")


def make(capacity: int = 1, **limits) -> tuple[Scheduler, FakePool, Recorder]:
    pool, rec = FakePool(capacity), Recorder()
    options = {"per_user_waiting": 2, "queue_max": 4, "max_pixels": 10_000} | limits
    scheduler = Scheduler(pool, Ledger(watcher=rec), **options)
    scheduler.set_pool_ready()
    return scheduler, pool, rec


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_dispatch_order_is_fair_and_reported_positions_are_right():
    s, pool, rec = make(per_user_waiting=3, queue_max=10)
    ALICE, BOB = 1, 2
    a = [job(ALICE) for _ in range(3)]
    b = [job(BOB) for _ in range(3)]
    for j in a + b:
        s.submit(j)
    await settle()
    assert pool.submitted == [a[0].job_id]  # one worker: the rest wait in the bot's line
    expected = [b[0], a[1], b[1], a[2], b[2]]
    assert [rec.last_position(j.job_id) for j in expected] == [1, 2, 3, 4, 5]
    mark = len(rec.calls)
    for _ in range(6):
        current = pool.submitted[-1]
        pool.start_job(current)
        pool.finish(current)
        await settle()
    assert pool.submitted == [j.job_id for j in [a[0], *expected]]
    assert all(("finished", j.job_id) in rec.calls for j in a + b)
    # once everyone is in line, positions only move forward (a newcomer may overtake; see FairLine)
    for j in expected:
        positions = [c[2] for c in rec.calls[mark:] if c[0] == "waiting" and c[1] == j.job_id]
        assert positions == sorted(positions, reverse=True)


async def test_limits_are_refused_with_specific_messages():
    s, pool, rec = make(per_user_waiting=2, queue_max=3)
    s.submit(job(1))  # runs
    s.submit(job(1))
    s.submit(job(1))
    with pytest.raises(UserLimitReached, match="You already have 2 jobs waiting"):
        s.submit(job(1))
    s.submit(job(2))
    with pytest.raises(LineFull, match=r"^The queue is full \(3 jobs waiting\)\. Please try again"):
        s.submit(job(3))
    s.durations.add("fast", 120.0)
    with pytest.raises(LineFull, match=r"queue is full \(3 jobs waiting, about 8 minutes of work\)"):
        s.check(3, None)  # the running job (2 min, just started) and three waiting ones of 2 min each
    assert "about 1 minute of work)" in str(LineFull(3, 40.0))


async def test_cancel_waiting_and_running_jobs():
    s, pool, rec = make()
    running, waiting, behind = job(1), job(2), job(3)
    for j in (running, waiting, behind):
        s.submit(j)
    pool.start_job(running.job_id)
    await settle()
    assert rec.last_position(behind.job_id) == 2
    assert await s.cancel(waiting.job_id, by_user=2)
    assert waiting.state is JobState.CANCELLED and waiting.cancelled_by == 2
    assert rec.last_position(behind.job_id) == 1  # moved up at once
    assert ("failed", waiting.job_id, "cancelled") in rec.calls
    assert waiting.job_id not in pool.submitted
    assert await s.cancel(running.job_id, by_user=99)
    await settle()
    assert running.state is JobState.CANCELLED and running.cancelled_by == 99
    assert pool.submitted[-1] == behind.job_id  # the freed slot went to the next job
    assert not await s.cancel("nope", by_user=1)


async def test_progress_start_and_estimates_flow_to_the_listener():
    s, pool, rec = make()
    first, second = job(1), job(2)
    s.submit(first)
    s.submit(second)
    pool.start_job(first.job_id)
    pool.handles[first.job_id].deliver(Progress(first.job_id, 5, 10, 0, 1, (32, 32), {"total": 1.0}))
    await settle()
    assert ("started", first.job_id) in rec.calls and ("progress", first.job_id, 5) in rec.calls
    assert first.progress == (5, 10) and first.state is JobState.RUNNING
    s.pump()  # the bot's once-a-second pump tells waiting jobs their new estimate
    assert rec.etas[second.job_id] is not None  # from the running job's own step rate
    status = s.status()
    assert (status.waiting, status.running, status.capacity, status.pool_ready) == (1, 1, 1, True)


async def test_jobs_wait_until_the_pool_is_ready_and_shutdown_pauses_waiting_and_running_jobs():
    pool, rec = FakePool(), Recorder()
    s = Scheduler(pool, Ledger(watcher=rec), per_user_waiting=2, queue_max=4, max_pixels=10_000)
    a, b = job(1), job(2)
    s.submit(a)
    s.submit(b)
    assert pool.submitted == [] and rec.last_position(a.job_id) == 1
    s.set_pool_ready()
    assert pool.submitted == [a.job_id]
    paused = s.stop_accepting()
    # paused, not failed: the job store keeps it for the next start
    assert paused == [b] and b.state.in_line and ("paused", b.job_id, False) in rec.calls
    with pytest.raises(NotAccepting, match="shutting down"):
        s.submit(job(3))
    await pool.shutdown()
    assert await s.wait_running(5)
    assert a.state.in_line and ("paused", a.job_id, True) in rec.calls  # not failed: open, as the store keeps it
    assert not any(c[0] == "failed" for c in rec.calls) and s.jobs() == []
