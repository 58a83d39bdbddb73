"""The local backend: warm worker processes on this host, one per GPU or N on the CPU.

:class:`LocalPool` translates the worker protocol (:mod:`nst_core.pool.protocol`) to
processes and pipes; what happens on a fault (a lost worker, a time limit, a cancel that does
not stop, a worker that cannot start) is the shared pool's (``queueing`` and ``slots``).

Workers are ``spawn``ed (never forked: TensorFlow and the bot's event loop do not survive a
fork), each with ``CUDA_VISIBLE_DEVICES`` naming only its GPU before TensorFlow loads. Each
loads TensorFlow and the backbone once and keeps an :class:`~nst_core.engine.Engine`, so
its compiled step and style-target cache serve every later job (:mod:`nst_core.pool.local_child`).

The event loop never blocks on a worker: one reader thread per worker does the blocking
``recv`` and hands messages to the loop with ``call_soon_threadsafe``; sends go through a
one-thread executor. A worker's exit is noticed when its pipe reaches end-of-file (after
every message it sent has been handled), so a crash, an OOM kill or ``kill -9`` is reported
as a lost worker (or, before it said ready, a failed start). Cancel sets a value in shared
memory that the worker polls between steps; kill is ``SIGKILL``; stop (at shutdown) asks the
worker to exit once its job has stopped.
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
from typing import Any, Callable, Literal, Sequence

from .base import Failed, Finished
from .protocol import PoolJob, Slot, Worker
from .queueing import QueueingPool
from .local_child import child_main

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


class _ProcessWorker(Worker):
    """A worker that is a child process: the protocol over its pipe and its shared cancel value."""

    def __init__(self, pool: "LocalPool", slot: Slot, process: Any, conn: Any, cancel_seq: Any) -> None:
        super().__init__(slot)
        self._pool = pool
        self.process = process  # multiprocessing.process.BaseProcess
        self.conn = conn  # multiprocessing.connection.Connection (the parent's end)
        self.cancel_seq = cancel_seq  # shared 64-bit value: the seq of the job to cancel
        self.said_ready = False
        self.init_error: str | None = None

    def run(self, job: PoolJob) -> None:
        self._pool._send(self, ("job", job.seq, job.spec, job.attempt))

    def cancel(self, job: PoolJob) -> None:
        self.cancel_seq.value = job.seq  # read by the worker between steps

    def kill(self) -> None:
        try:
            self.process.kill()  # its exit follows through the reader thread
        except (OSError, ValueError, AttributeError):
            pass

    def stop(self) -> None:
        self._pool._send(self, ("stop",))  # it exits once its job (cancelled at shutdown) has stopped


class LocalPool(QueueingPool):
    """A :class:`WorkerPool` of ``spawn``ed processes on this host.

    ``devices``: ``"auto"`` (one worker per GPU found, else ``cpu_workers`` on the CPU),
    ``"cpu"`` (``cpu_workers`` workers, GPUs hidden) or a list of GPU ids (one worker each).
    ``cpu_threads``: TensorFlow threads per CPU worker (default: cores / workers).
    ``start_timeout_s``: how long a worker may take to become ready before it is killed and
    counts as a failed start. ``max_start_backoff_s``: the longest wait before a worker slot
    whose worker failed to start tries again (2 s after the first failure, then 4, 8 ...).
    The other arguments (``warm_params``, ``timeout_s``, ``retries``, ``progress_interval_s``,
    ``oom_retries``, ``cancel_grace_s``, ``worker_init``) are
    :class:`~nst_core.pool.queueing.QueueingPool`'s.

    ``start`` returns once every worker became ready or failed its first start; if none is
    ready it raises :class:`WorkerStartError`, but the pool keeps trying in the background
    (``unavailable_reason`` says why no worker runs) until ``shutdown``.

    ``free_slots`` changes only when the caller submits and when a job ends (its terminal
    event), so a scheduler can re-check it on each terminal event instead of polling: a
    worker being replaced (or waiting to try its start again) still counts as a slot, and a
    job submitted meanwhile waits in the pool until a worker is warm.
    """

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
        super().__init__(warm_params=warm_params, worker_init=worker_init, progress_interval_s=progress_interval_s,
                         oom_retries=oom_retries, timeout_s=timeout_s, retries=retries, cancel_grace_s=cancel_grace_s,
                         max_start_backoff_s=max_start_backoff_s, worker_start_timeout_s=start_timeout_s)
        self._devices = devices
        self._cpu_workers = cpu_workers
        self._cpu_threads = cpu_threads
        self._stop_grace_s = _STOP_GRACE_S + cancel_grace_s  # a busy worker first stops its job
        self._reap_wait_s = _REAP_TIMEOUT_S + 5
        self._ctx = multiprocessing.get_context("spawn")
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._setups: list[tuple[dict[str, str], int | None]] = []  # by slot: environment, CPU threads

    # ------------------------------------------------------------------ public API

    @property
    def capacity(self) -> int:
        """Worker slots (one per GPU or CPU worker), whether their worker is ready or not."""
        if not self._slots:
            return self._planned_capacity()
        return len(self._slots)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (starting ones included), by slot."""
        return [s.worker.process.pid for s in self._slots
                if isinstance(s.worker, _ProcessWorker) and s.worker.process.pid]

    # ------------------------------------------------------------------ the protocol, over processes

    def _planned_capacity(self) -> int:
        if isinstance(self._devices, str):
            return self._cpu_workers if self._devices == "cpu" else 0  # "auto": known after start
        return len(self._devices)

    async def _open(self) -> list[str]:
        if isinstance(self._devices, str) and self._devices not in ("auto", "cpu"):
            raise ValueError("devices must be 'auto', 'cpu' or a list of GPU ids")
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nst-pool-send")
        if self._devices == "auto":
            gpus = await asyncio.get_running_loop().run_in_executor(None, detect_gpus)
        elif self._devices == "cpu":
            gpus = []
        else:
            gpus = [str(d) for d in self._devices]  # type: ignore[union-attr]
        base_env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        if gpus:
            self._setups = [({**base_env, "CUDA_VISIBLE_DEVICES": g}, None) for g in gpus]
            return [f"gpu{g}" for g in gpus]
        threads = self._cpu_threads or max(1, (os.cpu_count() or 1) // self._cpu_workers)
        self._setups = [({**base_env, "CUDA_VISIBLE_DEVICES": "-1"}, threads)] * self._cpu_workers
        return [f"cpu{i}" for i in range(self._cpu_workers)]

    def _start_worker(self, slot: Slot, previous: Worker | None) -> Worker:
        """Spawn a worker process for ``slot``; it reports ``ready`` once warm."""
        env, threads = self._setups[slot.index]
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        cancel_seq = self._ctx.RawValue("q", 0)  # shared memory, no lock: one writer, aligned 64-bit
        config = {**self._worker_config, "intra_threads": threads}
        process = self._ctx.Process(
            target=child_main, args=(child_conn, cancel_seq, slot.name, env, config),
            name=f"nst-worker-{slot.name}", daemon=True,  # daemon: multiprocessing ends it if we exit
        )
        worker = _ProcessWorker(self, slot, process, parent_conn, cancel_seq)
        # The environment is inherited at exec time, so the child sees its device before any
        # import (even one made by re-importing the parent's __main__).
        with _ENV_LOCK:
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                process.start()
            except BaseException:
                child_conn.close()
                parent_conn.close()
                raise
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        child_conn.close()  # only the child holds its end now, so its exit means EOF here
        threading.Thread(target=self._read, args=(worker,), name=f"nst-pool-read-{slot.name}", daemon=True).start()
        return worker

    async def _close(self) -> None:
        if self._sender is not None:
            self._sender.shutdown(wait=False)

    def _read(self, worker: _ProcessWorker) -> None:
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

    def _send(self, worker: _ProcessWorker, message: tuple) -> None:
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

    def _on_message(self, worker: _ProcessWorker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            worker.said_ready = True
            self.worker_ready(worker, pid=message[1])
        elif kind == "init_failed":
            worker.init_error = message[1]
        elif kind == "event":
            _, seq, event = message
            self.job_event(worker, seq, event)
            if isinstance(event, (Finished, Failed)):
                self.worker_idle(worker)  # it reads its next message now

    def _on_exit(self, worker: _ProcessWorker, exitcode: int | None) -> None:
        if worker.said_ready:
            self.worker_lost(worker, _exit_text(exitcode))
        else:
            self.worker_start_failed(
                worker, worker.init_error or f"its process exited while starting ({_exit_text(exitcode)})")


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
