"""The local backend: warm worker processes on this host, one per GPU or N on the CPU.

Workers are ``spawn``ed (never forked: TensorFlow and the bot's event loop do not survive a
fork), each with ``CUDA_VISIBLE_DEVICES`` naming only its GPU before TensorFlow loads. Each
loads TensorFlow and the backbone once and keeps an :class:`~nst_core.engine.Engine`, so
its compiled step and style-target cache serve every later job.

The event loop never blocks on a worker: one reader thread per worker does the blocking
``recv`` and hands messages to the loop with ``call_soon_threadsafe``; sends go through a
one-thread executor. A worker's exit is noticed when its pipe reaches end-of-file (after
every message it sent has been handled), so a crash, an OOM kill or ``kill -9`` fails or
retries its job and a replacement starts. A worker that dies while starting (an error loading
the model, a kill, its start time limit) is replaced too, after 2, 4, 8 ... seconds (up to
``max_start_backoff_s``), for as long as the pool is open. Cancelling a running job sets a
shared value the worker polls between steps; a worker that does not react in
``cancel_grace_s`` is killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from ..params import StylizeParams
from .base import Failed, Finished, PoolError, Retrying, WorkerStartError
from .queueing import CANCELLED_REASON, PoolJob, QueueingPool
from .worker import worker_main

__all__ = ["LocalPool", "detect_gpus"]

log = logging.getLogger(__name__)

_ENV_LOCK = threading.Lock()  # os.environ is briefly changed around each process start
_REAP_TIMEOUT_S = 10.0
_STOP_GRACE_S = 5.0


def detect_gpus() -> list[str]:
    """GPU ids visible to this host, without importing TensorFlow.

    ``CUDA_VISIBLE_DEVICES`` wins when set (empty or ``-1``: none); otherwise ``nvidia-smi``.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


@dataclass(eq=False)
class _Job(PoolJob):
    worker: "_Worker | None" = None


@dataclass(eq=False)
class _Slot:
    index: int
    name: str  # "gpu0", "cpu1", ...
    env: dict[str, str]
    intra_threads: int | None
    worker: "_Worker | None" = None


@dataclass(eq=False)
class _Worker:
    slot: _Slot
    process: Any  # multiprocessing.process.BaseProcess
    conn: Any  # multiprocessing.connection.Connection (the parent's end)
    cancel_seq: Any  # shared 64-bit value: the seq of the job to cancel
    ready: asyncio.Future
    exited: asyncio.Future
    state: Literal["starting", "idle", "busy", "stopping", "dead"] = "starting"
    job: _Job | None = None
    pid: int | None = None
    init_error: str | None = None
    was_ready: bool = False
    start_timer: asyncio.TimerHandle | None = None


