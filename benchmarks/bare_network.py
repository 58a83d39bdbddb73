"""Our step against the bare network: the figure that says how much the engine adds.

The bare pass is VGG's forward to the deepest layer the engine uses and the backward to the
input pixels, nothing else (one compiled function, the same precision policy and weights).
Both sides are timed in alternating rounds in one process and the medians compared, so the
ratio does not depend on the machine's speed, and contention from other work hits both.
Each side is timed twice: wall time, and the process's CPU time (all threads), which other
tenants on a shared machine disturb far less.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import tensorflow as tf

from nst_core import StylizeParams
from nst_core.backbone import build_feature_model, resolve_precision


def deepest_layer(params: StylizeParams) -> str:
    # VGG's names (block<b>_conv<c>, one digit each) sort in the network's order.
    return max(params.content_layers + params.style_layers)


def bare_pass(params: StylizeParams) -> Callable[[tf.Tensor], tf.Tensor]:
    """A compiled forward + backward of the bare network to ``params``' deepest layer."""
    policy = resolve_precision(params.precision)
    model = build_feature_model(params.backbone, params.weights, [deepest_layer(params)], policy).model

    @tf.function(input_signature=[tf.TensorSpec((1, None, None, 3), tf.float32)])
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(tf.cast(model(x, training=False), tf.float32))
        return tape.gradient(out, x)

    return forward_backward


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def engine_seconds_per_step(engine, content, style, params: StylizeParams, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per step of ``engine`` at one scale, from its progress events.

    The first event is only a start mark: it follows the targets' computation.
    """
    stamps: list[tuple[int, tuple[float, float]]] = []
    engine.stylize(content, style, params.replace(iterations=steps + 1, scales=1),
                   on_progress=lambda e: stamps.append((e.step, _now())))
    (first_step, first), (last_step, last) = stamps[0], stamps[-1]
    return tuple((b - a) / (last_step - first_step) for a, b in zip(first, last))


def bare_seconds_per_pass(forward_backward, pixels: tf.Tensor, passes: int) -> tuple[float, float]:
    """Wall and CPU seconds per forward + backward pass."""
    started = _now()
    for _ in range(passes):
        grad = forward_backward(pixels)
    grad.numpy()  # waits for the last pass
    return tuple((b - a) / passes for a, b in zip(started, _now()))


def engine_against_bare(engine, content, style, params: StylizeParams, *, steps: int, rounds: int) -> dict:
    """Median wall seconds of our step and of the bare pass, and the medians of the rounds' ratios
    (``ratio`` in wall time, ``cpu_ratio`` in CPU time)."""
    forward_backward = bare_pass(params)
    pixels = tf.constant(content[None].astype("float32"))
    engine_seconds_per_step(engine, content, style, params, 1)  # traces, loads, caches the style
    bare_seconds_per_pass(forward_backward, pixels, 1)
    ours, bare = [], []
    for _ in range(rounds):
        ours.append(engine_seconds_per_step(engine, content, style, params, steps))
        bare.append(bare_seconds_per_pass(forward_backward, pixels, steps))
    return {"engine": statistics.median(o[0] for o in ours), "bare": statistics.median(b[0] for b in bare),
            "ratio": statistics.median(o[0] / b[0] for o, b in zip(ours, bare)),
            "cpu_ratio": statistics.median(o[1] / b[1] for o, b in zip(ours, bare))}
