"""Stylisation jobs in warm worker processes, behind an asyncio interface the bot can use.

``base`` defines the backend-neutral interface (:class:`JobSpec`, the events and their
semantics, :class:`JobHandle`, :class:`WorkerPool`). The pool itself is written once, over a
small worker protocol (``protocol``: start, run, cancel, kill): ``slots`` keeps the workers'
lives (start, failed starts with backoff, lost workers replaced, shutdown) and ``queueing``
the jobs' (the pool's own line, dispatch, time limits, cancel, retries, terminal events).
Backends only translate the protocol: ``local`` is the default (:class:`LocalPool`: spawned
processes on this host, each running ``local_child``); ``ray_pool`` with ``ray_worker`` is the
Ray backend (:class:`RayPool`: actors on a Ray cluster, an optional extra) and ``ray_actor`` the
actor class. Either runs its jobs with ``job_runner``. Importing this package imports neither TensorFlow nor Ray.

    pool = LocalPool(devices="auto", warm_params=params.to_dict())
    await pool.start()
    handle = pool.submit(JobSpec(content=png, style=style_png, params=params.to_dict()))
    async for event in handle:
        ...  # Queued, Started, Progress..., then Finished or Failed
    await pool.shutdown(drain=True)
"""

from __future__ import annotations

from .base import (
    FAILURE_KINDS, Event, Failed, FailureKind, Finished, JobHandle, JobSpec, PoolClosed, PoolError, PoolStats,
    Progress, Queued, Retrying, Started, TerminalEvent, WorkerPool, WorkerStartError,
)
from .local import LocalPool, detect_gpus

__all__ = [
    "JobSpec", "JobHandle", "WorkerPool", "PoolStats", "LocalPool", "detect_gpus",
    "Event", "TerminalEvent", "Queued", "Started", "Progress", "Retrying", "Finished", "Failed",
    "FailureKind", "FAILURE_KINDS", "PoolError", "PoolClosed", "WorkerStartError", "RayPool",
]


def __getattr__(name: str) -> object:
    if name == "RayPool":  # lazily: its module is light, but keep the package's import minimal
        from .ray_pool import RayPool

        return RayPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
