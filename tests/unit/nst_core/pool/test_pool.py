"""The local worker pool with real spawned worker processes: tiny images, random weights, few steps.

The backend-neutral contract tests (``pool_contract``) run here against this backend, and
the local-specific ones (kill -9 of a worker process, time limits, OOM, a stuck cancel, a
worker killed while it warms up) follow. One two-worker pool is shared by most tests (starting
TensorFlow twice costs ~15 s on two cores); tests that break a worker wait for its replacement.
Tests that need their own pool (start failures, shutdown without draining) use one worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import psutil
import pytest
import pytest_asyncio
from nst_core import LossSummary, images
from nst_core.pool import (
    Failed, Finished, JobHandle, JobSpec, LocalPool, PoolError, Progress, Queued, Retrying, Started, WorkerStartError,
)
from nst_core.pool.job_runner import ProgressThrottle
from pool_contract import (  # the backend-neutral contract tests run here on the local pool
    LONG, OOM_SIZE, PARAMS, START_MARKER_ENV, STUCK_SIZE, _gone, assert_well_formed, collect, spec, until,
    worker_hooks,  # noqa: F401
    # in this order: the events test checks a fresh pool
    test_events_in_order_with_result_and_a_free_loop, test_a_repeated_style_is_a_cache_hit_on_the_same_worker,
    test_more_jobs_than_capacity_wait_in_line, test_bad_inputs_fail_readably_and_the_worker_survives,
    test_cancel_while_queued_and_while_running,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def spawned_children() -> list[psutil.Process]:
    """Live multiprocessing-spawned children of this process (not the resource tracker)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = LocalPool(devices="cpu", cpu_workers=2, warm_params=PARAMS.to_dict(), progress_interval_s=0.2,
                  timeout_s=120, cancel_grace_s=2.0, worker_init="test_pool:worker_hooks")
    await p.start()
    yield p
    await p.shutdown()


@pytest.fixture
def leftover_workers():
    return spawned_children


# ---------------------------------------------------------------------- no processes


async def test_handle_yields_in_order_and_stops_after_one_terminal():
    cancelled = []
    handle = JobHandle("j", cancelled.append)
    assert handle.deliver(Queued("j", 0)) and handle.deliver(Started("j", "cpu0"))
    assert handle.deliver(Failed("j", "The job was cancelled.", "cancelled"))
    assert not handle.deliver(Finished("j", b"", {}))  # nothing after the terminal event
    assert [type(e) for e in await collect(handle)] == [Queued, Started, Failed]
    assert await collect(handle) == []  # iteration stays finished
    assert handle.done and (await handle.wait()).cancelled
    assert await handle.cancel() is True and cancelled == []  # already ended: no request sent


async def test_job_spec_normalises_style_and_rejects_nonsense():
    s = JobSpec(content=b"a", style=b"b", params={})
    assert s.style == (b"b",) and len(s.job_id) == 32
    assert JobSpec(content=b"a", style=[b"b", bytearray(b"c")]).style == (b"b", b"c")
    with pytest.raises(ValueError):
        JobSpec(content=b"a", style=[])
    with pytest.raises(ValueError):
        JobSpec(content=b"a", style=b"b", timeout_s=0)


async def test_progress_throttle_passes_previews_and_the_last_step():
    class E:
        def __init__(self, step, preview=None):
            self.step, self.total, self.preview = step, 10, preview
    throttle = ProgressThrottle(3600.0)
    passed = [s for s in range(1, 11) if throttle.allow(E(s, "png" if s == 4 else None))]
    assert passed == [1, 4, 10]


async def test_submit_before_start_is_refused():
    with pytest.raises(PoolError):
        LocalPool(devices="cpu").submit(spec())


# ---------------------------------------------------------------------- shared pool


