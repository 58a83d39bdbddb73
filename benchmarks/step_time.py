"""Step time: our compiled step against the original eager loop, same process, same weights.

    python benchmarks/step_time.py [--sizes 256 512] [--steps 6] [--weights random|imagenet|PATH]

Both use VGG19 with the same weights (random by default: the time does not depend on
them). Prints seconds per step and the ratio; the target is at least 2.5x.
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf

from common import CONTENT, rgb_at, styles, time_engine_steps
from nst_core import StylizeParams
from nst_core.backbone import resolve_precision
from nst_core.engine import Engine
from original_gatys import OriginalObjective, full_model, preprocess


def original_step_time(model, content, style, steps: int) -> float:
    objective = OriginalObjective(model, content, style)
    image = tf.Variable(preprocess(content))
    import keras

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed"])
    args = parser.parse_args()
    weights = None if args.weights == "random" else args.weights
    model = full_model("vgg19", weights)
    engine = Engine()
    style_path = styles()[0]
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}; VGG19 {args.weights} weights")
    for size in args.sizes:
        content, style = rgb_at(CONTENT, size), rgb_at(style_path, size)
        base = original_step_time(model, content, style, args.steps)
        print(f"{size} px  original eager loop: {base:.3f} s/step")
        for precision in args.precisions:
            params = StylizeParams(size=size, weights=args.weights, precision=precision)
            ours = time_engine_steps(engine, content, style, params, args.steps)
            policy = resolve_precision(precision)
            print(f"{size} px  ours ({policy:>14}): {ours:.3f} s/step   speed-up {base / ours:.2f}x")


if __name__ == "__main__":
    main()
