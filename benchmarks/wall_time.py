"""A preset end to end on warm workers: this checkout against another one, in alternating runs.

    python benchmarks/wall_time.py --against ../other-checkout [--preset balanced] [--rounds 2]
                                   [--precision auto] [--weights random|imagenet|PATH]

Starts one warm worker process per checkout (each imports that checkout's ``nst_core``),
then runs the preset on the shared content picture in both, alternately, with a different
style picture each round (so no style target comes from the cache), and prints each run's
wall time and its worker's CPU time (steadier on a shared machine), the medians and their
ratios. Both workers share the machine, so contention from other work hits both alike. Random weights by default: the time does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import CONTENT, styles


def worker(preset: str, precision: str, weights: str) -> None:
    """Child side: warm an engine up, then run one job per style path read from stdin."""
    import time

    from common import load
    from nst_core import StylizeParams
    from nst_core.engine import Engine

    params = StylizeParams(preset=preset, precision=precision, weights=weights)
    engine = Engine()
    engine.warm_up(params)
    content = load(CONTENT)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        style = load(Path(line.strip()))
        started, cpu = time.perf_counter(), time.process_time()
        result = engine.stylize(content, style, params)
        print(json.dumps({"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu,
                          "steps": result.summary.iterations}), flush=True)


class Worker:
    def __init__(self, checkout: Path, args: argparse.Namespace) -> None:
        env = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, __file__, "--worker", "--preset", args.preset, "--precision", args.precision,
                   "--weights", args.weights]
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.reply()  # warm

    def reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("a worker died; its error is above")
        return json.loads(line)

    def run(self, style: Path) -> dict:
        self.process.stdin.write(f"{style}\n")
        self.process.stdin.flush()
        return self.reply()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="the other checkout (its root folder)")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.preset, args.precision, args.weights)
    if args.against is None:
        parser.error("--against is required")
    here = Path(__file__).resolve().parents[1]
    sides = {"other": Worker(args.against.resolve(), args), "this": Worker(here, args)}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    pictures = styles()
    for index in range(args.rounds):
        style = pictures[index % len(pictures)]
        order = list(sides) if index % 2 == 0 else list(sides)[::-1]
        for name in order:
            run = sides[name].run(style)
            seconds[name].append(run["seconds"])
            cpu[name].append(run["cpu"])
            print(f"round {index + 1} {name:>5}: {run['seconds']:7.1f} s, CPU {run['cpu']:7.1f} s, {run['steps']} steps "
                  f"({style.name})", flush=True)
    for worker_ in sides.values():
        worker_.close()
    for label, figures in (("wall", seconds), ("CPU", cpu)):
        other, this = statistics.median(figures["other"]), statistics.median(figures["this"])
        print(f"{args.preset} ({args.precision} precision), {label} time: {args.against} {other:.1f} s, this checkout "
              f"{this:.1f} s, speed-up {other / this:.2f}x (medians of {args.rounds})")


if __name__ == "__main__":
    main()
