"""GPU check (about 2-3 minutes on one GPU): step times, peak memory, balanced wall time.

    python benchmarks/gpu_check.py

Prints our step time at 512 and 1024 px in float32 and mixed precision (float16 on a
GPU), the peak GPU memory of each, and the wall time of the `balanced` preset at 512 px.
Uses random VGG19 weights: the time does not depend on the weights' values, and a GPU
host in a lab often has no internet for the ImageNet download.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from nst_core import StylizeParams
from nst_core.engine import Engine

STEPS = 20


def synthetic(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    return np.kron(small, np.ones((16, 16, 1), np.uint8))  # blocky, image-like statistics


def peak_memory_mib() -> float:
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def main() -> None:
    gpus = tf.config.list_physical_devices("GPU")
    print(f"TensorFlow {tf.__version__}; GPUs: {[g.name for g in gpus] or 'none (this will be slow)'}")
    for precision in ("float32", "mixed"):
        engine = Engine()
        for size in (512, 1024):
            content, style = synthetic(size, 1), synthetic(size, 2)
            params = StylizeParams(size=size, weights="random", precision=precision, iterations=STEPS, scales=1)
            if gpus:
                tf.config.experimental.reset_memory_stats("GPU:0")
            stamps: list[float] = []
            engine.stylize(content, style, params, on_progress=lambda e: stamps.append(time.perf_counter()))
            per_step = (stamps[-1] - stamps[1]) / (len(stamps) - 2)  # skip the tracing step and one warm-up
            memory = f"{peak_memory_mib():8.0f} MiB peak" if gpus else ""
            print(f"{precision:>8} {size:>5} px: {per_step * 1000:8.1f} ms/step {memory}", flush=True)
    engine = Engine()
    content, style = synthetic(512, 3), synthetic(512, 4)
    engine.warm_up(StylizeParams(weights="random"))
    started = time.perf_counter()
    result = engine.stylize(content, style, StylizeParams(preset="balanced", weights="random"))
    print(f"balanced preset at 512 px (auto precision, warm engine): {time.perf_counter() - started:.1f} s "
          f"for {result.summary.iterations} steps over {result.summary.scales}")


if __name__ == "__main__":
    main()
