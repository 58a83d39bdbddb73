"""GPU check (a few minutes on one GPU): our step against the bare network, memory, balanced wall time.

    python benchmarks/gpu_check.py [--sizes 512 1024]
    python benchmarks/gpu_check.py --cpu --sizes 64   # only checks that the script runs

For float32 and mixed precision (float16 on a GPU) at each size it prints our step time, the
bare VGG19 forward + backward to the deepest layer we use, their ratio (bare_network.py:
alternating rounds, medians; the same figure step_time.py prints on a CPU) and the peak GPU
memory of our step, then the wall time of the `balanced` preset at 512 px on a warm engine.
Random VGG19 weights: the time does not depend on their values, and a GPU host in a lab
often has no internet for the ImageNet download.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from bare_network import engine_against_bare, engine_seconds_per_step
from nst_core import StylizeParams
from nst_core.backbone import resolve_precision
from nst_core.engine import Engine

STEPS, ROUNDS = 10, 3


def synthetic(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    return np.kron(small, np.ones((16, 16, 1), np.uint8))  # blocky, image-like statistics


def peak_memory_mib() -> float:
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--cpu", action="store_true", help="run without a GPU (slow; to check the script)")
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.cpu:
        raise SystemExit("gpu_check: no GPU visible to TensorFlow, so there is nothing to measure here. On a CPU, "
                         "benchmarks/step_time.py prints the same engine/bare ratio; --cpu runs this script anyway.")
    steps, rounds = (STEPS, ROUNDS) if gpus else (1, 1)
    print(f"TensorFlow {tf.__version__}; GPUs: {[g.name for g in gpus] or 'none (--cpu: one short round)'}")
    for precision in ("float32", "mixed"):
        engine = Engine()
        for size in args.sizes:
            content, style = synthetic(size, 1), synthetic(size, 2)
            params = StylizeParams(size=size, weights="random", precision=precision)
            m = engine_against_bare(engine, content, style, params, steps=steps, rounds=rounds)
            memory = ""
            if gpus:
                tf.config.experimental.reset_memory_stats("GPU:0")
                engine_seconds_per_step(engine, content, style, params, 2)
                memory = f", {peak_memory_mib():.0f} MiB peak"
            print(f"{resolve_precision(precision):>14} {size:>5} px: ours {m['engine'] * 1000:.1f} ms/step, bare network "
                  f"{m['bare'] * 1000:.1f} ms, ratio {m['ratio']:.2f}x{memory}", flush=True)  # CPU time says little on a GPU
    if not gpus:
        return
    engine = Engine()
    content, style = synthetic(512, 3), synthetic(512, 4)
    engine.warm_up(StylizeParams(weights="random"))
    started = time.perf_counter()
    result = engine.stylize(content, style, StylizeParams(preset="balanced", weights="random"))
    print(f"balanced preset at 512 px (auto precision, warm engine): {time.perf_counter() - started:.1f} s "
          f"for {result.summary.iterations} steps over {result.summary.scales}")


if __name__ == "__main__":
    main()
