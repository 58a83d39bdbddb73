"""The worker pool with real spawned worker processes: tiny images, random weights, few steps.

One two-worker pool is shared by most tests (starting TensorFlow twice costs ~15 s on two
cores); tests that break a worker wait for its replacement. Tests that need their own pool
(start failure, shutdown without draining) use one worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest
import pytest_asyncio
from PIL import Image

from conftest import make_content, make_style
from nst_core import LossSummary, StylizeParams, images
from nst_core.pool import (
    Failed, Finished, JobHandle, JobSpec, LocalPool, PoolClosed, PoolError, Progress, Queued, Retrying, Started,
    WorkerStartError,
)
from nst_core.pool.worker import ProgressThrottle

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Shallow layers keep a step at ~10 ms on a laptop CPU; the pool does not care about depth.
PARAMS = StylizeParams(
    weights="random", size=48, scales=2, min_scale_size=32, iterations=8, precision="float32",
    style_weight=1e3, tv_weight=1.0, learning_rate=6.0,
    content_layers=("block2_conv2",), style_layers=("block1_conv1", "block2_conv1"),
)
LONG = 5000  # iterations: a job that runs until something stops it
# The worker hook below makes the engine misbehave at these output sizes.
OOM_SIZE = 44  # "runs out of GPU memory"
STUCK_SIZE = 40  # hangs for a minute without checking should_stop, like a stuck GPU kernel


def worker_hooks(engine) -> None:
    """worker_init hook (runs inside each worker): simulate GPU OOM and a hung step."""
    import tensorflow as tf

    original = engine.stylize

    def stylize(content, style, params=None, **kwargs):
        if params is not None and params.target_size == OOM_SIZE:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor (simulated)")
        if params is not None and params.target_size == STUCK_SIZE:
            time.sleep(60)
        return original(content, style, params, **kwargs)

    engine.stylize = stylize


def png(array) -> bytes:
    return images.encode_png(Image.fromarray(array))


CONTENT = png(make_content())
STYLE = png(make_style())


def spec(**params) -> JobSpec:
    extra = {k: params.pop(k) for k in ("timeout_s", "retries", "style", "content") if k in params}
    return JobSpec(content=extra.get("content", CONTENT), style=extra.get("style", STYLE),
                   params=PARAMS.replace(**params).to_dict(),
                   **{k: v for k, v in extra.items() if k in ("timeout_s", "retries")})


async def collect(handle: JobHandle, timeout: float = 60.0) -> list:
    async def run() -> list:
        return [event async for event in handle]
    return await asyncio.wait_for(run(), timeout)


async def until(handle: JobHandle, kind: type, timeout: float = 60.0) -> list:
    """Events up to and including the first of ``kind`` (the handle stays usable)."""
    seen = []

    async def run() -> None:
        async for event in handle:
            seen.append(event)
            if isinstance(event, kind):
                return
        raise AssertionError(f"ended without {kind.__name__}: {seen}")
    await asyncio.wait_for(run(), timeout)
    return seen


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


def assert_well_formed(events: list, job_id: str) -> None:
    """Queued first, exactly one terminal event and it is last, progress in order per attempt."""
    assert isinstance(events[0], Queued)
    assert all(e.job_id == job_id for e in events)
    terminals = [e for e in events if isinstance(e, (Finished, Failed))]
    assert len(terminals) == 1 and events[-1] is terminals[0]
    last_step = 0
    for event in events:
        if isinstance(event, (Started, Retrying)):
            last_step = 0
        elif isinstance(event, Progress):
            assert event.step > last_step
            last_step = event.step


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = LocalPool(devices="cpu", cpu_workers=2, warm_params=PARAMS.to_dict(), progress_interval_s=0.2,
                  timeout_s=120, cancel_grace_s=2.0, worker_init="test_pool:worker_hooks")
    await p.start()
    yield p
    await p.shutdown()


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


@pytest.mark.timeout(90)
async def test_events_in_order_with_result_and_a_free_loop(pool):
    assert pool.capacity == 2 and pool.workers_alive == 2 and pool.free_slots == 2
    lag = 0.0

    async def ticker() -> None:  # the loop must keep turning while jobs run
        nonlocal lag
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = max(lag, time.perf_counter() - t - 0.01)

    tick = asyncio.create_task(ticker())
    handle = pool.submit(spec(iterations=120))
    events = await collect(handle)
    tick.cancel()
    assert_well_formed(events, handle.job_id)
    started = [e for e in events if isinstance(e, Started)]
    assert len(started) == 1 and started[0].pid in pool.worker_pids() and started[0].attempt == 1
    progress = [e for e in events if isinstance(e, Progress)]
    # Throttled (0.2 s), yet each scale's preview and the last step always come through.
    assert len(progress) < 120 and progress[-1].step == progress[-1].total == 120
    previews = [e for e in progress if e.preview_png is not None]
    assert [e.scale for e in previews] == [0, 1]
    assert images.decode_image(previews[-1].preview_png).size == (48, 32)
    assert set(progress[0].losses) == {"content", "style", "tv", "total"}
    done = events[-1]
    assert isinstance(done, Finished) and done.worker == started[0].worker
    assert images.decode_image(done.image_png).size == (48, 32)
    summary = LossSummary.from_dict(done.summary)
    assert summary.iterations == 120 and summary.resolution == (48, 32) and done.notes == ()
    assert lag < 0.1, f"event loop stalled for {lag:.3f} s"
    assert pool.free_slots == 2 and await handle.cancel() is False  # finished: nothing to cancel


@pytest.mark.timeout(60)
async def test_a_repeated_style_is_a_cache_hit_on_the_same_worker(pool):
    style = png(make_style(seed=7))  # not seen by any worker yet
    first = (await collect(pool.submit(spec(style=style))))[-1]
    second = (await collect(pool.submit(spec(style=style, seed=3))))[-1]
    assert isinstance(first, Finished) and isinstance(second, Finished)
    assert first.worker == second.worker  # idle workers are used lowest slot first
    assert first.style_cache_hits == 0
    assert second.style_cache_hits == 2  # both scales' Gram matrices came from the cache


@pytest.mark.timeout(60)
async def test_more_jobs_than_capacity_wait_in_line(pool):
    timeline: list[tuple[str, str]] = []

    async def watch(handle: JobHandle) -> list:
        events = []
        async for event in handle:
            events.append(event)
            if isinstance(event, (Started, Finished, Failed)):
                timeline.append((type(event).__name__, handle.job_id))
            assert pool.stats().running <= pool.capacity
        return events

    handles = [pool.submit(spec(iterations=30, seed=i)) for i in range(5)]
    stats = pool.stats()
    assert pool.free_slots == 0 and stats.running == 2 and stats.queued == 3
    results = await asyncio.wait_for(asyncio.gather(*(watch(h) for h in handles)), 60)
    assert [events[0].position for events in results] == [0, 0, 0, 1, 2]  # jobs ahead in the pool's line
    for handle, events in zip(handles, results):
        assert isinstance(events[-1], Finished)
        assert_well_formed(events, handle.job_id)
    running, peak = 0, 0
    for kind, _ in timeline:
        running += 1 if kind == "Started" else -1
        peak = max(peak, running)
    assert peak == 2
    order = [job for kind, job in timeline if kind == "Started"]
    assert order == [h.job_id for h in handles]  # first in, first out
    assert pool.free_slots == 2


@pytest.mark.timeout(60)
async def test_bad_inputs_fail_readably_and_the_worker_survives(pool):
    pids, restarts = pool.worker_pids(), pool.stats().restarts
    events = await collect(pool.submit(spec(content=b"this is not a picture")))
    assert_well_formed(events, events[0].job_id)
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.kind == "invalid_input"
    assert failed.reason.startswith("Content image: ") and "image" in failed.reason[15:].lower()
    events = await collect(pool.submit(JobSpec(content=CONTENT, style=STYLE, params={"size": 5})))
    assert [type(e) for e in events] == [Queued, Failed] and events[-1].kind == "invalid_input"
    assert "size must be between" in events[-1].reason
    assert pool.worker_pids() == pids and pool.stats().restarts == restarts
    with pytest.raises(PoolError):  # a job id still in the pool
        running = pool.submit(spec(iterations=30))
        pool.submit(JobSpec(content=CONTENT, style=STYLE, params={}, job_id=running.job_id))
    await running.wait()


@pytest.mark.timeout(60)
async def test_cancel_while_queued_and_while_running(pool):
    pids, restarts = pool.worker_pids(), pool.stats().restarts
    running = [pool.submit(spec(iterations=LONG, seed=i)) for i in range(2)]
    waiting = pool.submit(spec())
    assert pool.stats().queued == 1
    assert await asyncio.wait_for(waiting.cancel(), 5) is True
    assert [type(e) for e in await collect(waiting)] == [Queued, Failed]  # never reached a worker
    assert waiting.terminal.kind == "cancelled" and waiting.terminal.cancelled
    for handle in running:
        head = await until(handle, Progress)
        t = time.perf_counter()
        assert await asyncio.wait_for(handle.cancel(), 10) is True
        assert time.perf_counter() - t < 3  # stops within a step, no kill needed
        events = head + await collect(handle)
        assert_well_formed(events, handle.job_id)
        assert events[-1].kind == "cancelled" and events[-1].reason == "The job was cancelled."
    # Cancelled cooperatively: the warm workers were kept.
    assert pool.worker_pids() == pids and pool.stats().restarts == restarts and pool.free_slots == 2
    assert isinstance((await collect(pool.submit(spec())))[-1], Finished)


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


async def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.05)
    return False


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


@pytest.mark.timeout(90)
async def test_shutdown_drains_then_stops_what_is_left_and_leaves_no_process(pool):
    await pool.wait_ready(timeout=60)
    pids = pool.worker_pids()
    quick = pool.submit(spec(seed=1))
    endless = pool.submit(spec(iterations=LONG))
    queued = pool.submit(spec(seed=2))  # runs once `quick` is done, within the drain
    await until(endless, Progress)
    t = time.perf_counter()
    await asyncio.wait_for(pool.shutdown(drain=True, timeout=4.0), 30)
    assert time.perf_counter() - t < 10  # the drain limit, then a cancel between steps and exit
    assert isinstance(quick.terminal, Finished) and isinstance(queued.terminal, Finished)
    assert endless.terminal.kind == "shutdown" and "shutting down" in endless.terminal.reason
    assert_well_formed(await collect(queued), queued.job_id)
    assert pool.free_slots == 0 and pool.workers_alive == 0
    with pytest.raises(PoolClosed):
        pool.submit(spec())
    assert spawned_children() == []
    assert all(await asyncio.gather(*(_gone(pid) for pid in pids)))
    await pool.shutdown()  # idempotent


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
    with pytest.raises(WorkerStartError, match="No module named 'no_such_module'"):
        await asyncio.wait_for(pool.start(), 60)
    assert pool.workers_alive == 0 and spawned_children() == []
