"""The Ray backend: warm workers as Ray actors, one per GPU of a Ray cluster (or N on CPUs).

Each actor (:class:`StyleWorker`) loads TensorFlow and the backbone once and runs jobs with
the same :func:`~nst_core.pool.worker.run_job` as the local backend, in one job thread, so
its compiled step and style-target cache serve every later job. Events come back through a
Ray streaming generator (one object per event), so the bot sees progress while the job runs;
through Ray Client (``ray://``), which cannot stream, the pool polls a buffer in the actor.

Faults: an actor whose process or node dies is restarted by Ray (``max_restarts``); the job it
was running is run again on another actor (``retries``, with a ``Retrying`` note) or fails
with ``worker_died``. ``capacity`` is the number of live actors, so it shrinks while actors
are being restarted or cannot be placed, and grows again when they come back or when GPU
nodes join the cluster. Queued jobs that find no live actor for ``no_capacity_timeout_s``
fail with a clear reason instead of waiting forever. An actor that fails to start (an error
loading the model, its process killed while loading) is replaced after 2, 4, 8 ... seconds
(up to ``max_start_backoff_s``), for as long as the pool is open. Not connecting to the
cluster at all (Ray missing, nothing at the address) is not retried: ``start`` raises and
the pool is shut down.

Cancel goes through Ray (``ray.cancel`` on the job's task): the actor's job coroutine is
cancelled and the job thread stops between steps; an actor whose job thread does not stop
within ``cancel_grace_s`` is killed (and restarted by Ray). A job over its time limit has
its actor killed the same way.

Ray is an optional dependency (``pip install "stylebot[ray]"``): it is imported only when
the pool starts, and importing this module does not import Ray or TensorFlow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal, Mapping

from ..params import StylizeParams
from .base import Event, Failed, Finished, JobSpec, PoolError, Retrying, WorkerStartError
from .queueing import CANCELLED_REASON, PoolJob, QueueingPool

__all__ = ["RayPool", "StyleWorker"]

log = logging.getLogger(__name__)

_POLL_WAIT_S = 1.0  # Ray Client: how long one poll waits in the actor for new events
_PROBE_TIMEOUT_S = 60.0  # one ready() probe of a restarting actor
_STOP_TIMEOUT_S = 10.0  # waiting for killed actors to be gone at shutdown


# --------------------------------------------------------------------------- the actor


class StyleWorker:
    """The Ray actor (an async actor): a warm Engine and one thread that runs its jobs.

    ``run`` is a streaming generator of a job's events. Cancelling it (``ray.cancel``)
    cancels the coroutine, which tells the job thread to stop between steps; ``idle``
    returns once that thread is free, so the pool knows when the actor can take a job.
    ``run_buffered`` and ``poll`` do the same for Ray Client, which cannot stream.
    """

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if config.get("cpu_only"):
            os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow loads
        from .worker import load_engine

        self._name = name
        self._config = config
        self._engine = load_engine(config.get("warm_params"), intra_threads=config.get("intra_threads"),
                                   worker_init=config.get("worker_init"))
        self._runner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nst-job")
        self._buffers: dict[str, _Buffer] = {}

    async def ready(self) -> tuple[int, str]:
        """The actor's process id and Ray node id (answered once the engine is warm)."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    async def idle(self) -> None:
        """Return once no job thread is running (a cancelled job has really stopped)."""
        await asyncio.get_running_loop().run_in_executor(self._runner, _nothing)

    async def run(self, spec: JobSpec, attempt: int) -> AsyncIterator[Event]:
        """Run one job; yields Started, Progress..., then Finished or Failed."""
        async for event in self._events(spec, attempt):
            yield event

    async def run_buffered(self, key: str, spec: JobSpec, attempt: int) -> None:
        """Like ``run``, for callers that cannot stream: events go to a buffer read by ``poll``."""
        buffer = self._buffers.setdefault(key, _Buffer())
        try:
            async for event in self._events(spec, attempt):
                async with buffer.changed:
                    buffer.events.append(event)
                    buffer.changed.notify_all()
        finally:
            buffer.ended = True
            async with buffer.changed:
                buffer.changed.notify_all()
            # A caller that stopped polling (it cancelled) leaves the buffer behind: drop it later.
            asyncio.get_running_loop().call_later(300, self._buffers.pop, key, None)

    async def poll(self, key: str, cursor: int, wait_s: float = _POLL_WAIT_S) -> tuple[list[Event], bool]:
        """Events from ``cursor`` on (waiting up to ``wait_s`` for one), and whether the job ended."""
        buffer = self._buffers.setdefault(key, _Buffer())
        async with buffer.changed:
            if len(buffer.events) <= cursor and not buffer.ended:
                try:
                    await asyncio.wait_for(buffer.changed.wait(), wait_s)
                except asyncio.TimeoutError:
                    pass
            events = buffer.events[cursor:]
            ended = buffer.ended
        if ended:
            self._buffers.pop(key, None)
        return events, ended

    async def _events(self, spec: JobSpec, attempt: int) -> AsyncIterator[Event]:
        from .worker import run_job

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def work() -> None:
            try:
                if not stop.is_set():  # cancelled while waiting behind a job that did not stop
                    run_job(self._engine, spec, emit=emit, should_stop=stop.is_set, worker=self._name,
                            attempt=attempt, progress_interval_s=self._config.get("progress_interval_s", 0.5),
                            oom_retries=self._config.get("oom_retries", 3))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        future = loop.run_in_executor(self._runner, work)
        try:
            while (event := await queue.get()) is not done:
                yield event
            await future  # an error outside run_job's own handling surfaces here
        finally:
            stop.set()  # cancelled (ray.cancel) or abandoned: the job thread stops between steps


