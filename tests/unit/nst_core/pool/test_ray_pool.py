"""The Ray backend with real Ray on this machine: tiny images, random weights, few steps.

The backend-neutral contract tests (``pool_contract``) run against a local Ray instance with
two CPU actors; then Ray-specific faults on the same pool (an actor killed mid-job, a job
that ignores its cancel), an actor that cannot start until its cause is removed (a pool of its
own), and a two-node cluster (Ray's own ``cluster_utils``) whose node
running a job is removed mid-job: the job is retried and completes on the other node.
Ray is kept small: explicit CPUs, no dashboard, a 200 MB object store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

ray = pytest.importorskip("ray")

from nst_core.pool import Failed, Finished, PoolError, Progress, Retrying, Started, WorkerStartError  # noqa: E402
from nst_core.pool.ray_pool import RayPool  # noqa: E402
from conftest import REPO  # noqa: E402
from pool_contract import (  # noqa: E402
    LONG, PARAMS, START_MARKER_ENV, STUCK_SIZE, _gone, assert_well_formed, collect, spec, until,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MB = 1024 * 1024


@contextlib.contextmanager
def hooks_importable():
    """Ray's processes, started meanwhile, can import the test hooks (worker_init) as local workers can."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), str(REPO / "tests"), saved) if p)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def actor_processes() -> list[psutil.Process]:
    """Live StyleActor processes on this machine (Ray names them ray::StyleActor...)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "StyleActor" in " ".join(proc.info["cmdline"] or ()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool():
    p = RayPool(devices="cpu", cpu_actors=2, warm_params=PARAMS.to_dict(), progress_interval_s=0.2, timeout_s=120,
                cancel_grace_s=2.0, retries=0, worker_init="pool_contract:worker_hooks",
                ray_init={"num_cpus": 2, "object_store_memory": 200 * MB, "log_to_driver": False})
    with hooks_importable():
        await p.start()
    yield p
    await p.shutdown()


@pytest.fixture
def leftover_workers():
    return actor_processes


# ---------------------------------------------------------------------- before Ray starts


async def test_submit_before_start_is_refused_and_bad_settings_are_caught_early():
    with pytest.raises(PoolError):
        RayPool(devices="cpu").submit(spec())
    with pytest.raises(ValueError):
        RayPool(devices="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RayPool(cpu_actors=0)
    assert RayPool(devices="cpu", cpu_actors=3).capacity == 3  # planned, before start


async def test_an_unreachable_cluster_is_a_clear_error_at_once():
    address = "127.0.0.1:1"
    t = time.perf_counter()
    pool = RayPool(address=address, devices="cpu")
    with pytest.raises(WorkerStartError, match=f"Cannot reach the Ray cluster at {address}"):
        await pool.start()
    assert time.perf_counter() - t < 5
    assert pool.unavailable_reason.startswith(f"Cannot reach the Ray cluster at {address}") and pool.start_failing
    await pool.shutdown()  # already shut down: harmless
    assert not ray.is_initialized()


async def test_ray_client_addresses_are_refused_with_what_to_use_instead():
    for address in ("ray://127.0.0.1:10001", " RAY://head:10001"):
        with pytest.raises(ValueError, match=r'Ray Client .* not supported.*"auto" or "HEAD_IP:6379"'):
            RayPool(address=address, devices="cpu")
    assert not ray.is_initialized()


async def test_without_ray_installed_start_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    pool = RayPool(devices="cpu")
    with pytest.raises(WorkerStartError, match=r'pip install "stylebot\[ray\]"'):
        await pool.start()
    assert "needs Ray, which is not installed" in pool.unavailable_reason


async def test_the_bot_builds_a_ray_pool_from_its_pool_settings():
    pytest.importorskip("discord")
    from bot.app.run import make_pool
    from bot.config import ConfigError
    from bot.config_loading import load_config

    env = {"NSTBOT_POOL__BACKEND": "ray", "NSTBOT_POOL__RAY_ADDRESS": "HEAD:6379",
           "NSTBOT_POOL__DEVICES": "cpu", "NSTBOT_POOL__RAY_ACTORS": "3", "NSTBOT_POOL__RETRIES": "2"}
    pool = make_pool(load_config(None, env=env))
    assert isinstance(pool, RayPool) and pool.address == "HEAD:6379" and pool.capacity == 3
    assert pool._retries == 2
    assert type(make_pool(load_config(None, env={}))).__name__ == "LocalPool"  # the default
    with pytest.raises(ConfigError, match="pool.devices must be auto or cpu"):
        load_config(None, env={**env, "NSTBOT_POOL__DEVICES": "0,1"})


# ---------------------------------------------------------------------- shared pool: the contract

# Bound here, after the tests above (which need Ray not yet started), in this order: the
# events test checks a fresh pool.
from pool_contract import (  # noqa: E402,F401
    test_events_in_order_with_result_and_a_free_loop, test_a_repeated_style_is_a_cache_hit_on_the_same_worker,
    test_more_jobs_than_capacity_wait_in_line, test_bad_inputs_fail_readably_and_the_worker_survives,
    test_cancel_while_queued_and_while_running,
)


# ---------------------------------------------------------------------- shared pool: Ray-specific faults


@pytest.mark.timeout(120)
async def test_an_actor_killed_mid_job_is_restarted_and_the_job_retried_on_another(pool):
    await pool.wait_ready(timeout=60)
    restarts = pool.stats().restarts
    doomed = pool.submit(spec(iterations=LONG, retries=0))
    retried = pool.submit(spec(iterations=1000, retries=1))  # long enough to be still running when killed
    doomed_head = await until(doomed, Progress)
    retried_head = await until(retried, Progress)
    doomed_pid = next(e.pid for e in doomed_head if isinstance(e, Started))
    retried_start = next(e for e in retried_head if isinstance(e, Started))

    os.kill(doomed_pid, signal.SIGKILL)  # no retry left: a clear failure
    events = doomed_head + await collect(doomed, timeout=30)
    assert_well_formed(events, doomed.job_id)
    assert events[-1].kind == "worker_died" and "Please try again" in events[-1].reason
    assert pool.capacity == 1  # capacity is the live actors

    assert not retried.done
    os.kill(retried_start.pid, signal.SIGKILL)
    events = retried_head + await collect(retried, timeout=90)  # on the restarted actor
    assert_well_formed(events, retried.job_id)
    retry = [e for e in events if isinstance(e, Retrying)]
    assert len(retry) == 1 and retry[0].kind == "worker_died" and "trying again" in retry[0].reason
    second = [e for e in events if isinstance(e, Started)][-1]
    assert second.attempt == 2 and second.pid not in (doomed_pid, retried_start.pid)
    assert isinstance(events[-1], Finished)
    await pool.wait_ready(timeout=90)
    assert pool.capacity == 2 and pool.stats().restarts == restarts + 2
    assert not {doomed_pid, retried_start.pid} & set(pool.worker_pids())


@pytest.mark.timeout(90)
async def test_a_job_that_ignores_cancel_has_its_actor_replaced(pool):
    await pool.wait_ready(timeout=60)
    restarts = pool.stats().restarts
    handle = pool.submit(spec(size=STUCK_SIZE))
    started = (await until(handle, Started))[-1]
    await asyncio.sleep(0.5)  # past decoding, into the hang
    t = time.perf_counter()
    assert await asyncio.wait_for(handle.cancel(), 10) is True  # through ray.cancel: at once
    assert time.perf_counter() - t < 2
    assert handle.terminal.kind == "cancelled"
    assert await _gone(started.pid, timeout=15)  # its thread never stopped: killed after cancel_grace_s
    await pool.wait_ready(timeout=60)
    assert pool.stats().restarts == restarts + 1 and started.pid not in pool.worker_pids()
    assert isinstance((await collect(pool.submit(spec())))[-1], Finished)


# The contract's shutdown test ends the shared pool (and the local Ray instance it started).
from pool_contract import test_shutdown_drains_then_stops_what_is_left_and_leaves_no_process  # noqa: E402,F401


# ---------------------------------------------------------------------- actors that cannot start


@pytest.mark.timeout(240)
async def test_an_actor_that_cannot_start_is_retried_until_it_can(tmp_path, monkeypatch):
    if ray.is_initialized():  # the shared pool's instance, if its shutdown test did not run
        ray.shutdown()
    marker = tmp_path / "weights-missing"
    marker.touch()
    monkeypatch.setenv(START_MARKER_ENV, str(marker))  # the new Ray instance's workers inherit it
    pool = RayPool(devices="cpu", cpu_actors=1, warm_params=PARAMS.to_dict(), max_start_backoff_s=1.0,
                   worker_init="pool_contract:fail_start_while_marked",
                   ray_init={"num_cpus": 1, "object_store_memory": 100 * MB, "log_to_driver": False})
    try:
        with hooks_importable(), pytest.raises(WorkerStartError, match="simulated missing weights"):
            await asyncio.wait_for(pool.start(), 120)
        assert pool.capacity == 0 and pool.workers_alive == 0 and pool.start_failing
        assert "no worker could start" in pool.unavailable_reason
        assert "simulated missing weights" in pool.unavailable_reason
        waiting = pool.submit(spec())  # waits in the pool for an actor
        while pool.stats().restarts < 1:  # a new actor is on its way (after 1 s)
            await asyncio.sleep(0.05)
        marker.unlink()  # the weights are back
        events = await collect(waiting, timeout=150)
        assert_well_formed(events, waiting.job_id)
        assert isinstance(events[-1], Finished)
        assert pool.unavailable_reason is None and pool.capacity == 1 and not pool.start_failing
    finally:
        await pool.shutdown()
    assert actor_processes() == [] and not ray.is_initialized()


# ---------------------------------------------------------------------- a two-node cluster


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs (so it runs no actor) and two one-CPU worker nodes."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # the shared pool's instance, if its shutdown test did not run
        ray.shutdown()
    small = {"object_store_memory": 100 * MB}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **small})
    c.workers = [c.add_node(num_cpus=1, **small) for _ in range(2)]
    c.small = small
    try:
        c.wait_for_nodes()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.mark.timeout(240)
async def test_a_node_removed_mid_job_the_job_completes_on_the_other_node(cluster):
    pool = RayPool(address=cluster.address, devices="cpu", cpu_actors=2, warm_params=PARAMS.to_dict(),
                   progress_interval_s=0.2, retries=1, no_capacity_timeout_s=4.0, ray_init={"log_to_driver": False})
    await asyncio.wait_for(pool.start(), 120)
    try:
        nodes = pool.worker_nodes()
        assert pool.capacity == 2 and set(nodes.values()) == {n.node_id for n in cluster.workers}  # one per node

        handle = pool.submit(spec(iterations=300))
        head = await until(handle, Progress)
        first = next(e for e in head if isinstance(e, Started))
        doomed = next(n for n in cluster.workers if n.node_id == nodes[first.worker])
        cluster.remove_node(doomed, allow_graceful=False)

        events = head + await collect(handle, timeout=60)
        assert_well_formed(events, handle.job_id)
        retry = [e for e in events if isinstance(e, Retrying)]
        assert len(retry) == 1 and retry[0].kind == "worker_died"
        second = [e for e in events if isinstance(e, Started)][-1]
        assert second.attempt == 2 and second.worker != first.worker
        assert nodes[second.worker] != doomed.node_id
        done = events[-1]
        assert isinstance(done, Finished) and done.worker == second.worker
        assert pool.capacity == 1 and list(pool.worker_nodes()) == [second.worker]  # the lost actor has no room

        # The bot keeps serving on what is left, and Ray restarts the lost actor once a node has room.
        assert isinstance((await collect(pool.submit(spec())))[-1], Finished)
        fresh = cluster.add_node(num_cpus=1, **cluster.small)
        await pool.wait_ready(timeout=90)
        assert pool.capacity == 2 and pool.worker_nodes()[first.worker] == fresh.node_id
        assert pool.stats().restarts == 1 and pool.stats().retries == 1

        # Every worker node gone: the retried job and a queued one fail clearly, nothing hangs.
        handle = pool.submit(spec(iterations=LONG))
        head = await until(handle, Progress)
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node, allow_graceful=False)
        waiting = pool.submit(spec())
        events = head + await collect(handle, timeout=30)
        assert_well_formed(events, handle.job_id)
        assert [e.kind for e in events if isinstance(e, Retrying)] == ["worker_died"]
        assert isinstance(events[-1], Failed) and events[-1].kind == "worker_died"
        # Usually its retry finds no live actor; on a loaded machine it may reach the other
        # actor before that one's node is known to be gone, and die there with no retry left.
        assert ("no other stylisation worker is available" in events[-1].reason
                or "stopped unexpectedly" in events[-1].reason), events[-1].reason
        # It may have reached an actor just before that actor's node went, and (a small job, on a
        # loaded machine) even finished there before the node was gone; what matters is an answer.
        waited = await asyncio.wait_for(waiting.wait(), 10)
        assert isinstance(waited, Finished) or (waited.kind in ("error", "worker_died")
                                                and "available on the Ray cluster" in waited.reason), waited
        assert pool.capacity == 0 and pool.free_slots == 0
    finally:
        await pool.shutdown()
    assert not ray.is_initialized()


_OWN_INSTANCE = """
import asyncio, ray
from nst_core.params import StylizeParams
from nst_core.pool.ray_pool import RayPool

