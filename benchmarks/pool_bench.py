"""Worker-pool figures: cold start, warm per-job overhead, and throughput with 1 and 2 workers.

Uses a tiny job (48 px, two scales, 8 steps, random VGG19 weights, the same parameters as
the tests' ``tiny_params``) so the pool's own costs are visible next to the work.

    python benchmarks/pool_bench.py [--repeats 15] [--jobs 16] [--oversubscribe]

* cold start: ``LocalPool.start()`` until every worker is warm (spawn, TensorFlow import,
  model build, step trace).
* warm overhead: for the same job submitted to a warm one-worker pool, the time from submit
  to ``Finished`` minus that run's own stylize time (``summary["seconds"]``), i.e. what the
  pool adds (decoding, PNG encoding, previews, pipes, the event loop). Target: under 100 ms.
  Also printed: a direct ``Engine.stylize`` call in this process on decoded images, and the
  difference of medians (runs alternate, so drift hits both alike, but other load on the
  machine makes it noisy).
* throughput: ``--jobs`` jobs submitted at once; jobs per minute, first submit to last finish.

TensorFlow is imported inside functions only: spawned workers re-import this file as
``__mp_main__`` and must not pay for it twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TINY = dict(
    weights="random", size=48, scales=2, min_scale_size=32, iterations=8, precision="float32",
    style_weight=1e3, tv_weight=1.0, learning_rate=6.0,
)


def _inputs() -> tuple[bytes, bytes]:
    from PIL import Image

    from conftest import make_content, make_style
    from nst_core.pixels import encode_png

    return encode_png(Image.fromarray(make_content())), encode_png(Image.fromarray(make_style()))


async def _cold_start(workers: int, params: dict, threads: int | None = None) -> tuple[object, float]:
    from nst_core.pool import LocalPool

    pool = LocalPool(devices="cpu", cpu_workers=workers, cpu_threads=threads, warm_params=params)
    t = time.perf_counter()
    await pool.start()
    return pool, time.perf_counter() - t


async def run_job(pool, spec) -> tuple[float, object]:
    """Seconds from submit to ``Finished``, and that event (shared with ray_bench.py)."""
    t = time.perf_counter()
    terminal = await pool.submit(spec).wait()
    if terminal.__class__.__name__ != "Finished":
        raise RuntimeError(f"job failed: {terminal}")
    return time.perf_counter() - t, terminal


async def _overhead(repeats: int, params: dict, content: bytes, style: bytes) -> None:
    from nst_core import StylizeParams, images
    from nst_core.engine import Engine
    from nst_core.pool import JobSpec

    pool, cold = await _cold_start(1, params)
    print(f"cold start, 1 worker:       {cold:6.2f} s")
    try:
        engine = Engine()
        p = StylizeParams.from_dict(params)
        engine.warm_up(p)
        content_img, style_img = images.decode_image(content), images.decode_image(style)
        direct, pooled, paired = [], [], []
        for i in range(repeats + 2):
            t = time.perf_counter()
            engine.stylize(content_img, style_img, p)
            d = time.perf_counter() - t
            seconds, finished = await run_job(pool, JobSpec(content=content, style=style, params=params))
            if i >= 2:  # first runs: caches and allocators settle
                direct.append(d)
                pooled.append(seconds)
                # The same run's own stylize time: what the pool adds, free of run-to-run noise.
                paired.append(seconds - finished.summary["seconds"])
    finally:
        await pool.shutdown()
    d, q, o = statistics.median(direct), statistics.median(pooled), statistics.median(paired)
    print(f"direct Engine.stylize:      {d * 1000:6.1f} ms (median of {repeats})")
    print(f"same job through the pool:  {q * 1000:6.1f} ms (submit until Finished)")
    print(f"warm job overhead:          {o * 1000:6.1f} ms median, {max(paired) * 1000:.1f} ms worst "
          f"(target < 100 ms: round trip minus that job's own stylize time: decode, PNG encode, "
          f"previews, pipes, event loop)")
    print(f"  difference of medians:    {(q - d) * 1000:6.1f} ms (pool vs direct; noisy on a shared machine)")


async def _throughput(workers: int, jobs: int, params: dict, content: bytes, style: bytes,
                      threads: int | None = None) -> None:
    from nst_core.pool import JobSpec

    pool, cold = await _cold_start(workers, params, threads)
    label = f"{workers} worker" + ("s" if workers > 1 else "") + (f" x {threads} threads" if threads else "")
    if workers > 1 and not threads:
        print(f"cold start, {workers} workers:      {cold:6.2f} s")
    try:
        await run_job(pool, JobSpec(content=content, style=style, params=params))  # settle each worker once
        elapsed = await timed_batch(pool, workers, jobs, params, content, style)
    finally:
        await pool.shutdown()
    print(f"throughput, {label}:".ljust(28) + f"{jobs / elapsed * 60:6.1f} jobs/min "
          f"({jobs} jobs in {elapsed:.1f} s)")


async def timed_batch(pool, workers: int, jobs: int, params: dict, content: bytes, style: bytes) -> float:
    """Seconds for ``jobs`` jobs submitted at once, after one job per worker (shared with ray_bench.py)."""
    from nst_core.pool import JobSpec

    await asyncio.gather(*(run_job(pool, JobSpec(content=content, style=style, params=params))
                           for _ in range(workers)))
    t = time.perf_counter()
    handles = [pool.submit(JobSpec(content=content, style=style, params={**params, "seed": i})) for i in range(jobs)]
    results = await asyncio.gather(*(h.wait() for h in handles))
    elapsed = time.perf_counter() - t
    if not all(r.__class__.__name__ == "Finished" for r in results):
        raise RuntimeError(f"jobs failed: {[r for r in results if r.__class__.__name__ != 'Finished'][:1]}")
    return elapsed


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="jobs timed for the overhead figure")
    parser.add_argument("--jobs", type=int, default=16, help="jobs per throughput run")
    parser.add_argument("--oversubscribe", action="store_true",
                        help="also run 2 workers that each use every core")
    args = parser.parse_args(argv)
    from nst_core import StylizeParams

    params = StylizeParams(**TINY).to_dict()
    content, style = _inputs()
    print(f"tiny job: {TINY['size']} px, {TINY['scales']} scales, {TINY['iterations']} steps, random VGG19; "
          f"{os.cpu_count()} CPU cores, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    await _overhead(args.repeats, params, content, style)
    for workers in (1, 2):
        await _throughput(workers, args.jobs, params, content, style)
    if args.oversubscribe:  # each worker using every core instead of cores / workers
        await _throughput(2, args.jobs, params, content, style, threads=os.cpu_count())
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other tenants count too)")


if __name__ == "__main__":
    asyncio.run(main())