def _nothing() -> None:
    return None


class _Buffer:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ended = False
        self.changed = asyncio.Condition()


# --------------------------------------------------------------------------- the pool


@dataclass(eq=False)
class _Job(PoolJob):
    actor: "_Actor | None" = None
    ray_task: Any = None  # the ObjectRefGenerator (or ObjectRef through Ray Client) to cancel
    task: asyncio.Task | None = None  # the coroutine reading its events


@dataclass(eq=False)
class _Actor:
    index: int
    name: str  # "gpu0", "cpu1", ...
    handle: Any  # ray.actor.ActorHandle
    state: Literal["starting", "idle", "busy", "lost", "dead"] = "starting"
    epoch: int = 0  # bumped each time the actor is lost; stale callbacks carry an older one
    job: _Job | None = None
    pid: int | None = None
    node_id: str | None = None
    was_ready: bool = False
    init_error: str | None = None
    task: asyncio.Task | None = None  # its start-up or restart watcher

    @property
    def live(self) -> bool:
        return self.state in ("idle", "busy")


class RayPool(QueueingPool):
    """A :class:`WorkerPool` of Ray actors: one per GPU in the cluster, or ``cpu_actors`` on CPUs.

    ``address``: ``""`` starts a Ray instance on this machine; ``"auto"`` joins the cluster
    this machine belongs to (``ray start`` ran here); ``"HOST:6379"`` joins that head node;
    ``"ray://HOST:10001"`` connects through Ray Client (progress is polled, not streamed).
    ``devices``: ``"auto"`` (one actor per GPU in the cluster, more as GPU nodes join; CPU
    actors when the cluster has no GPU), ``"gpu"`` (GPUs required) or ``"cpu"``.
    ``cpu_actors``: actors on a CPU-only cluster, each reserving ``cpus_per_actor`` CPUs
    (also its TensorFlow thread count). ``ray_init``: extra ``ray.init`` arguments (for a
    local instance e.g. ``num_cpus``, ``object_store_memory``). ``retries``: default reruns of
    a job whose actor died (``JobSpec.retries`` overrides). ``max_restarts``: Ray restarts of
    each actor (-1: no limit). ``no_capacity_timeout_s``: how long queued jobs wait while no
    actor is live before they fail. ``rescan_interval_s``: how often the cluster's GPU count
    is checked for new nodes. ``max_start_backoff_s``: the longest wait before an actor that
    failed to start is replaced (2 s after the first failure, then 4, 8 ...). The other
    arguments are as for :class:`LocalPool`.

    ``start`` returns once every actor became ready or failed its first start (or after
    ``start_timeout_s``, while some wait for room on the cluster); if none is ready it raises
    :class:`WorkerStartError` and the pool keeps trying until ``shutdown``. A failed
    connection raises too, but then the pool is already shut down.

    ``free_slots`` changes when the caller submits, when a job ends, and when actors are
    lost or come back (a restarted actor, a new GPU node), so a scheduler should also
    re-check it now and then (the bot does, every second).
    """

    _job_class = _Job

    def __init__(
        self,
        *,
        address: str = "",
        devices: Literal["auto", "gpu", "cpu"] = "auto",
        cpu_actors: int = 1,
        cpus_per_actor: int = 1,
        warm_params: dict[str, Any] | None = None,
        timeout_s: float | None = 600.0,
        retries: int = 1,
        progress_interval_s: float = 0.5,
        oom_retries: int = 3,
        cancel_grace_s: float = 5.0,
        start_timeout_s: float = 300.0,
        connect_timeout_s: float = 60.0,
        no_capacity_timeout_s: float = 120.0,
        rescan_interval_s: float = 15.0,
        max_restarts: int = -1,
        max_start_backoff_s: float = 300.0,
        worker_init: str | None = None,
        ray_init: Mapping[str, Any] | None = None,
    ) -> None:
        if devices not in ("auto", "gpu", "cpu"):
            raise ValueError("devices must be 'auto', 'gpu' or 'cpu'")
        if cpu_actors < 1 or cpus_per_actor < 1:
            raise ValueError("cpu_actors and cpus_per_actor must be at least 1")
        if warm_params is not None:
            StylizeParams.from_dict(warm_params)  # fail here, not in every actor
        super().__init__(timeout_s=timeout_s, retries=retries, cancel_grace_s=cancel_grace_s,
                         max_start_backoff_s=max_start_backoff_s)
        self._address = (address or "").strip()
        self._devices = devices
        self._cpu_actors = cpu_actors
        self._cpus_per_actor = cpus_per_actor
        self._start_timeout_s = start_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._no_capacity_timeout_s = no_capacity_timeout_s
        self._rescan_interval_s = rescan_interval_s
        self._max_restarts = max_restarts
        self._ray_init = dict(ray_init or {})
        self._worker_config: dict[str, Any] = {
            "warm_params": warm_params, "worker_init": worker_init,
            "progress_interval_s": progress_interval_s, "oom_retries": oom_retries,
        }
        self._client_mode = self._address.startswith("ray://")
        self._ray: Any = None  # the ray module, once imported
        self._actor_class: Any = None
        self._owns_ray = False  # this pool called ray.init, so shutdown calls ray.shutdown
        self._ray_release = threading.Event()  # set at shutdown: the owner thread disconnects
        self._ray_released = threading.Event()
        self._gpu = False
        self._actors: list[_Actor] = []
        self._rescan_task: asyncio.Task | None = None
        self._drive_tasks: set[asyncio.Task] = set()
        self._no_capacity_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ public API

    @property
    def capacity(self) -> int:
        """Live actors (warm, not being restarted); before ``start``: the planned CPU actors."""
        if self._loop is None:
            return self._cpu_actors if self._devices == "cpu" else 0
        return sum(1 for a in self._actors if a.live)

    @property
    def workers_alive(self) -> int:
        return self.capacity

    @property
    def address(self) -> str:
        return self._address

    def worker_pids(self) -> list[int]:
        """Process ids of the live actors (on their own nodes), by index."""
        return [a.pid for a in self._actors if a.live and a.pid is not None]

    def worker_nodes(self) -> dict[str, str]:
        """Ray node id of each live actor, by worker name."""
        return {a.name: a.node_id for a in self._actors if a.live and a.node_id is not None}

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until every actor is live (none starting, being restarted or waiting to start again)."""
        def waiting(actor: _Actor) -> bool:
            return actor.state in ("starting", "lost") or (actor.state == "dead"
                                                             and actor.index in self._start_retries)

        async def poll() -> None:
            while not self._actors or any(waiting(a) for a in self._actors):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    async def start(self) -> None:
        if self._loop is not None:
            raise PoolError("the pool was already started")
        self._loop = asyncio.get_running_loop()
        self._starting = True
        try:
            await self._connect()
            target = await self._plan()
            for index in range(target):
                self._add_actor(index)
            firsts = list(self._actors)  # a failed one may be replaced in self._actors meanwhile
            waits = [a.task for a in firsts if a.task is not None]
            await asyncio.wait(waits, timeout=self._start_timeout_s)
        except BaseException as exc:
            self._starting = False
            if isinstance(exc, Exception):  # not retried: say why the pool is down
                self._start_failure = str(exc) if isinstance(exc, WorkerStartError) else \
                    f"the pool could not start ({type(exc).__name__}: {exc})"
            await self.shutdown()
            raise
        self._starting = False
        if self._rescan_interval_s > 0 and self._gpu:
            self._rescan_task = asyncio.create_task(self._rescan(), name="nst-ray-rescan")
        failed = [a for a in firsts if a.init_error is not None]
        waiting = [a.name for a in firsts if a.state == "starting"]
        if not any(a.was_ready for a in firsts) and not any(a.live for a in self._actors):
            if failed:
                raise WorkerStartError(f"A stylisation worker could not start on the Ray cluster: "
                                       f"{failed[0].init_error}; the pool keeps trying to start one")
            resources = await self._cluster_resources()
            raise WorkerStartError(
                f"No Ray actor became ready within {self._start_timeout_s:g} seconds. Each needs "
                f"{self._actor_needs()}; the cluster has {_describe(resources)}. The pool keeps waiting for room.")
        if failed:
            log.warning("ray pool: %d actor(s) could not start, going on with the others: %s", len(failed),
                        failed[0].init_error)
        if waiting:
            log.warning("ray pool: %d actor(s) not ready after %.0f s, going on without them for now: %s",
                        len(waiting), self._start_timeout_s, ", ".join(waiting))
        self._pump()

    def _stop_running(self, job: _Job) -> None:
        self._ray_cancel(job)

    async def _close_workers(self) -> None:
        if self._no_capacity_timer is not None:
            self._no_capacity_timer.cancel()
        tasks = [t for t in (self._rescan_task, *(a.task for a in self._actors), *self._drive_tasks)
                 if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_actors()
        self._ray_release.set()  # the owner thread (if any) calls ray.shutdown(), even after a late connect
        if self._owns_ray:
            self._owns_ray = False
            await asyncio.get_running_loop().run_in_executor(None, self._ray_released.wait, 30.0)

    # ------------------------------------------------------------------ connecting

    async def _connect(self) -> None:
        """Import Ray and connect (or start a local instance) without blocking the loop."""
        try:
            import ray
        except ImportError as exc:
            raise WorkerStartError(
                f'The Ray backend needs Ray, which is not installed ({exc}). Install it with pip install "stylebot[ray]" '
                "or use the local backend.") from None
        self._ray = ray
        loop = asyncio.get_running_loop()
        if ray.is_initialized():  # the application connected already: use that connection
            log.info("ray pool: using the existing Ray connection")
            return
        where = self._address or "a new local Ray instance"
        if self._address and self._address != "auto":
            await loop.run_in_executor(None, _check_reachable, self._address, min(10.0, self._connect_timeout_s))
        kwargs: dict[str, Any] = {"address": self._address} if self._address else {"include_dashboard": False}
        kwargs.update(self._ray_init)
        connected: asyncio.Future = loop.create_future()
        # Ray Client starts a server per connection on the head, which now and then fails to start.
        attempts = 3 if self._client_mode else 1

        def settle(error: BaseException | None) -> None:
            if not connected.done():
                if error is None:
                    connected.set_result(None)
                else:
                    connected.set_exception(error)

        def own() -> None:
            # A daemon thread, so a hung ray.init cannot keep the process alive. It lives until
            # shutdown: a local Ray instance's processes die with the thread that started them.
            error: BaseException | None = None
            for attempt in range(attempts):
                try:
                    ray.init(**kwargs)
                    error = None
                    break
                except BaseException as exc:  # noqa: BLE001 - reported to the loop
                    error = exc
                    if attempt + 1 < attempts and not self._ray_release.is_set():
                        log.warning("ray pool: connecting failed (%s); trying again", " ".join(str(exc).split())[:200])
                        time.sleep(2.0)
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:
                pass  # the loop closed meanwhile: nobody waits for this connection any more
            if error is None:
                self._ray_release.wait()
                try:
                    ray.shutdown()
                finally:
                    self._ray_released.set()

        threading.Thread(target=own, name="nst-ray-owner", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(connected), self._connect_timeout_s)
        except asyncio.TimeoutError:
            raise WorkerStartError(f"Could not connect to the Ray cluster at {where} within "
                                   f"{self._connect_timeout_s:g} seconds.") from None
        except Exception as exc:
            text = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise WorkerStartError(f"Could not connect to the Ray cluster at {where}: {text}") from None
        self._owns_ray = True
        log.info("ray pool: connected", extra={"address": where, "client": self._client_mode})

    async def _cluster_resources(self) -> dict[str, float]:
        assert self._ray is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._ray.cluster_resources)
        except Exception as exc:  # noqa: BLE001 - only used for sizing and messages
            log.warning("ray pool: could not read the cluster's resources: %s", exc)
            return {}

    async def _plan(self) -> int:
        """Choose GPU or CPU actors and how many; defines the remote actor class."""
        resources = await self._cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self._gpu = self._devices == "gpu" or (self._devices == "auto" and gpus > 0)
        if self._gpu and gpus == 0:
            raise WorkerStartError('The Ray cluster has no GPU (devices = "gpu"); start GPU worker nodes first '
                                   "(ray start --address HEAD:6379 on each GPU host).")
        config = dict(self._worker_config)
        options: dict[str, Any] = {"max_restarts": self._max_restarts, "max_task_retries": 0,
                                   "num_cpus": self._cpus_per_actor}
        if self._gpu:
            options["num_gpus"] = 1
        else:
            config.update(cpu_only=True, intra_threads=self._cpus_per_actor)
        self._worker_config = config
        self._actor_class = self._ray.remote(StyleWorker).options(**options)
        target = gpus if self._gpu else self._cpu_actors
        log.info("ray pool: planned actors", extra={"actors": target, "gpu": self._gpu, "cluster": _describe(resources)})
        return target

    def _actor_needs(self) -> str:
        return f"1 GPU and {self._cpus_per_actor} CPU" if self._gpu else f"{self._cpus_per_actor} CPU"

    # ------------------------------------------------------------------ actors

    def _add_actor(self, index: int) -> _Actor:
        name = f"{'gpu' if self._gpu else 'cpu'}{index}"
        handle = self._actor_class.remote(name, self._worker_config)
        actor = _Actor(index, name, handle)
        if index < len(self._actors):
            self._actors[index] = actor
        else:
            self._actors.append(actor)
        actor.task = asyncio.create_task(self._await_start(actor), name=f"nst-ray-start-{name}")
        return actor

    async def _await_start(self, actor: _Actor) -> None:
        """Wait (without limit) for a new actor to be placed and warm."""
        ray = self._ray
        while True:
            try:
                actor.pid, actor.node_id = await actor.handle.ready.remote()
                break
            except ray.exceptions.ActorUnavailableError:
                await asyncio.sleep(1.0)  # its node is flaky: Ray restarts it or reports it dead
            except ray.exceptions.RayActorError as exc:
                actor.state = "dead"
                actor.init_error = _actor_error_text(exc)
                self._kill(actor, restart=False)  # (killed while loading, Ray would restart it as well)
                self._start_failed(actor.index, actor.name, actor.init_error)
                self._pump()
                return
        actor.state, actor.was_ready = "idle", True
        self._start_succeeded(actor.index)
        log.info("ray pool: actor ready", extra={"worker": actor.name, "pid": actor.pid, "node": actor.node_id})
        self._pump()

    async def _rescan(self) -> None:
        """Add an actor per GPU that joined the cluster; replace actors that died for good."""
        while not self._closing:
            await asyncio.sleep(self._rescan_interval_s)
            if self._closing:
                continue
            gpus = int((await self._cluster_resources()).get("GPU", 0))
            present = [a for a in self._actors if a.state != "dead" or a.index in self._start_retries]
            if len(present) >= gpus:
                continue
            free = [a.index for a in self._actors if a.state == "dead" and a.index not in self._start_retries] + list(
                range(len(self._actors), len(self._actors) + gpus))
            for index in free[: gpus - len(present)]:
                log.info("ray pool: adding an actor", extra={"index": index, "cluster_gpus": gpus})
                if index < len(self._actors):
                    self._restarts += 1  # it replaces one that is gone for good
                self._add_actor(index)

    def _on_actor_lost(self, actor: _Actor, epoch: int, why: str, kill: bool = False) -> None:
        """The actor's process or node died (or must be replaced): retry its job, watch its restart.

        ``kill``: the process is alive but stuck (a timeout, a cancel it ignored), so it is
        killed and Ray restarts it. Otherwise Ray restarts a dead one by itself; one that was
        only unreachable for a while is killed once the watcher finds the old process again.
        """
        if actor.epoch != epoch or actor.state in ("lost", "dead"):
            return
        actor.epoch += 1
        actor.state = "lost"
        job, actor.job = actor.job, None
        log.warning("ray pool: actor lost", extra={"worker": actor.name, "why": why})
        if kill and not self._closing:
            self._kill(actor, restart=True)
        if job is not None and job.state == "running" and job.actor is actor:
            self._on_job_lost(job, why)
        if not self._closing:
            actor.task = asyncio.create_task(self._watch_restart(actor, actor.epoch, killed=kill),
                                             name=f"nst-ray-watch-{actor.name}")
        self._pump()

    async def _watch_restart(self, actor: _Actor, epoch: int, killed: bool) -> None:
        """Probe a lost actor until Ray has restarted it (a new process) or it is gone for good."""
        ray = self._ray
        old, delay, died = (actor.pid, actor.node_id), 0.5, 0
        while not self._closing and actor.epoch == epoch:
            try:
                answer = await asyncio.wait_for(actor.handle.ready.remote(), _PROBE_TIMEOUT_S)
            except ray.exceptions.ActorDiedError as exc:
                died += 1
                if died >= 3 or getattr(exc, "actor_init_failed", False):
                    actor.state, actor.init_error = "dead", _actor_error_text(exc)
                    log.error("ray pool: actor %s is gone for good: %s", actor.name, actor.init_error)
                    self._replace_dead(actor, start_failed=getattr(exc, "actor_init_failed", False))
                    return
            except (ray.exceptions.RayActorError, asyncio.TimeoutError):
                died = 0
            else:
                if tuple(answer) == old and not killed:
                    self._kill(actor, restart=True)  # it was only unreachable: replace it, its job went elsewhere
                    killed = True
                elif tuple(answer) != old:  # (the old process may answer once before the kill lands)
                    actor.pid, actor.node_id = answer
                    actor.state = "idle"
                    self._restarts += 1
                    log.info("ray pool: actor restarted", extra={"worker": actor.name, "pid": actor.pid,
                                                                  "node": actor.node_id})
                    self._pump()
                    return
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def _replace_dead(self, actor: _Actor, start_failed: bool) -> None:
        """Replace an actor that is gone for good: at once, or after a backoff if its restart failed to start."""
        if start_failed:
            self._start_failed(actor.index, actor.name, actor.init_error or "its start-up failed")
        elif not self._closing:
            self._restarts += 1
            self._add_actor(actor.index)
        self._pump()

    def _respawn(self, index: int) -> bool:
        actor = self._actors[index]
        if actor.state != "dead":
            return False  # (a rescan replaced it meanwhile)
        try:
            self._add_actor(index)
        except Exception as exc:  # noqa: BLE001 - the connection is gone: try again later
            self._start_failed(index, actor.name, f"its Ray actor could not be created ({exc})")
            return False
        return True

    def _waiting_reason(self) -> str:
        if any(a.state == "lost" for a in self._actors):
            return "workers are being restarted (their process or node was lost)"
        return super()._waiting_reason()

    def _kill(self, actor: _Actor, restart: bool) -> None:
        try:
            self._ray.kill(actor.handle, no_restart=not restart)
        except Exception as exc:  # noqa: BLE001 - already gone, or the cluster is unreachable
            log.debug("ray.kill(%s) failed: %s", actor.name, exc)

    async def _stop_actors(self) -> None:
        """Kill every actor for good and wait (briefly) until Ray reports each one dead."""
        if self._ray is None or not self._actors:
            return
        ray = self._ray
        actors = [a for a in self._actors if a.state != "dead"]
        for actor in actors:
            self._kill(actor, restart=False)

        async def gone(actor: _Actor) -> None:
            while True:
                try:
                    await asyncio.wait_for(actor.handle.ready.remote(), 2.0)
                except ray.exceptions.ActorDiedError:
                    return
                except (ray.exceptions.RayActorError, asyncio.TimeoutError):
                    pass
                except Exception:  # noqa: BLE001 - the connection itself is gone: nothing to wait for
                    return
                await asyncio.sleep(0.1)

        if actors:
            try:
                await asyncio.wait_for(asyncio.gather(*(gone(a) for a in actors)), _STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("ray pool: some actors were not confirmed dead within %.0f s", _STOP_TIMEOUT_S)
        for actor in self._actors:
            actor.state, actor.job = "dead", None

    # ------------------------------------------------------------------ jobs

    def _pump(self) -> None:
        """Start queued jobs on idle actors (lowest index first); watch for lost capacity."""
        if self._loop is None:
            return  # (while shutdown drains, queued jobs still start; then the queue is emptied)
        for actor in self._actors:
            if not self._queue:
                break
            if actor.state == "idle":
                self._dispatch(self._queue.popleft(), actor)
        if self._queue and not self._starting and not self._closing and not any(a.live for a in self._actors):
            if self._no_capacity_timer is None and self._no_capacity_timeout_s is not None:
                self._no_capacity_timer = self._loop.call_later(self._no_capacity_timeout_s, self._on_no_capacity)
        elif self._no_capacity_timer is not None:
            self._no_capacity_timer.cancel()
            self._no_capacity_timer = None

    def _on_no_capacity(self) -> None:
        self._no_capacity_timer = None
        if any(a.live for a in self._actors) or self._closing:
            self._pump()
            return
        lost = sum(1 for a in self._actors if not a.live)
        why = (f"none could start: {self._start_error}" if self._start_retries and self._start_error
               else f"{lost} are being restarted or cannot be placed")
        log.error("ray pool: no live actor for %.0f s; failing %d queued job(s)", self._no_capacity_timeout_s,
                  len(self._queue))
        while self._queue:
            job = self._queue[0]
            if job.attempt:
                self._end_job(job, Failed(
                    job.spec.job_id, "The worker running this job was lost and no other stylisation worker is "
                                     "available on the Ray cluster. Please try again later.", "worker_died"))
            else:
                self._end_job(job, Failed(
                    job.spec.job_id, f"No stylisation worker is available on the Ray cluster right now "
                                     f"({why}). Please try again later.",
                    "error"))

    def _dispatch(self, job: _Job, actor: _Actor) -> None:
        assert self._loop is not None
        self._next_dispatch(job)
        job.actor, actor.job, actor.state = actor, job, "busy"
        try:  # submitted at once, so a cancel right after this reaches Ray
            if self._client_mode:
                job.ray_task = actor.handle.run_buffered.remote(f"{job.spec.job_id}:{job.seq}", job.spec, job.attempt)
            else:
                job.ray_task = actor.handle.run.remote(job.spec, job.attempt)
        except Exception as exc:  # noqa: BLE001 - the connection or the actor is gone
            log.error("ray pool: could not submit job %s to %s: %s", job.spec.job_id, actor.name, exc)
            self._loop.call_soon(self._on_actor_lost, actor, actor.epoch, "its Ray actor could not be reached")
            return
        job.task = asyncio.create_task(self._drive(job, actor, job.seq, actor.epoch, job.ray_task),
                                       name=f"nst-ray-job-{job.spec.job_id}")
        self._drive_tasks.add(job.task)
        job.task.add_done_callback(self._drive_tasks.discard)

    async def _stream(self, job: _Job, actor: _Actor, seq: int, call: Any) -> AsyncIterator[Event]:
        """The job's events as they come: a streaming generator, or polling through Ray Client."""
        if not self._client_mode:
            async for ref in call:  # an ObjectRefGenerator: one object per event
                yield await ref
            return
        key, ref, cursor = f"{job.spec.job_id}:{seq}", call, 0
        while True:
            events, ended = await actor.handle.poll.remote(key, cursor, _POLL_WAIT_S)
            cursor += len(events)
            for event in events:
                yield event
            if ended:
                await ref  # raises if the job was cancelled or failed in the actor
                return

    async def _drive(self, job: _Job, actor: _Actor, seq: int, epoch: int, call: Any) -> None:
        """Forward one dispatch's events to the job's handle; then free (or give up) its actor."""
        ray = self._ray
        stream = self._stream(job, actor, seq, call)
        try:
            async for event in stream:
                if not self._current(job, seq):
                    return  # ended by a timeout, a stuck cancel or shutdown: the actor was dealt with
                if isinstance(event, Retrying):
                    self._retry_count += 1
                if isinstance(event, (Finished, Failed)):
                    self._end_job(job, event)
                    break
                job.handle.deliver(event)
            else:
                if self._current(job, seq):
                    self._end_job(job, Failed(job.spec.job_id, "The worker ended the job without a result. "
                                                               "Please try again.", "error"))
        except ray.exceptions.TaskCancelledError:
            await self._on_cancelled(job, actor, seq, epoch)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
                ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError) as exc:
            self._on_actor_lost(actor, epoch, _actor_error_text(exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the transport: keep the actor, tell the user little, log the rest
            if _is_cancellation(exc):  # through Ray Client the cancellation arrives as a plain RayTaskError
                await self._on_cancelled(job, actor, seq, epoch)
                return
            log.error("ray pool: job %s failed in transport", job.spec.job_id, exc_info=exc)
            if self._current(job, seq):
                self._end_job(job, Failed(job.spec.job_id, "The stylisation failed because of an internal error "
                                                           f"({type(exc).__name__}).", "error"))
            await self._settle(actor, epoch)
            return
        finally:
            await stream.aclose()
        self._release(actor, epoch)

    async def _on_cancelled(self, job: _Job, actor: _Actor, seq: int, epoch: int) -> None:
        if self._current(job, seq):
            self._end_job(job, Failed(job.spec.job_id, CANCELLED_REASON, "cancelled"))
        await self._settle(actor, epoch)

    async def _settle(self, actor: _Actor, epoch: int) -> None:
        """After a cancel or error: free the actor once its job thread stopped, or replace it."""
        ray = self._ray
        try:
            await asyncio.wait_for(actor.handle.idle.remote(), self._cancel_grace_s)
        except asyncio.TimeoutError:
            if actor.epoch == epoch and not self._closing:
                log.warning("ray pool: actor %s did not stop its job within %.1f s; replacing it", actor.name,
                            self._cancel_grace_s)
                self._on_actor_lost(actor, epoch, "its job did not stop when cancelled", kill=True)
            return
        except ray.exceptions.RayActorError as exc:
            self._on_actor_lost(actor, epoch, _actor_error_text(exc))
            return
        self._release(actor, epoch)

    def _release(self, actor: _Actor, epoch: int) -> None:
        if actor.epoch == epoch and actor.state == "busy":
            actor.state, actor.job = "idle", None
            self._pump()

    def _on_job_lost(self, job: _Job, why: str) -> None:
        """The actor running ``job`` died: retry the job on another actor if allowed, else fail it."""
        job.clear_timers()
        if job.cancel_requested:
            self._end_job(job, Failed(job.spec.job_id, CANCELLED_REASON, "cancelled"))
        elif job.attempt <= job.retries and not self._closing:
            self._retry_count += 1
            job.state, job.actor, job.ray_task = "queued", None, None
            job.handle.deliver(Retrying(job.spec.job_id, "worker_died",
                                        f"The worker running this job stopped ({why}); trying again on another worker."))
            self._queue.appendleft(job)  # it was admitted first: keep its place
        else:
            self._end_job(job, Failed(
                job.spec.job_id, f"The worker running this job stopped unexpectedly ({why}). Please try again.",
                "worker_died"))

    def _on_timeout(self, job: _Job, seq: int) -> None:
        if not self._current(job, seq):
            return
        actor = job.actor
        self._end_job(job, Failed(job.spec.job_id, f"The job timed out after {job.timeout_s:g} seconds.", "timeout"))
        if actor is not None and actor.job is job:
            self._on_actor_lost(actor, actor.epoch, "its job timed out", kill=True)  # a step cannot be interrupted

    def _cancel_running(self, job: _Job) -> None:
        self._ray_cancel(job)

    def _ray_cancel(self, job: _Job) -> None:
        if job.ray_task is None:
            return
        try:
            self._ray.cancel(job.ray_task)
        except Exception as exc:  # noqa: BLE001 - already finished, or the actor is gone
            log.debug("ray.cancel(%s) failed: %s", job.spec.job_id, exc)

    def _on_cancel_stuck(self, job: _Job, seq: int) -> None:
        """The cancel never reached the job (the actor's event loop is blocked): replace the actor."""
        if not self._current(job, seq):
            return
        actor = job.actor
        self._end_job(job, Failed(job.spec.job_id, CANCELLED_REASON, "cancelled"))
        if actor is not None and actor.job is job:
            self._on_actor_lost(actor, actor.epoch, "it ignored a cancel", kill=True)


# --------------------------------------------------------------------------- helpers


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast (instead of Ray's long retries) when nothing listens at ``address``."""
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        return  # let ray.init judge an unusual address
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise WorkerStartError(
            f"Cannot reach the Ray cluster at {address} ({exc.strerror or exc}). Start the head node "
            "(ray start --head) and check the address and that the port is open to this machine.") from None


def _is_cancellation(exc: BaseException) -> bool:
    """A job cancelled by ``ray.cancel``, as Ray Client reports it (a RayTaskError naming it)."""
    import ray

    if isinstance(getattr(exc, "cause", None), ray.exceptions.TaskCancelledError):
        return True
    lines = str(exc).strip().splitlines()
    return bool(lines) and "TaskCancelledError" in lines[-1]


def _actor_error_text(exc: BaseException) -> str:
    """A short reason for logs and users from a Ray actor error (its first meaningful line)."""
    text = str(exc)
    if "creation task" in text:
        # e.g. "The actor died because of an error raised in its creation task, ...\nModuleNotFoundError: ..."
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        return f"its start-up failed: {last}"[:300]
    if "node" in text.lower() and ("died" in text.lower() or "dead" in text.lower()):
        return "its node left the Ray cluster"
    if "killed" in text.lower() and "ray.kill" in text:
        return "its Ray actor was killed"
    if type(exc).__name__ == "ActorUnavailableError":
        return "its Ray actor became unreachable"
    return "its Ray actor died"


def _describe(resources: Mapping[str, float]) -> str:
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    return f"{cpus:g} CPU and {gpus:g} GPU"