@pytest.mark.timeout(60)
async def test_out_of_memory_retries_smaller_and_says_so(pool):
    events = await collect(pool.submit(spec(size=OOM_SIZE)))
    assert_well_formed(events, events[0].job_id)
    retry = [e for e in events if isinstance(e, Retrying)]
    assert len(retry) == 1 and retry[0].kind == "out_of_memory" and "33 px" in retry[0].reason
    assert [type(e) for e in events[:4]] == [Queued, Started, Retrying, Started]
    done = events[-1]
    assert isinstance(done, Finished) and images.decode_image(done.image_png).size == (33, 22)
    assert len(done.notes) == 1 and "44 px" in done.notes[0] and "33 px" in done.notes[0]
    assert LossSummary.from_dict(done.summary).notes == list(done.notes)


@pytest.mark.timeout(60)
async def test_a_job_that_ignores_cancel_has_its_worker_replaced(pool):
    restarts = pool.stats().restarts
    handle = pool.submit(spec(size=STUCK_SIZE))
    started = (await until(handle, Started))[-1]
    await asyncio.sleep(0.5)  # let it get past decoding (a cancel there is honoured at once) into the hang
    t = time.perf_counter()
    assert await asyncio.wait_for(handle.cancel(), 10) is True
    assert 1.9 < time.perf_counter() - t < 5  # cancel_grace_s, then the worker was killed
    assert handle.terminal.kind == "cancelled"
    assert await _gone(started.pid)
    while pool.stats().restarts == restarts:  # the replacement starts once the exit is seen
        await asyncio.sleep(0.01)
    # No wait for it to be warm: the next test runs on the other worker meanwhile.


@pytest.mark.timeout(90)
async def test_a_job_over_its_time_limit_fails_and_its_worker_is_replaced(pool):
    restarts = pool.stats().restarts
    handle = pool.submit(spec(iterations=LONG, timeout_s=1.5))
    t = time.perf_counter()
    events = await collect(handle, timeout=30)
    assert 1.4 < time.perf_counter() - t < 10
    assert_well_formed(events, handle.job_id)
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.kind == "timeout" and "timed out" in failed.reason
    old_pid = next(e.pid for e in events if isinstance(e, Started))
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE \
        or await _gone(old_pid)
    await pool.wait_ready(timeout=60)
    assert pool.stats().restarts == restarts + 1 and old_pid not in pool.worker_pids()
    assert pool.stats().failed["timeout"] == 1


@pytest.mark.timeout(120)
async def test_kill_9_fails_the_job_or_retries_it_and_the_pool_heals(pool):
    await pool.wait_ready(timeout=60)
    restarts = pool.stats().restarts
    doomed = pool.submit(spec(iterations=LONG, retries=0))
    retried = pool.submit(spec(iterations=150, retries=1))
    doomed_head = await until(doomed, Progress)
    retried_head = await until(retried, Progress)
    doomed_pid = next(e.pid for e in doomed_head if isinstance(e, Started))
    retried_pid = next(e.pid for e in retried_head if isinstance(e, Started))
    assert doomed_pid != retried_pid

    os.kill(doomed_pid, signal.SIGKILL)
    events = doomed_head + await collect(doomed, timeout=15)
    assert_well_formed(events, doomed.job_id)
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.kind == "worker_died" and "SIGKILL" in failed.reason

    os.kill(retried_pid, signal.SIGKILL)
    events = retried_head + await collect(retried, timeout=90)  # waits for a replacement worker
    assert_well_formed(events, retried.job_id)
    retry = [e for e in events if isinstance(e, Retrying)]
    assert len(retry) == 1 and retry[0].kind == "worker_died"
    second = [e for e in events if isinstance(e, Started)][-1]
    assert second.attempt == 2 and second.pid not in (doomed_pid, retried_pid)
    assert isinstance(events[-1], Finished)
    await pool.wait_ready(timeout=60)
    assert pool.stats().restarts == restarts + 2
    assert not {doomed_pid, retried_pid} & set(pool.worker_pids())


