"""The worker-pool contract, the same for every backend: test modules import these tests.

A module that uses them defines two fixtures: ``pool`` (module-scoped, started, two
workers, ``worker_init="pool_contract:worker_hooks"`` or a module re-exporting it) and
``leftover_workers`` (a callable listing worker processes still alive after shutdown). The
tests share the pool; ``test_shutdown_drains...`` shuts it down, so import it after every
other test that uses the pool (pytest runs a module's tests in the order their names were
bound in it). Tiny images, random weights, few steps.
"""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest
from PIL import Image

from conftest import make_content, make_style
from nst_core import LossSummary, StylizeParams, images, pixels
from nst_core.pool import (
    Failed, Finished, JobHandle, JobSpec, PoolClosed, PoolError, Progress, Queued, Retrying, Started,
)

__all__ = [
    "PARAMS", "LONG", "OOM_SIZE", "STUCK_SIZE", "worker_hooks", "png", "CONTENT", "STYLE", "spec", "collect", "until",
    "assert_well_formed", "_gone", "START_MARKER_ENV", "fail_start_while_marked",
    "test_events_in_order_with_result_and_a_free_loop", "test_a_repeated_style_is_a_cache_hit_on_the_same_worker",
    "test_more_jobs_than_capacity_wait_in_line", "test_bad_inputs_fail_readably_and_the_worker_survives",
    "test_cancel_while_queued_and_while_running", "test_shutdown_drains_then_stops_what_is_left_and_leaves_no_process",
]

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
START_MARKER_ENV = "NST_TEST_FAIL_START"  # names a file; while it exists, fail_start_while_marked fails


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


def fail_start_while_marked(engine) -> None:
    """worker_init hook: the worker fails to start while the file named by $NST_TEST_FAIL_START exists."""
    marker = os.environ.get(START_MARKER_ENV)
    if marker and os.path.exists(marker):
        raise RuntimeError(f"simulated missing weights ({marker} exists)")


def png(array) -> bytes:
    return pixels.encode_png(Image.fromarray(array))


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


# ---------------------------------------------------------------------- contract tests (shared pool)


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
    # First in, first out. (Jobs handed to two workers at the same moment may report Started
    # in either order, so each may be seen up to capacity - 1 places from its turn.)
    assert sorted(order) == sorted(h.job_id for h in handles)
    assert all(abs(order.index(h.job_id) - i) < pool.capacity for i, h in enumerate(handles)), order
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


@pytest.mark.timeout(90)
async def test_shutdown_drains_then_stops_what_is_left_and_leaves_no_process(pool, leftover_workers):
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
    assert leftover_workers() == []
    assert all(await asyncio.gather(*(_gone(pid) for pid in pids)))
    await pool.shutdown()  # idempotent
