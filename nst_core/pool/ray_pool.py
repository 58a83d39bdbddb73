"""The Ray backend: warm workers as Ray actors, one per GPU of a Ray cluster (or N on CPUs).

:class:`RayPool` connects to the cluster, plans the actors and keeps their number up with the
cluster's GPUs; each actor is a :class:`~nst_core.pool.ray_actor.StyleActor` and each of its
lives a :class:`~nst_core.pool.ray_worker.RayWorker`, which translates the worker protocol
(:mod:`nst_core.pool.protocol`) to Ray calls. What happens on a fault is the shared pool's
(``queueing`` and ``slots``), as for the local backend: a job whose actor is lost runs again on
another actor (``retries``, with a ``Retrying`` note) or fails with ``worker_died``; a job over
its time limit, or one that ignores its cancel for ``cancel_grace_s``, has its actor killed
(and restarted by Ray); an actor that fails to start is replaced after 2, 4, 8 ... seconds (up
to ``max_start_backoff_s``) for as long as the pool is open.

Ray restarts an actor whose process or node died (``max_restarts``), so ``capacity`` is the
number of live actors: it shrinks while actors are being restarted or cannot be placed, and
grows again when they come back or when GPU nodes join the cluster. Queued jobs that find no
live actor for ``no_capacity_timeout_s`` fail with a clear reason instead of waiting forever.
Not connecting to the cluster at all (Ray missing, nothing at the address) is not retried:
``start`` raises and the pool is shut down.

The bot runs on a node of the cluster (address ``"auto"`` or ``"HEAD_IP:6379"``), so events
stream back as the job runs (a Ray streaming generator, one object per event). Ray Client
(``ray://``) is not supported: it cannot stream, and ``RayPool`` refuses such an address.

Ray is an optional dependency (``pip install "stylebot[ray]"``): it is imported only when
the pool starts, and importing this module does not import Ray or TensorFlow.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any, Coroutine, Literal, Mapping

from .base import WorkerStartError
from .protocol import Slot, Worker
from .queueing import QueueingPool
from .ray_actor import StyleActor
from .ray_worker import RayWorker

__all__ = ["RayPool"]

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 10.0  # waiting for killed actors to be gone at shutdown
RAY_CLIENT_REFUSED = ('Ray Client ("ray://" addresses) is not supported: run the bot on a node of the Ray cluster '
                      'and use the address "auto" or "HEAD_IP:6379".')


class RayPool(QueueingPool):
    """A :class:`WorkerPool` of Ray actors: one per GPU in the cluster, or ``cpu_actors`` on CPUs.

    ``address``: ``""`` starts a Ray instance on this machine; ``"auto"`` joins the cluster
    this machine belongs to (``ray start`` ran here); ``"HOST:6379"`` joins that head node.
    A ``"ray://"`` address (Ray Client) raises ``ValueError``.
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
    arguments are :class:`~nst_core.pool.queueing.QueueingPool`'s.

    ``start`` returns once every actor became ready or failed its first start (or after
    ``start_timeout_s``, while some wait for room on the cluster); if none is ready it raises
    :class:`WorkerStartError` and the pool keeps trying until ``shutdown``. A failed
    connection raises too, but then the pool is already shut down.

    ``free_slots`` changes when the caller submits, when a job ends, and when actors are
    lost or come back (a restarted actor, a new GPU node), so a scheduler should also
    re-check it now and then (the bot does, every second).
    """

    _where = " on the Ray cluster"
    _stop_grace_s = _STOP_TIMEOUT_S
    _reap_wait_s = 0.0  # a kill for good is confirmed within the grace, or not at all

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
        address = (address or "").strip()
        if address.lower().startswith("ray://"):
            raise ValueError(RAY_CLIENT_REFUSED)
        if devices not in ("auto", "gpu", "cpu"):
            raise ValueError("devices must be 'auto', 'gpu' or 'cpu'")
        if cpu_actors < 1 or cpus_per_actor < 1:
            raise ValueError("cpu_actors and cpus_per_actor must be at least 1")
        super().__init__(warm_params=warm_params, worker_init=worker_init, progress_interval_s=progress_interval_s,
                         oom_retries=oom_retries, timeout_s=timeout_s, retries=retries, cancel_grace_s=cancel_grace_s,
                         max_start_backoff_s=max_start_backoff_s, start_wait_s=start_timeout_s,
                         no_capacity_timeout_s=no_capacity_timeout_s)
        self._address = address
        self._devices = devices
        self._cpu_actors = cpu_actors
        self._cpus_per_actor = cpus_per_actor
        self._connect_timeout_s = connect_timeout_s
        self._rescan_interval_s = rescan_interval_s
        self._max_restarts = max_restarts
        self._ray_init = dict(ray_init or {})
        self._ray: Any = None  # the ray module, once imported
        self._actor_class: Any = None
        self._owns_ray = False  # this pool called ray.init, so shutdown calls ray.shutdown
        self._ray_release = threading.Event()  # set at shutdown: the owner thread disconnects
        self._ray_released = threading.Event()
        self._gpu = False
        self._rescan_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # the workers' start, job and stop tasks

    # ------------------------------------------------------------------ public API

    @property
    def capacity(self) -> int:
        """Live actors (warm, not being restarted); before ``start``: the planned CPU actors."""
        if self._loop is None:
            return self._cpu_actors if self._devices == "cpu" else 0
        return self.workers_alive

    @property
    def address(self) -> str:
        return self._address

    def worker_pids(self) -> list[int]:
        """Process ids of the live actors (on their own nodes), by slot."""
        return [s.worker.pid for s in self._slots if s.live and s.worker is not None and s.worker.pid is not None]

    def worker_nodes(self) -> dict[str, str]:
        """Ray node id of each live actor, by worker name."""
        return {s.name: s.worker.node for s in self._slots if s.live and s.worker is not None
                and s.worker.node is not None}

    # ------------------------------------------------------------------ the pool's hooks

    async def _open(self) -> list[str]:
        await self._connect()
        return await self._plan()

    def _start_worker(self, slot: Slot, previous: Worker | None) -> Worker:
        """A new actor for ``slot``, or (after a loss) the same actor, which Ray restarts."""
        if isinstance(previous, RayWorker):
            handle = previous.handle
        else:
            handle, previous = self._new_actor(slot.name), None
        return RayWorker(self, slot, handle, previous, ray=self._ray, spawn=self._spawn, new_actor=self._new_actor)

    def _new_actor(self, name: str) -> Any:
        return self._actor_class.remote(name, self._worker_config)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_started(self) -> None:
        if self._rescan_interval_s > 0 and self._gpu:
            self._rescan_task = asyncio.create_task(self._rescan(), name="nst-ray-rescan")

    async def _none_ready_reason(self) -> str:
        resources = await self._cluster_resources()
        return (f"No Ray actor became ready within {self._start_wait_s:g} seconds. Each needs "
                f"{self._actor_needs()}; the cluster has {_describe(resources)}. The pool keeps waiting for room.")

    def _waiting_reason(self) -> str:
        if any(s.state == "starting" and s.restarting for s in self._slots):
            return "workers are being restarted (their process or node was lost)"
        return super()._waiting_reason()

    async def _close(self) -> None:
        tasks = [t for t in (self._rescan_task, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ray_release.set()  # the owner thread (if any) calls ray.shutdown(), even after a late connect
        if self._owns_ray:
            self._owns_ray = False
            await asyncio.get_running_loop().run_in_executor(None, self._ray_released.wait, 30.0)

    async def _rescan(self) -> None:
        """Add an actor per GPU that joined the cluster."""
        while not self._closing:
            await asyncio.sleep(self._rescan_interval_s)
            if self._closing:
                continue
            gpus = int((await self._cluster_resources()).get("GPU", 0))
            for index in range(len(self._slots), gpus):
                log.info("ray pool: adding an actor", extra={"index": index, "cluster_gpus": gpus})
                self._add_slot(f"gpu{index}")

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
        # "local", not None: ray.init() without an address joins the cluster recorded in
        # /tmp/ray/ray_current_cluster (any `ray start` or cluster_utils head on this machine).
        kwargs: dict[str, Any] = ({"address": self._address} if self._address
                                  else {"address": "local", "include_dashboard": False})
        kwargs.update(self._ray_init)
        connected: asyncio.Future = loop.create_future()

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
            try:
                ray.init(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the loop
                error = exc
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
        log.info("ray pool: connected", extra={"address": where})

    async def _cluster_resources(self) -> dict[str, float]:
        assert self._ray is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._ray.cluster_resources)
        except Exception as exc:  # noqa: BLE001 - only used for sizing and messages
            log.warning("ray pool: could not read the cluster's resources: %s", exc)
            return {}

    async def _plan(self) -> list[str]:
        """Choose GPU or CPU actors and how many (their names); defines the remote actor class."""
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
        self._actor_class = self._ray.remote(StyleActor).options(**options)
        target = gpus if self._gpu else self._cpu_actors
        log.info("ray pool: planned actors", extra={"actors": target, "gpu": self._gpu, "cluster": _describe(resources)})
        return [f"{'gpu' if self._gpu else 'cpu'}{index}" for index in range(target)]

    def _actor_needs(self) -> str:
        return f"1 GPU and {self._cpus_per_actor} CPU" if self._gpu else f"{self._cpus_per_actor} CPU"


# --------------------------------------------------------------------------- helpers


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast (instead of Ray's long retries) when nothing listens at ``address``."""
    host, sep, port = address.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return  # let ray.init judge an unusual address
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise WorkerStartError(
            f"Cannot reach the Ray cluster at {address} ({exc.strerror or exc}). Start the head node "
            "(ray start --head) and check the address and that the port is open to this machine.") from None


def _describe(resources: Mapping[str, float]) -> str:
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    return f"{cpus:g} CPU and {gpus:g} GPU"
