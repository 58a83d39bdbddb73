"""What reduced precision does to the picture: the same run in float32, bfloat16 and float16.

    python benchmarks/precision_quality.py [--size 192] [--steps 80]

Runs the numerics on whatever device is here (on a CPU without native bfloat16 or float16
this is slow but the numbers are the same as on hardware that has them) and prints the
quality metrics of each output plus its mean pixel difference to the float32 output.
"""

from __future__ import annotations

import argparse

import numpy as np

import nst_core.engine as engine_module
from common import CONTENT, OUT, SHARED_IMAGES, load
from imagenet_vgg16 import vgg16_weights_path
from nst_core import StylizeParams
from quality_metrics import QualityMeter

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--style", default="Starry_Night.jpg")
    args = parser.parse_args()
    weights = str(vgg16_weights_path())
    content, style = load(CONTENT), load(SHARED_IMAGES / "style" / args.style)
    meter = QualityMeter(weights)
    reference = None
    for policy in POLICIES:
        # Force the policy whatever the device: this measures numerics, not speed.
        engine_module.resolve_precision = lambda _precision, policy=policy: policy
        engine = engine_module.Engine()
        params = StylizeParams(backbone="vgg16", weights=weights, size=args.size, iterations=args.steps, scales=2)
        result = engine.stylize(content, style, params)
        pixels = np.asarray(result.image, np.float32)
        reference = pixels if reference is None else reference
        m = meter.measure(result.image, content, style)
        OUT.mkdir(exist_ok=True)
        result.image.save(OUT / f"precision_{policy}.png")
        print(f"{policy:>15}: style {m['style']:.3f} content {m['content']:.3f} SSIM {m['ssim']:.3f} "
              f"final loss {result.summary.final['total']:.4g}  mean |diff| to float32 {np.abs(pixels - reference).mean():.2f}",
              flush=True)


if __name__ == "__main__":
    main()