class LocalPool(QueueingPool):
    """A :class:`WorkerPool` of ``spawn``ed processes on this host.

    ``devices``: ``"auto"`` (one worker per GPU found, else ``cpu_workers`` on the CPU),
    ``"cpu"`` (``cpu_workers`` workers, GPUs hidden) or a list of GPU ids (one worker each).
    ``cpu_threads``: TensorFlow threads per CPU worker (default: cores / workers).
    ``warm_params``: ``StylizeParams.to_dict()`` used to load and trace the model at start;
    jobs with another backbone, weights, layers or precision build theirs on first use.
    ``timeout_s``: default job time limit (``JobSpec.timeout_s`` overrides; None: none).
    ``retries``: default reruns of a job whose worker died (``JobSpec.retries`` overrides).
    ``progress_interval_s``: at most one progress event per interval, besides previews and
    the last step. ``oom_retries``: reruns at 0.75x the size after GPU out-of-memory.
    ``cancel_grace_s``: how long a running job may take to honour a cancel before its
    worker is killed. ``worker_init``: ``"module:function"`` called with each new Engine.
    ``start_timeout_s``: how long a worker may take to become ready before it is killed and
    counts as a failed start. ``max_start_backoff_s``: the longest wait before a worker slot
    whose worker failed to start tries again (2 s after the first failure, then 4, 8 ...).

    ``start`` returns once every worker became ready or failed its first start; if none is
    ready it raises :class:`WorkerStartError`, but the pool keeps trying in the background
    (``unavailable_reason`` says why no worker runs) until ``shutdown``.

    ``free_slots`` changes only when the caller submits and when a job ends (its terminal
    event), so a scheduler can re-check it on each terminal event instead of polling: a
    worker being replaced (or waiting to try its start again) still counts as a slot, and a
    job submitted meanwhile waits in the pool until a worker is warm.
    """

    _job_class = _Job

    def __init__(
        self,
        *,
        devices: Literal["auto", "cpu"] | Sequence[str | int] = "auto",
        cpu_workers: int = 1,
        cpu_threads: int | None = None,
        warm_params: dict[str, Any] | None = None,
        timeout_s: float | None = 600.0,
        retries: int = 0,
        progress_interval_s: float = 0.5,
        oom_retries: int = 3,
        cancel_grace_s: float = 5.0,
        start_timeout_s: float = 300.0,
        max_start_backoff_s: float = 300.0,
        worker_init: str | None = None,
    ) -> None:
        if cpu_workers < 1:
            raise ValueError("cpu_workers must be at least 1")
        if warm_params is not None:
            StylizeParams.from_dict(warm_params)  # fail here, not in every worker
        super().__init__(timeout_s=timeout_s, retries=retries, cancel_grace_s=cancel_grace_s,
                         max_start_backoff_s=max_start_backoff_s)
        self._devices = devices
        self._cpu_workers = cpu_workers
        self._cpu_threads = cpu_threads
        self._start_timeout_s = start_timeout_s
        self._worker_config = {
            "warm_params": warm_params, "worker_init": worker_init,
            "progress_interval_s": progress_interval_s, "oom_retries": oom_retries,
        }
        self._ctx = multiprocessing.get_context("spawn")
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: list[_Slot] = []
        self._workers: set[_Worker] = set()  # every process not yet reaped, replaced ones too

    # ------------------------------------------------------------------ public API

    @property
    def capacity(self) -> int:
        """Worker slots (one per GPU or CPU worker), whether their worker is ready or not."""
        if not self._slots:
            return self._planned_capacity()
        return len(self._slots)

    @property
    def workers_alive(self) -> int:
        return sum(1 for s in self._slots if s.worker is not None and s.worker.state in ("idle", "busy"))

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (starting ones included), by slot."""
        return [s.worker.process.pid for s in self._slots
                if s.worker is not None and s.worker.state != "dead" and s.worker.process.pid]

    async def start(self) -> None:
        if self._loop is not None:
            raise PoolError("the pool was already started")
        self._loop = asyncio.get_running_loop()
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nst-pool-send")
        self._slots = await self._plan_slots()
        for slot in self._slots:
            self._spawn(slot)
        # Each first worker's outcome; one that fails is already being retried meanwhile.
        firsts = [slot.worker.ready for slot in self._slots if slot.worker is not None]
        results = await asyncio.gather(*firsts, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            more = "" if self._closing else "; the pool keeps trying to start one"
            raise WorkerStartError(f"A stylisation worker could not start: {errors[0]}{more}")
        if errors:
            log.warning("%d of %d workers could not start, going on with the others: %s", len(errors),
                        len(results), errors[0])

    def _stop_running(self, job: _Job) -> None:
        if job.worker is not None:
            job.worker.cancel_seq.value = job.seq  # let it stop between steps, then exit on "stop"

    async def _close_workers(self) -> None:
        try:
            await self._stop_workers()
        finally:
            if self._sender is not None:
                self._sender.shutdown(wait=False)

    # ------------------------------------------------------------------ slots and workers

    def _planned_capacity(self) -> int:
        if isinstance(self._devices, str):
            return self._cpu_workers if self._devices == "cpu" else 0  # "auto": known after start
        return len(self._devices)

    async def _plan_slots(self) -> list[_Slot]:
        if isinstance(self._devices, str) and self._devices not in ("auto", "cpu"):
            raise ValueError("devices must be 'auto', 'cpu' or a list of GPU ids")
        if self._devices == "auto":
            gpus = await asyncio.get_running_loop().run_in_executor(None, detect_gpus)
        elif self._devices == "cpu":
            gpus = []
        else:
            gpus = [str(d) for d in self._devices]  # type: ignore[union-attr]
        base_env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        if gpus:
            return [_Slot(i, f"gpu{g}", {**base_env, "CUDA_VISIBLE_DEVICES": g}, None) for i, g in enumerate(gpus)]
        threads = self._cpu_threads or max(1, (os.cpu_count() or 1) // self._cpu_workers)
        return [_Slot(i, f"cpu{i}", {**base_env, "CUDA_VISIBLE_DEVICES": "-1"}, threads)
                for i in range(self._cpu_workers)]

    def _spawn(self, slot: _Slot) -> None:
        """Start a worker process for ``slot``; it reports ``ready`` once warm."""
        assert self._loop is not None
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        cancel_seq = self._ctx.RawValue("q", 0)  # shared memory, no lock: one writer, aligned 64-bit
        config = {**self._worker_config, "intra_threads": slot.intra_threads}
        process = self._ctx.Process(
            target=worker_main, args=(child_conn, cancel_seq, slot.name, slot.env, config),
            name=f"nst-worker-{slot.name}", daemon=True,  # daemon: multiprocessing ends it if we exit
        )
        worker = _Worker(slot, process, parent_conn, cancel_seq, self._loop.create_future(),
                         self._loop.create_future())
        worker.ready.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        slot.worker = worker
        # The environment is inherited at exec time, so the child sees its device before any
        # import (even one made by re-importing the parent's __main__).
        with _ENV_LOCK:
            saved = {k: os.environ.get(k) for k in slot.env}
            os.environ.update(slot.env)
            try:
                process.start()
            except Exception as exc:
                worker.state = "dead"
                worker.init_error = f"could not start a process: {exc}"
                worker.ready.set_exception(WorkerStartError(worker.init_error))
                worker.exited.set_result(None)
                child_conn.close()
                parent_conn.close()
                self._loop.call_soon(self._after_exit, worker)
                return
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        child_conn.close()  # only the child holds its end now, so its exit means EOF here
        self._workers.add(worker)
        worker.start_timer = self._loop.call_later(self._start_timeout_s, self._on_start_timeout, worker)
        threading.Thread(target=self._read, args=(worker,), name=f"nst-pool-read-{slot.name}", daemon=True).start()

    def _read(self, worker: _Worker) -> None:
        """Reader thread: forward every message to the loop, then reap the process."""
        conn = worker.conn
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message: log it, keep reading
                log.exception("bad message from worker %s", worker.slot.name)
                continue
            self._post(self._on_message, worker, message)
        process = worker.process
        process.join(_REAP_TIMEOUT_S)
        if process.exitcode is None:  # pipe closed but still running: should not happen
            process.kill()
            process.join()
        conn.close()
        self._post(self._on_exit, worker, process.exitcode)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nothing left to notify
            pass

    def _send(self, worker: _Worker, message: tuple) -> None:
        """Send off the loop: a large image would otherwise block it while the pipe drains."""
        assert self._sender is not None and self._loop is not None

        def send() -> None:
            try:
                worker.conn.send(message)
            except (OSError, ValueError):
                pass  # the worker is gone; its reader thread reports the exit

        try:
            self._loop.run_in_executor(self._sender, send)
        except RuntimeError:  # executor shut down
            pass

    def _kill(self, worker: _Worker) -> None:
        """Stop a worker now; its exit (and replacement) follows through the reader thread."""
        if worker.state in ("dead",):
            return
        worker.state = "stopping"
        worker.job = None
        try:
            worker.process.kill()
        except (OSError, ValueError, AttributeError):
            pass

    def _on_start_timeout(self, worker: _Worker) -> None:
        if worker.state == "starting":
            worker.init_error = f"it did not become ready within {self._start_timeout_s:g} seconds"
            self._kill(worker)

    def _on_message(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            if worker.start_timer is not None:
                worker.start_timer.cancel()
            if worker.state != "starting":
                return  # killed meanwhile (shutdown, start timeout)
            worker.state = "idle"
            worker.pid = message[1]
            worker.was_ready = True
            self._start_succeeded(worker.slot.index)
            if not worker.ready.done():
                worker.ready.set_result(None)
            self._pump()
        elif kind == "init_failed":
            worker.init_error = message[1]
        elif kind == "event":
            _, seq, event = message
            job = worker.job
            if job is None or job.seq != seq or job.state != "running":
                return  # from a job that already ended (cancelled, timed out)
            if isinstance(event, Retrying):
                self._retry_count += 1
            if isinstance(event, (Finished, Failed)):
                worker.job = None
                worker.state = "idle"
                self._end_job(job, event)
                self._pump()
            else:
                job.handle.deliver(event)

    def _on_exit(self, worker: _Worker, exitcode: int | None) -> None:
        worker.state = "dead"
        self._workers.discard(worker)
        if worker.start_timer is not None:
            worker.start_timer.cancel()
        if not worker.exited.done():
            worker.exited.set_result(exitcode)
        if not worker.ready.done():
            worker.ready.set_exception(WorkerStartError(worker.init_error or _exit_text(exitcode)))
        job, worker.job = worker.job, None
        if job is not None and job.state == "running" and job.worker is worker:
            self._on_job_lost(job, exitcode)
        self._after_exit(worker)

    def _after_exit(self, worker: _Worker) -> None:
        """Replace a worker that exited (after a backoff if it never became ready), unless closing."""
        slot = worker.slot
        if slot.worker is not worker or self._closing:
            return
        if worker.was_ready:
            self._restarts += 1
            self._spawn(slot)
            return
        reason = worker.init_error or f"its process exited while starting ({_exit_text(worker.process.exitcode)})"
        self._start_failed(slot.index, slot.name, reason)

    def _respawn(self, index: int) -> bool:
        slot = self._slots[index]
        if slot.worker is not None and slot.worker.state != "dead":
            return False
        self._spawn(slot)
        return True

    def _on_job_lost(self, job: _Job, exitcode: int | None) -> None:
        """The worker running ``job`` died: retry the job if allowed, else fail it."""
        job.clear_timers()
        if job.cancel_requested:
            self._end_job(job, Failed(job.spec.job_id, CANCELLED_REASON, "cancelled"))
        elif job.attempt <= job.retries and not self._closing:
            self._retry_count += 1
            job.state, job.worker = "queued", None
            job.handle.deliver(Retrying(job.spec.job_id, "worker_died",
                                        f"The worker running this job stopped ({_exit_text(exitcode)}); trying again."))
            self._queue.appendleft(job)  # it was admitted first: keep its place
            self._pump()
        else:
            self._end_job(job, Failed(
                job.spec.job_id,
                f"The worker running this job stopped unexpectedly ({_exit_text(exitcode)}). Please try again.",
                "worker_died"))

    async def _stop_workers(self) -> None:
        """Ask idle workers to exit, kill the rest after a grace period, reap every one."""
        workers = list(self._workers)
        for worker in workers:
            if worker.state in ("idle", "busy"):
                worker.state = "stopping"
                self._send(worker, ("stop",))
            elif worker.state == "starting":
                self._kill(worker)  # still loading TensorFlow: nothing to wait for
        grace = _STOP_GRACE_S + self._cancel_grace_s
        exits = [w.exited for w in workers]
        if exits:
            _, pending = await asyncio.wait(exits, timeout=grace)
            for worker in workers:
                if not worker.exited.done():
                    self._kill(worker)
            if pending:
                await asyncio.wait(pending, timeout=_REAP_TIMEOUT_S + 5)
        for slot in self._slots:
            slot.worker = None

    # ------------------------------------------------------------------ jobs

    def _pump(self) -> None:
        """Start queued jobs on idle workers (lowest slot first, so runs are repeatable)."""
        if not self._queue:
            return
        for slot in self._slots:
            if not self._queue:
                break
            worker = slot.worker
            if worker is not None and worker.state == "idle":
                self._dispatch(self._queue.popleft(), worker)

    def _dispatch(self, job: _Job, worker: _Worker) -> None:
        self._next_dispatch(job)
        job.worker, worker.job, worker.state = worker, job, "busy"
        self._send(worker, ("job", job.seq, job.spec, job.attempt))

    def _on_timeout(self, job: _Job, seq: int) -> None:
        if not self._current(job, seq):
            return
        if job.worker is not None:
            self._kill(job.worker)  # a stuck or slow step cannot be interrupted any other way
        self._end_job(job, Failed(job.spec.job_id, f"The job timed out after {job.timeout_s:g} seconds.", "timeout"))

    def _cancel_running(self, job: _Job) -> None:
        if job.worker is not None:
            job.worker.cancel_seq.value = job.seq

    def _on_cancel_stuck(self, job: _Job, seq: int) -> None:
        if not self._current(job, seq):
            return
        log.warning("job %s ignored its cancel for %.1f s; replacing its worker", job.spec.job_id, self._cancel_grace_s)
        if job.worker is not None:
            self._kill(job.worker)
        self._end_job(job, Failed(job.spec.job_id, CANCELLED_REASON, "cancelled"))

def _exit_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exit code {exitcode}"
