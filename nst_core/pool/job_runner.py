"""Running jobs where a backend runs them: a warm :class:`~nst_core.engine.Engine` and one job's events.

:func:`load_engine` warms an Engine up and :func:`run_job` runs one job on it, reporting
through an ``emit`` callback, so they know no transport and every backend runs jobs the
same way: the local backend's child processes (:mod:`nst_core.pool.local_child`, over a
pipe) and the Ray actors (:mod:`nst_core.pool.ray_actor`).

TensorFlow is imported only inside functions: the bot process imports this module (through
the local backend's process target) and must never load TensorFlow.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

from ..images import decode_image
from ..pixels import encode_png, from_array
from ..errors import Cancelled, ImageError, NSTError, ParamsError
from ..params import StylizeParams
from ..quiet import import_tensorflow, verbose_from_env
from .base import Event, Failed, Finished, JobSpec, Progress, Retrying, Started
from .protocol import CANCELLED_REASON

if TYPE_CHECKING:
    from ..engine import Engine, ProgressEvent

__all__ = ["run_job", "load_engine", "ProgressThrottle", "OOM_SHRINK", "MIN_OOM_SIZE"]

OOM_SHRINK = 0.75  # each out-of-memory retry runs at this fraction of the previous size
MIN_OOM_SIZE = 16  # no retry below this longer side (the smallest size StylizeParams allows)


class ProgressThrottle:
    """Lets a progress event through at most every ``interval`` seconds.

    Scale-boundary events (they carry a preview) and the last step always pass, as does the
    first step so the user sees the job move at once.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -math.inf

    def allow(self, event: "ProgressEvent") -> bool:
        now = time.monotonic()
        if event.preview is not None or event.step >= event.total or now - self._last >= self.interval:
            self._last = now
            return True
        return False


def load_engine(warm_params: dict[str, Any] | None = None, *, intra_threads: int | None = None,
                worker_init: str | None = None) -> "Engine":
    """Import TensorFlow, build an Engine and warm it up (model loaded, step traced).

    ``worker_init`` (``"module:function"``) is called with the new engine before the warm-up:
    logging setup, instrumentation, tests. It is resolved first, so a typo fails fast.
    """
    hook = None
    if worker_init:
        module, _, name = worker_init.partition(":")
        hook = getattr(importlib.import_module(module), name)
    tf = import_tensorflow(verbose_from_env())  # no start-up chatter in the operator's log unless NST_VERBOSE=1

    if intra_threads:
        # Several CPU workers on one machine would each use every core otherwise.
        tf.config.threading.set_intra_op_parallelism_threads(intra_threads)
    from ..engine import Engine

    engine = Engine()
    if hook is not None:
        hook(engine)
    engine.warm_up(StylizeParams.from_dict(warm_params) if warm_params else None)
    return engine


def run_job(
    engine: "Engine",
    spec: JobSpec,
    *,
    emit: Callable[[Event], None],
    should_stop: Callable[[], bool] = lambda: False,
    worker: str = "",
    attempt: int = 1,
    progress_interval_s: float = 0.5,
    oom_retries: int = 3,
) -> None:
    """Run one job and emit its events: Started, Progress..., then Finished or Failed.

    Never raises for a job's own problems: bad input, cancellation, out of memory and
    internal errors all become a ``Failed`` event. Out of GPU memory retries at
    ``OOM_SHRINK`` times the size (up to ``oom_retries`` times) and notes it in the summary.
    """
    started = time.perf_counter()
    job_id = spec.job_id

    def fail(kind: str, reason: str) -> None:
        emit(Failed(job_id, reason, kind))

    emit(Started(job_id, worker, os.getpid(), attempt))
    try:
        params = StylizeParams.from_dict(spec.params)
    except (ParamsError, TypeError, ValueError) as exc:
        return fail("invalid_input", str(exc) if isinstance(exc, NSTError) else f"Invalid parameters: {exc}.")
    try:
        content = decode_image(spec.content, max_pixels=spec.max_pixels)
    except ImageError as exc:
        return fail("invalid_input", f"Content image: {exc}")
    styles = []
    for i, data in enumerate(spec.style):
        try:
            styles.append(decode_image(data, max_pixels=spec.max_pixels))
        except ImageError as exc:
            label = "Style image" if len(spec.style) == 1 else f"Style image {i + 1}"
            return fail("invalid_input", f"{label}: {exc}")
    if should_stop():
        return fail("cancelled", CANCELLED_REASON)

    import tensorflow as tf

    notes: list[str] = []
    hits_before = engine.style_cache_hits
    for retry in range(oom_retries + 1):
        throttle = ProgressThrottle(progress_interval_s)

        def on_progress(event: "ProgressEvent") -> None:
            if throttle.allow(event):
                preview = None if event.preview is None else encode_png(from_array(event.preview))
                emit(Progress(job_id, event.step, event.total, event.scale, event.scales, tuple(event.size),
                              dict(event.losses), preview))

        try:
            result = engine.stylize(content, styles, params, on_progress=on_progress, should_stop=should_stop)
            break
        except tf.errors.ResourceExhaustedError:
            size = params.target_size
            smaller = max(MIN_OOM_SIZE, round(size * OOM_SHRINK))
            gc.collect()  # drop the failed attempt's tensors before trying again
            if retry == oom_retries or smaller >= size:
                return fail("out_of_memory", f"The GPU ran out of memory, even at {size} px. "
                                             "Try a smaller size or a faster preset.")
            notes.append(f"The GPU ran out of memory at {size} px, so the image was made at {smaller} px.")
            emit(Retrying(job_id, "out_of_memory",
                          f"The GPU ran out of memory at {size} px; trying again at {smaller} px."))
            params = params.replace(size=smaller)
            emit(Started(job_id, worker, os.getpid(), attempt))
        except Cancelled:
            return fail("cancelled", CANCELLED_REASON)
        except (BrokenPipeError, ConnectionError, EOFError):
            raise  # the pool is gone (emit failed): nobody to report to
        except NSTError as exc:  # WeightsError, ParamsError from the engine: already readable
            kind = "invalid_input" if isinstance(exc, ParamsError) else "error"
            return fail(kind, str(exc))
        except Exception as exc:  # a bug: keep the worker, tell the user little, log the rest
            traceback.print_exc(file=sys.stderr)
            return fail("error", f"The stylisation failed because of an internal error ({type(exc).__name__}).")

    result.summary.notes.extend(notes)
    summary = result.summary.to_dict()
    emit(Finished(
        job_id, encode_png(result.image), summary, tuple(summary["notes"]), worker,
        time.perf_counter() - started, engine.style_cache_hits - hits_before,
    ))
