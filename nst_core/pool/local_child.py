"""The local backend's worker process: its entry point and its end of the pipe to the pool.

:class:`~nst_core.pool.local.LocalPool` spawns each worker with :func:`child_main` as its
target; the child loads an Engine once and runs every job it is sent with
:func:`~nst_core.pool.job_runner.run_job`.

Nothing is imported here that loads TensorFlow: the bot process imports this module to name
the process target.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

from ..errors import NSTError
from .base import Event
from .job_runner import load_engine, run_job

__all__ = ["child_main"]


def child_main(conn: Any, cancel_seq: Any, name: str, env: dict[str, str], config: dict[str, Any]) -> None:
    """The entry point of a local worker process (``name``: its slot, e.g. "gpu0").

    Protocol (plain tuples over ``conn``): the worker sends ``("ready", pid)`` once warm or
    ``("init_failed", reason)``; then it receives ``("job", seq, spec, attempt)`` and answers
    with ``("event", seq, event)`` messages ending in a terminal event; ``("stop",)`` or a
    closed pipe ends it. ``cancel_seq`` (shared memory) holding ``seq`` cancels that job.
    """
    # Ctrl-C goes to the whole process group; the parent decides what happens to jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)  # normally already set by the parent; must precede TensorFlow
    parent = os.getppid()
    code = 0
    try:
        try:
            engine = load_engine(config.get("warm_params"), intra_threads=config.get("intra_threads"),
                                 worker_init=config.get("worker_init"))
        except BaseException as exc:  # noqa: BLE001 - report anything, then exit
            if not isinstance(exc, NSTError):  # an NSTError's message already says it all
                traceback.print_exc(file=sys.stderr)
            reason = str(exc) if isinstance(exc, NSTError) else f"{type(exc).__name__}: {exc}"
            conn.send(("init_failed", reason))
            code = 1
            return
        conn.send(("ready", os.getpid()))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the pool is gone
            if message[0] != "job":
                break  # "stop"
            _, seq, spec, attempt = message

            def emit(event: Event, seq: int = seq) -> None:
                conn.send(("event", seq, event))

            def should_stop(seq: int = seq) -> bool:
                # A dead parent also stops the job, so no worker outlives the pool.
                return cancel_seq.value == seq or os.getppid() != parent

            run_job(engine, spec, emit=emit, should_stop=should_stop, worker=name, attempt=attempt,
                    progress_interval_s=config.get("progress_interval_s", 0.5),
                    oom_retries=config.get("oom_retries", 3))
    except (BrokenPipeError, EOFError, ConnectionError):
        code = 0  # the pool went away mid-message: nothing left to tell anyone
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown: TensorFlow's can take seconds, and nothing needs it.
        os._exit(code)
