"""Ray backend figures: per-job overhead against the local backend, and jobs per minute with 1 and 2 actors.

Uses the same tiny job as ``pool_bench.py`` (48 px, two scales, 8 steps, random VGG19
weights) so the pools' own costs are visible next to the work. Needs the Ray extra
(``pip install -e ".[ray]"``); Ray runs on this machine (one local instance, no dashboard,
a small object store), so the figures show the Ray machinery's cost, not a network's.

    python benchmarks/ray_bench.py [--repeats 15] [--jobs 16] [--threads 1]

* overhead: a one-worker ``LocalPool`` and a one-actor ``RayPool``, both warm and both
  running TensorFlow with ``--threads`` threads, take turns running the same job. For each
  run: the time from submit to ``Finished`` minus that run's own stylize time
  (``summary["seconds"]``), i.e. what the pool adds (pickling, pipes or Ray's object
  store and gRPC, the event loop). Medians; the runs alternate, so drift hits both alike.
* throughput: ``--jobs`` jobs submitted at once to a ``RayPool`` with 1, then 2 actors (one
  CPU each); jobs per minute from the first submit to the last ``Finished``.

TensorFlow is imported inside functions only (the local pool's spawned worker re-imports
this file as ``__mp_main__``).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pool_bench import TINY, _inputs, run_job, timed_batch  # noqa: E402  (the same tiny job, pictures, timing)

MB = 1024 * 1024


async def _start(pool) -> tuple[object, float]:
    t = time.perf_counter()
    await pool.start()
    return pool, time.perf_counter() - t


async def _overhead(repeats: int, threads: int, params: dict, content: bytes, style: bytes) -> None:
    from nst_core.pool import JobSpec, LocalPool, RayPool

    local, cold_local = await _start(LocalPool(devices="cpu", cpu_workers=1, cpu_threads=threads, warm_params=params))
    remote, cold_ray = await _start(RayPool(devices="cpu", cpu_actors=1, cpus_per_actor=threads, warm_params=params))
    print(f"cold start, 1 worker:        local {cold_local:6.2f} s, Ray actor {cold_ray:6.2f} s "
          f"(Ray already running)")
    rounds: dict[str, list[float]] = {"local": [], "ray": []}
    added: dict[str, list[float]] = {"local": [], "ray": []}
    try:
        for i in range(repeats + 2):
            for name, pool in (("local", local), ("ray", remote)):
                seconds, finished = await run_job(pool, JobSpec(content=content, style=style, params=params))
                if i >= 2:  # first runs: caches and allocators settle
                    rounds[name].append(seconds)
                    added[name].append(seconds - finished.summary["seconds"])
    finally:
        await local.shutdown()
        await remote.shutdown()
    for name in ("local", "ray"):
        r, a = statistics.median(rounds[name]), statistics.median(added[name])
        print(f"{name + ' pool':>10}: submit until Finished {r * 1000:6.1f} ms median; overhead "
              f"{a * 1000:6.1f} ms median, {max(added[name]) * 1000:6.1f} ms worst (of {repeats})")
    extra = statistics.median(added["ray"]) - statistics.median(added["local"])
    print(f"Ray backend adds {extra * 1000:.1f} ms per job over the local backend (difference of median overheads)")


async def _throughput(actors: int, jobs: int, params: dict, content: bytes, style: bytes) -> None:
    from nst_core.pool import RayPool

    pool, cold = await _start(RayPool(devices="cpu", cpu_actors=actors, cpus_per_actor=1, warm_params=params))
    try:
        elapsed = await timed_batch(pool, actors, jobs, params, content, style)
    finally:
        await pool.shutdown()
    label = f"{actors} actor" + ("s" if actors > 1 else "")
    print(f"throughput, Ray, {label}:".ljust(28) + f"{jobs / elapsed * 60:6.1f} jobs/min "
          f"({jobs} jobs in {elapsed:.1f} s; cold start {cold:.1f} s)")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="jobs timed per backend for the overhead figure")
    parser.add_argument("--jobs", type=int, default=16, help="jobs per throughput run")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads per worker in the overhead runs")
    args = parser.parse_args(argv)
    import ray

    from nst_core import StylizeParams

    params = StylizeParams(**TINY).to_dict()
    content, style = _inputs()
    print(f"tiny job: {TINY['size']} px, {TINY['scales']} scales, {TINY['iterations']} steps, random VGG19; "
          f"{os.cpu_count()} CPU cores, ray {ray.__version__}, load average before: {os.getloadavg()[0]:.2f}")
    t = time.perf_counter()
    cpus = max(2, args.threads)
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=200 * MB, log_to_driver=False)
    print(f"local Ray instance started in {time.perf_counter() - t:.1f} s ({cpus} CPUs); the pools share it")
    try:
        await _overhead(args.repeats, args.threads, params, content, style)
        for actors in (1, 2):
            await _throughput(actors, args.jobs, params, content, style)
    finally:
        ray.shutdown()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other tenants count too)")


if __name__ == "__main__":
    asyncio.run(main())
