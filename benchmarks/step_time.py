"""Step time: our step against the bare network's forward + backward, same process, same weights.

    python benchmarks/step_time.py [--sizes 256 512] [--precisions float32 mixed] [--steps 3]
                                   [--rounds 3] [--weights random|imagenet|PATH] [--original]

For each size and precision it times our engine's step and the bare VGG19 forward to the
deepest layer the engine uses plus the backward to the pixels (bare_network.py), in
alternating rounds, and prints the medians and their ratio, in wall time and in CPU time (the
latter steadier on a shared machine): what the engine costs beyond the network, the figure to
drive down on any machine. Targets: at most 1.1x in float32 and 1.3x
in mixed precision. ``--original`` also times the original eager loop (the older 2.5x target).
Random weights by default: the time does not depend on their values.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tensorflow as tf

from bare_network import engine_against_bare
from common import CONTENT, rgb_at, styles
from nst_core import StylizeParams
from nst_core.backbone import resolve_precision
from nst_core.engine import Engine


def original_step_time(model, content, style, steps: int) -> float:
    import keras

    from original_gatys import OriginalObjective, preprocess

    objective = OriginalObjective(model, content, style)
    image = tf.Variable(preprocess(content))
    optimizer = keras.optimizers.Adam(learning_rate=5.0, beta_1=0.99, epsilon=0.1)
    stamps = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss, _ = objective(image)
        optimizer.apply_gradients([(tape.gradient(loss, image), image)])
        image.assign(tf.clip_by_value(image, -128.0, 160.0))
        float(loss)
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def cpu_flags() -> str:
    """The CPU's model and the flags that decide reduced precision's speed."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")))
    return f"{model}; {' '.join(wanted)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed"])
    parser.add_argument("--steps", type=int, default=3, help="steps (and bare passes) per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--original", action="store_true", help="also time the original eager loop")
    args = parser.parse_args()
    engine = Engine()
    style_path = styles()[0]
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({cpu_flags()})"
    print(f"{device}; VGG19 {args.weights} weights; {args.rounds} alternating rounds of {args.steps} steps")
    for size in args.sizes:
        content, style = rgb_at(CONTENT, size), rgb_at(style_path, size)
        if args.original:
            from original_gatys import full_model

            model = full_model("vgg19", None if args.weights == "random" else args.weights)
            print(f"{size} px  original eager loop: {original_step_time(model, content, style, args.steps + 1):.3f} s/step")
        for precision in args.precisions:
            params = StylizeParams(size=size, weights=args.weights, precision=precision)
            m = engine_against_bare(engine, content, style, params, steps=args.steps, rounds=args.rounds)
            print(f"{size} px  {resolve_precision(precision):>14}: ours {m['engine']:.3f} s/step, bare network "
                  f"{m['bare']:.3f} s, ratio {m['ratio']:.2f}x (in CPU time {m['cpu_ratio']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