async def main():
    pool = RayPool(devices="cpu", cpu_actors=1, warm_params=StylizeParams(weights="random", size=32).to_dict(),
                   ray_init={"num_cpus": 1, "object_store_memory": 100 * 2**20, "log_to_driver": False})
    await pool.start()
    print("GCS", ray.get_runtime_context().gcs_address, pool.workers_alive, flush=True)
    await pool.shutdown()

asyncio.run(main())
"""


@pytest.mark.timeout(240)
async def test_a_pool_without_an_address_starts_its_own_ray_even_beside_another_cluster():
    # Without an address, ray.init() joins whatever cluster this machine last started (a
    # `ray start`, or a test's cluster beside it): the pool then could not start at all.
    port = 6390 + os.getpid() % 500
    head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not Path("/tmp/ray/ray_current_cluster").exists() or \
                f":{port}" not in Path("/tmp/ray/ray_current_cluster").read_text():
            assert head.poll() is None and time.monotonic() < deadline, "the other cluster did not start"
            await asyncio.sleep(0.5)
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", _OWN_INSTANCE], cwd=REPO,
                                      capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        gcs, alive = out.stdout.split("GCS ")[-1].split()[:2]
        assert not gcs.endswith(f":{port}") and int(alive) == 1  # its own instance, with its actor up
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head's processes stop with it
        await asyncio.to_thread(head.wait, 60)