@pytest.mark.timeout(120)
async def test_a_worker_killed_while_warming_up_is_replaced_again_not_given_up(pool):
    await pool.wait_ready(timeout=60)
    restarts = pool.stats().restarts
    seen = set(pool.worker_pids())

    async def next_worker() -> int:
        while not (fresh := set(pool.worker_pids()) - seen):
            await asyncio.sleep(0.01)
        seen.update(fresh)
        return fresh.pop()

    os.kill(pool.worker_pids()[0], signal.SIGKILL)  # a ready worker: replaced at once
    for _ in range(3):  # its replacements die while loading (the OOM killer, say): each is started again
        os.kill(await asyncio.wait_for(next_worker(), 30), signal.SIGKILL)
        assert pool.workers_alive == 1 and not pool.start_failing  # the other worker serves meanwhile
    await pool.wait_ready(timeout=90)  # after 2, 4 and 8 s of backoff
    assert pool.capacity == 2 and pool.workers_alive == 2 and pool.unavailable_reason is None
    assert pool.stats().restarts == restarts + 4
    assert isinstance((await collect(pool.submit(spec())))[-1], Finished)


# The contract's shutdown test ends the shared pool, so it runs after every test above.
from pool_contract import test_shutdown_drains_then_stops_what_is_left_and_leaves_no_process  # noqa: E402,F401


# ---------------------------------------------------------------------- own pool


@pytest.mark.timeout(60)
async def test_shutdown_without_drain_ends_queued_jobs_at_once():
    pool = LocalPool(devices="cpu", cpu_workers=1, warm_params=PARAMS.to_dict(), start_timeout_s=60)
    start = asyncio.create_task(pool.start())
    await asyncio.sleep(0.5)  # the worker is loading TensorFlow
    assert len(pool.worker_pids()) == 1 and pool.workers_alive == 0
    waiting = pool.submit(spec())
    t = time.perf_counter()
    await asyncio.wait_for(pool.shutdown(drain=False), 20)
    assert time.perf_counter() - t < 3  # a starting worker is killed, not waited for
    assert [type(e) for e in await collect(waiting)] == [Queued, Failed] and waiting.terminal.kind == "shutdown"
    with pytest.raises(WorkerStartError):
        await start
    assert spawned_children() == []


@pytest.mark.timeout(90)
async def test_a_worker_that_cannot_start_is_reported_not_hung():
    pool = LocalPool(devices="cpu", cpu_workers=1, warm_params=PARAMS.to_dict(), worker_init="no_such_module:hook")
    try:
        with pytest.raises(WorkerStartError, match="No module named 'no_such_module'"):
            await asyncio.wait_for(pool.start(), 60)
        assert pool.workers_alive == 0
        assert re.fullmatch(r"no worker could start: .*No module named 'no_such_module'; retrying in [12] s",
                            pool.unavailable_reason), pool.unavailable_reason
    finally:
        await pool.shutdown()  # it keeps trying until shut down
    assert pool.unavailable_reason == "the pool has been shut down" and spawned_children() == []


@pytest.mark.timeout(120)
async def test_a_pool_whose_worker_cannot_start_keeps_trying_and_recovers(tmp_path, monkeypatch):
    marker = tmp_path / "weights-missing"
    marker.touch()
    monkeypatch.setenv(START_MARKER_ENV, str(marker))  # inherited by every worker started from now on
    pool = LocalPool(devices="cpu", cpu_workers=1, warm_params=PARAMS.to_dict(), max_start_backoff_s=1.0,
                     worker_init="pool_contract:fail_start_while_marked")
    try:
        with pytest.raises(WorkerStartError, match="simulated missing weights"):
            await asyncio.wait_for(pool.start(), 60)
        assert pool.workers_alive == 0 and pool.capacity == 1 and pool.start_failing
        assert "no worker could start" in pool.unavailable_reason
        assert "simulated missing weights" in pool.unavailable_reason
        waiting = pool.submit(spec())  # waits in the pool for a worker
        while pool.stats().restarts < 2:  # tried again (after 1 s), failed, and is trying once more
            await asyncio.sleep(0.05)
            assert not waiting.done
        marker.unlink()  # the weights are back
        events = await collect(waiting, timeout=90)
        assert_well_formed(events, waiting.job_id)
        assert isinstance(events[-1], Finished)
        assert pool.unavailable_reason is None and pool.workers_alive == 1 and not pool.start_failing
    finally:
        await pool.shutdown()
    assert spawned_children() == []
