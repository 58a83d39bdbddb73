"""One Ray actor as a pool worker: the worker protocol translated to Ray calls and Ray errors.

:class:`RayWorker` is one life of a :class:`~nst_core.pool.ray_actor.StyleActor` in a slot of
a ``RayPool``. Ray restarts an actor whose process or node died (``max_restarts``),
so a lost worker's replacement usually watches the same actor handle until a new process
answers; only an actor that is gone for good is replaced by a new one.

* start: wait for ``ready()`` (without limit: the actor may wait for room on the cluster);
  after a loss, probe until a new process answers (an old one that answers after all was only
  unreachable: it is killed, its job went elsewhere).
* run: a streaming generator call; each object is one event. Its errors are classified by
  type: ``TaskCancelledError`` ends the job as cancelled; ``RayActorError`` (died, or
  unavailable: a process or node lost), ``WorkerCrashedError``, ``NodeDiedError``,
  ``LocalRayletDiedError``, ``OutOfMemoryError`` and ``ObjectLostError`` mean the worker is
  lost; anything else is a bug in the transport (the job fails, the actor is kept).
* cancel: ``ray.cancel`` on the job's call; the actor then waits (``idle()``) for its job
  thread before it is free again.
* kill: ``ray.kill`` (Ray restarts it, except at shutdown), reported lost at once.

Ray is imported by the pool when it starts; this module only uses the ``ray`` it is given.
A worker knows its pool only as :class:`~nst_core.pool.protocol.WorkerReports`, and the
pool's other help (starting tasks, creating actors) as plain callables.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

from .base import Failed, Finished
from .protocol import CANCELLED_REASON, PoolJob, Slot, Worker, WorkerReports

__all__ = ["RayWorker"]

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 60.0  # one ready() probe of a restarting actor
_GONE_PROBE_S = 2.0  # one ready() probe of an actor killed at shutdown


class RayWorker(Worker):
    """One life of a Ray actor in a slot; ``previous`` is the life before it, which Ray restarts.

    ``ray`` is the ray module; ``spawn(coro, name)`` runs a task the pool cancels when it
    closes; ``new_actor(name)`` creates a fresh actor, for one that is gone for good.
    """

    def __init__(self, pool: WorkerReports, slot: Slot, handle: Any, previous: "RayWorker | None", *, ray: Any,
                 spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task],
                 new_actor: Callable[[str], Any]) -> None:
        super().__init__(slot)
        self._pool = pool
        self._ray = ray
        self._spawn = spawn
        self._new_actor = new_actor
        self.handle = handle  # ray.actor.ActorHandle
        self.killed = False  # the pool killed this life (Ray restarts the actor)
        self._ended = False  # killed for good: nothing more to do
        self._call: Any = None  # the running job's ObjectRefGenerator, for ray.cancel
        if previous is None:
            start = self._await_new()
        else:
            start = self._await_restart((previous.pid, previous.node), previous.killed)
        self._task: asyncio.Task | None = spawn(start, f"nst-ray-start-{slot.name}")

    # ------------------------------------------------------------------ the protocol

    def run(self, job: PoolJob) -> None:
        try:  # submitted at once, so a cancel right after this reaches Ray
            self._call = self.handle.run.remote(job.spec, job.attempt)
        except Exception as exc:  # noqa: BLE001 - the connection or the actor is gone
            log.error("ray pool: could not submit job %s to %s: %s", job.spec.job_id, self.slot.name, exc)
            asyncio.get_running_loop().call_soon(self._pool.worker_lost, self, "its Ray actor could not be reached")
            return
        self._task = self._spawn(self._drive(job.spec.job_id, job.seq, self._call),
                                       f"nst-ray-job-{job.spec.job_id}")

    def cancel(self, job: PoolJob) -> None:
        if self._call is None:
            return
        try:
            self._ray.cancel(self._call)
        except Exception as exc:  # noqa: BLE001 - already finished, or the actor is gone
            log.debug("ray.cancel(%s) failed: %s", job.spec.job_id, exc)

    def kill(self) -> None:
        if self._ended:
            return
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if self._pool.closed:  # for good, and wait until Ray reports it dead
            self._end()
            self._task = self._spawn(self._confirm_gone(), f"nst-ray-stop-{self.slot.name}")
            return
        self.killed = True
        self._kill_actor(restart=True)
        asyncio.get_running_loop().call_soon(self._pool.worker_lost, self, "its Ray actor was killed")

    # ------------------------------------------------------------------ starting

    async def _await_new(self) -> None:
        """Wait (without limit) for a new actor to be placed and warm."""
        ray = self._ray
        while True:
            try:
                pid, node, error = await self.handle.ready.remote()
                break
            except ray.exceptions.ActorUnavailableError:
                await asyncio.sleep(1.0)  # its node is flaky: Ray restarts it or reports it dead
            except ray.exceptions.RayActorError as exc:
                self._start_failed(_death_text(ray, exc))
                return
        self._answered(pid, node, error)

    async def _await_restart(self, old: tuple[int | None, str | None], killed: bool) -> None:
        """Probe a lost actor until Ray has restarted it (a new process) or it is gone for good."""
        ray = self._ray
        delay, died = 0.5, 0
        while True:
            try:
                pid, node, error = await asyncio.wait_for(self.handle.ready.remote(), _PROBE_TIMEOUT_S)
            except ray.exceptions.ActorDiedError as exc:
                if exc.actor_init_failed:
                    self._start_failed(_death_text(ray, exc))
                    return
                died += 1
                if died >= 3:  # gone for good (its restarts ran out, say): a new actor takes its place
                    log.error("ray pool: actor %s is gone for good; creating a new one", self.slot.name)
                    try:
                        self.handle = self._new_actor(self.slot.name)
                    except Exception as exc:  # noqa: BLE001 - the connection is gone: try again later
                        self._start_failed(f"its Ray actor could not be created ({type(exc).__name__}: {exc})")
                        return
                    await self._await_new()
                    return
            except (ray.exceptions.RayActorError, asyncio.TimeoutError):
                died = 0
            else:
                if (pid, node) != old:  # (the old process may answer once before a kill lands)
                    self._answered(pid, node, error)
                    return
                if not killed:  # it was only unreachable: replace it, its job went elsewhere
                    self._kill_actor(restart=True)
                    killed = True
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def _answered(self, pid: int, node: str, error: str | None) -> None:
        if error is None:
            self._pool.worker_ready(self, pid, node)
        else:
            self._start_failed(error)

    def _start_failed(self, reason: str) -> None:
        self._end()  # (an actor killed while loading would be restarted by Ray as well)
        self._pool.worker_start_failed(self, reason)

    # ------------------------------------------------------------------ running a job

    async def _drive(self, job_id: str, seq: int, call: Any) -> None:
        """Forward one job's events to the pool; then report the actor free (or lost)."""
        ray, pool = self._ray, self._pool
        try:
            async for ref in call:  # an ObjectRefGenerator: one object per event
                event = await ref
                pool.job_event(self, seq, event)
                if isinstance(event, (Finished, Failed)):
                    break
            else:
                pool.job_event(self, seq, Failed(job_id, "The worker ended the job without a result. "
                                                          "Please try again.", "error"))
        except ray.exceptions.TaskCancelledError:
            pool.job_event(self, seq, Failed(job_id, CANCELLED_REASON, "cancelled"))
            await self._settle()
            return
        except _lost_errors(ray) as exc:
            pool.worker_lost(self, _death_text(ray, exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the transport: keep the actor, tell the user little, log the rest
            log.error("ray pool: job %s failed in transport", job_id, exc_info=exc)
            pool.job_event(self, seq, Failed(job_id, "The stylisation failed because of an internal error "
                                                      f"({type(exc).__name__}).", "error"))
            await self._settle()
            return
        self._call = None
        pool.worker_idle(self)

    async def _settle(self) -> None:
        """After a cancel or an error: free the actor once its job thread stopped (the pool kills it if that is late)."""
        try:
            await self.handle.idle.remote()
        except _lost_errors(self._ray) as exc:
            self._pool.worker_lost(self, _death_text(self._ray, exc))
            return
        self._call = None
        self._pool.worker_idle(self)

    # ------------------------------------------------------------------ ending

    def _kill_actor(self, restart: bool) -> None:
        try:
            self._ray.kill(self.handle, no_restart=not restart)
        except Exception as exc:  # noqa: BLE001 - already gone, or the cluster is unreachable
            log.debug("ray.kill(%s) failed: %s", self.slot.name, exc)

    def _end(self) -> None:
        """Kill the actor for good (no restart)."""
        self._ended = True
        self._kill_actor(restart=False)

    async def _confirm_gone(self) -> None:
        """At shutdown: wait until Ray reports the killed actor dead, then report it gone."""
        ray = self._ray
        while True:
            try:
                await asyncio.wait_for(self.handle.ready.remote(), _GONE_PROBE_S)
            except ray.exceptions.ActorDiedError:
                break
            except (ray.exceptions.RayActorError, asyncio.TimeoutError):
                pass
            except Exception:  # noqa: BLE001 - the connection itself is gone: nothing to wait for
                break
            await asyncio.sleep(0.1)
        self._pool.worker_lost(self, "its Ray actor was stopped")


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """The Ray errors that mean the actor (its process, its node) is gone."""
    e = ray.exceptions
    return (e.RayActorError, e.WorkerCrashedError, e.ObjectLostError, e.NodeDiedError, e.LocalRayletDiedError,
            e.OutOfMemoryError)


def _death_text(ray: Any, exc: BaseException) -> str:
    """A short reason for logs and users, chosen by the error's type."""
    e = ray.exceptions
    if isinstance(exc, e.RayActorError) and exc.actor_init_failed:
        # The actor class itself could not be loaded (its own errors come back from ready()).
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return f"its start-up failed: {lines[-1] if lines else type(exc).__name__}"[:300]
    if isinstance(exc, e.ActorUnavailableError):
        return "its Ray actor became unreachable"
    if isinstance(exc, (e.NodeDiedError, e.LocalRayletDiedError)):
        return "its node left the Ray cluster"
    if isinstance(exc, e.OutOfMemoryError):
        return "its node ran out of memory"
    if isinstance(exc, e.WorkerCrashedError):
        return "its process crashed"
    if isinstance(exc, e.ObjectLostError):
        return "its results were lost with its node"
    return "its Ray actor died"
