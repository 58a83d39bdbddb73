"""The Ray actor that runs stylisation jobs: a warm Engine and one thread for its jobs.

This module is what runs inside each Ray actor process; the pool side is ``ray_pool`` and
``ray_worker``. It is a plain class (``RayPool`` makes it a Ray actor with ``ray.remote`` when
it starts), so importing it imports neither Ray nor TensorFlow: the bot process names the
class without loading either. Jobs run with the same :func:`~nst_core.pool.job_runner.run_job`
as the local backend, in one job thread, so the compiled step and the style-target cache
serve every later job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import traceback
from typing import Any, AsyncIterator

from ..errors import NSTError
from .base import Event, JobSpec

__all__ = ["StyleActor"]


class StyleActor:
    """The Ray actor (an async actor): a warm Engine and one thread that runs its jobs.

    ``ready`` answers once the engine is warm, with the process id, the Ray node id and why
    the engine could not load (None when it did), so the pool reports a failed start with the
    same reason as a local worker would. ``run`` is a streaming generator of a job's events.
    Cancelling it (``ray.cancel``) cancels the coroutine, which tells the job thread to stop
    between steps; ``idle`` returns once that thread is free, so the pool knows when the actor
    can take a job.
    """

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if config.get("cpu_only"):
            os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow loads
        from .job_runner import load_engine

        self._name = name
        self._config = config
        self._runner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nst-job")
        self._engine: Any = None
        self._init_error: str | None = None
        try:
            self._engine = load_engine(config.get("warm_params"), intra_threads=config.get("intra_threads"),
                                       worker_init=config.get("worker_init"))
        except Exception as exc:  # noqa: BLE001 - reported by ready(); the pool removes this actor
            if not isinstance(exc, NSTError):  # an NSTError's message already says it all
                traceback.print_exc(file=sys.stderr)
            self._init_error = str(exc) if isinstance(exc, NSTError) else f"{type(exc).__name__}: {exc}"

    async def ready(self) -> tuple[int, str, str | None]:
        """The actor's process id, its Ray node id, and why its engine did not load (None: it did)."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id(), self._init_error

    async def idle(self) -> None:
        """Return once no job thread is running (a cancelled job has really stopped)."""
        await asyncio.get_running_loop().run_in_executor(self._runner, _nothing)

    async def run(self, spec: JobSpec, attempt: int) -> AsyncIterator[Event]:
        """Run one job; yields Started, Progress..., then Finished or Failed."""
        from .job_runner import run_job

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
