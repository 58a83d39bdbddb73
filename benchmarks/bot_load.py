"""Load on the real bot process through the fake Discord (a script, not a test).

    python benchmarks/bot_load.py [--users 50] [--commands 200] [--seconds 10] [--workers 1]

Starts the fake Discord in this process and ``python -m bot`` against it (random VGG19
weights, tiny presets, the default limits unless told otherwise), waits until the workers are
warm, then has ``--users`` users send ``--commands`` /stylize commands at random moments
within ``--seconds``. It waits for every accepted job to end and prints:

* deferral latency p50 / p99: command dispatched → the bot's "thinking" answer (target: p99
  under 1 s; Discord gives up after 3 s);
* jobs accepted, refused by limits (per-user limit, full line) and refused otherwise;
* lost: accepted jobs whose requester got neither a result nor a failure notice (target 0),
  and duplicated: jobs delivered more than once (target 0);
* the bot process's peak memory (VmHWM), and its workers'.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from bot import render  # noqa: E402
from bot_fixtures import CONTENT_PNG, STYLE_PNG, start_bot, write_config  # noqa: E402
from fake_discord import FakeDiscord  # noqa: E402

PRESETS = {"fast": {"size": 32, "steps": 6, "scales": 1}, "balanced": {"size": 48, "steps": 24, "scales": 1},
           "best": {"size": 48, "steps": 60, "scales": 1}}


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def one_command(fake: FakeDiscord, user: str, at: float, t0: float, results: dict) -> None:
    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
    key = f"{user}/{time.monotonic_ns()}"
    options = {"content": fake.add_attachment(f"{key}/content.png", CONTENT_PNG, "image/png"),
               "style": fake.add_attachment(f"{key}/style.png", STYLE_PNG, "image/png"),
               "preset": "fast"}
    inter = await fake.send_slash_command("stylize", user=user, options=options)
    results["dispatched"].append(time.monotonic() - t0)
    try:
        cb = await inter.wait_for_callback(timeout=10)
        latency = cb.at
    except asyncio.TimeoutError:
        latency = float("inf")
    try:
        reply = await inter.wait_for_reply(timeout=60)
        text = reply.content or ""
    except asyncio.TimeoutError:
        text = ""
    match = re.search(r"Job `([0-9a-f]+)` accepted", text)
    if match:
        outcome = "accepted"
    elif "already have" in text:
        outcome = "user_limit"
    elif "queue is full" in text:
        outcome = "line_full"
    else:
        outcome = "other"
    results["latency"].append(latency)
    results["outcome"][outcome] += 1
    if match:
        results["jobs"].append(match.group(1))
    elif outcome == "other":
        results["other_texts"].append(text[:120])


def delivered(fake: FakeDiscord, job_id: str) -> int:
    return sum(1 for m in fake.messages.values() if not m.deleted and not m.ephemeral
               and (render.is_delivery_of(m.content, job_id, "result")
                    or render.is_delivery_of(m.content, job_id, "notice")))


async def main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bot_load_"))
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    users = [fake.add_user(f"load{i:02d}").username for i in range(args.users)]
    limits = {"queue_max": args.queue_max, "per_user_waiting": args.per_user}
    config = write_config(tmp, presets=PRESETS, limits={**limits, "max_upload_bytes": 8 << 20,
                                                        "max_pixels": 16_000_000},
                          pool={"workers": args.workers, "job_timeout_s": 300},
                          progress={"edit_interval_s": 3.0}, logging={"level": "INFO", "format": "json"})
    bot = start_bot(fake, config, tmp)
    try:
        await fake.wait_ready(timeout=90)
        await fake.wait_for_commands(guild=fake.guild, names=["stylize"], timeout=60)
        await bot.wait_log("workers ready", timeout=180)
        print(f"bot ready (pid {bot.proc.pid}); sending {args.commands} commands from {args.users} users "
              f"within {args.seconds:g} s", flush=True)

        rng = random.Random(args.seed)
        plan = [(users[i % len(users)], rng.uniform(0, args.seconds)) for i in range(args.commands)]
        results: dict = {"latency": [], "outcome": Counter(), "jobs": [], "other_texts": [], "dispatched": []}
        t0 = time.monotonic()
        await asyncio.gather(*(one_command(fake, user, at, t0, results) for user, at in plan))
        sent_s = max(results["dispatched"])

        jobs = results["jobs"]
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and not all(delivered(fake, j) for j in jobs):
            await asyncio.sleep(0.5)
        drained_s = time.monotonic() - t0
        counts = {j: delivered(fake, j) for j in jobs}
        lost = [j for j, n in counts.items() if n == 0]
        duplicated = [j for j, n in counts.items() if n > 1]
        failed = sum(1 for j in jobs if any(render.is_delivery_of(m.content, j, "notice")
                                            for m in fake.messages.values()))
        bot_peak = peak_rss_mib(bot.proc.pid)
        import psutil

        workers = [c.pid for c in psutil.Process(bot.proc.pid).children(recursive=True)]
        worker_peaks = [p for p in (peak_rss_mib(pid) for pid in workers) if p]

        lat = [x for x in results["latency"] if x != float("inf")]
        outcome = results["outcome"]
        print()
        print(f"commands sent:            {len(results['latency'])} within {sent_s:.1f} s "
              f"({args.users} users, {args.workers} CPU worker(s), queue_max {args.queue_max}, "
              f"per-user {args.per_user})")
        print(f"deferral latency:         p50 {statistics.median(lat) * 1000:.0f} ms · "
              f"p99 {percentile(lat, 99) * 1000:.0f} ms · max {max(lat) * 1000:.0f} ms"
              + (f" · {len(results['latency']) - len(lat)} never acknowledged" if len(lat) < len(results["latency"])
                 else ""))
        print(f"jobs accepted:            {outcome['accepted']}")
        print(f"refused by limits:        {outcome['user_limit'] + outcome['line_full']} "
              f"(per-user limit {outcome['user_limit']}, line full {outcome['line_full']})")
        print(f"refused otherwise:        {outcome['other']}" + (f" e.g. {results['other_texts'][:2]}"
                                                                 if outcome["other"] else ""))
        print(f"delivered:                {len(jobs) - len(lost)} of {len(jobs)} "
              f"({failed} as failure notices) after {drained_s:.0f} s")
        print(f"lost:                     {len(lost)}" + (f" {lost[:5]}" if lost else ""))
        print(f"delivered twice or more:  {len(duplicated)}")
        print(f"bot peak memory (VmHWM):  {bot_peak:.0f} MiB" if bot_peak else "bot peak memory: unknown")
        if worker_peaks:
            print(f"worker peak memory:       {', '.join(f'{p:.0f} MiB' for p in worker_peaks)} "
                  "(TensorFlow; includes the resource tracker)")
        ok = not lost and not duplicated and lat and percentile(lat, 99) < 1.0
        return 0 if ok else 1
    finally:
        if bot.proc.poll() is None:
            await bot.stop(timeout=60)
        await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue-max", type=int, default=20)
    parser.add_argument("--per-user", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=5)
    sys.exit(asyncio.run(main(parser.parse_args())))
