"""Many servers on one sharded bot process, through the fake Discord (a script, not a test).

    python benchmarks/bot_load.py --servers 1000 --shards 4 [--members 3] [--commands 3000]
                                  [--seconds 60] [--calls-per-second 40] [--workers 1]

(``bot_load.py`` runs this scenario when ``--shards`` is given.) The fake Discord holds
``--servers`` servers, each with a "general" channel and ``--members`` members, spread over
``--shards`` shards, and enforces Discord's rate limits (50 requests a second per bot token,
interaction endpoints exempt, and the per-route buckets Discord answers with). It starts
``python -m bot`` against it (one CPU worker, random weights, the tiny ``fast`` preset: 32 px,
6 steps), after a first bot in a fake with one server, for the memory baseline.

``--commands`` /stylize arrive at uniformly random moments within ``--seconds``, each from a
different member of a random server. It waits until every accepted job has its result or its
failure notice, then prints:

* start-up: the time from the bot's start to every shard ready, and the IDENTIFYs by shard;
* deferral latency p50 / p99 (command dispatched → the bot's "thinking" callback);
* accepted, refused by reason, lost (accepted, and neither a result nor a notice: must be 0);
* the bot process's memory: resident after start-up with one server and with all of them,
  the difference per server, and the peak (VmHWM) under load; its CPU time per command;
* Discord calls a second, peak (any 1 s) and mean over the run: those counted toward the
  global limit (bot token, not interaction endpoints) and all of them; 429s received;
  the bot's own count of calls by kind (``stylebot_discord_calls_total``).

Targets: deferral p99 under 1 s, 0 lost, 0 429s, at most 40 global calls in any second.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bot_fixtures import CONTENT_PNG, STYLE_PNG, free_port
from bot_load import classify, cpu_kind, launch, load_average, peak_rss_mib, percentile, refusal_counts
from fake_discord import FakeDiscord
from fake_discord.ratelimits import RateLimits

_MARKER = re.compile(r"stylebot (?:result|notice) ([0-9a-f]+)")


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def ended_jobs(fake: FakeDiscord) -> set[str]:
    """Jobs whose result or failure notice reached Discord (the marker in the embed's footer)."""
    jobs = set()
    for message in list(fake.messages.values()):
        if message.deleted:
            continue
        for embed in message.embeds or ():
            found = _MARKER.match(((embed or {}).get("footer") or {}).get("text") or "")
            if found:
                jobs.add(found.group(1))
    return jobs


async def bot_calls(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    return {kind: float(n) for kind, n in re.findall(r'stylebot_discord_calls_total\{kind="(\w+)"\} ([\d.e+]+)', text)}


def settings(args: argparse.Namespace, port: int) -> dict[str, Any]:
    return {"discord": {"calls_per_second": args.calls_per_second}, "health": {"port": port}}


async def baseline_rss(args: argparse.Namespace, directory: Path) -> float:
    """The bot's resident memory once connected to a fake with one server."""
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    bot = None
    try:
        bot = await launch(fake, directory, [fake.guild], args, **settings(args, free_port()))
        await asyncio.sleep(2.0)
        return rss_mib(bot.proc.pid)
    finally:
        if bot is not None and bot.proc.poll() is None:
            await bot.stop(timeout=60)
        await fake.stop()


async def send(fake: FakeDiscord, member: Any, guild: Any, channel: Any, at: float, t0: float) -> Any:
    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
    key = f"{member.id}/{time.monotonic_ns()}"
    options = {"content": fake.add_attachment(f"{key}/content.png", CONTENT_PNG, "image/png"),
               "style": fake.add_attachment(f"{key}/style.png", STYLE_PNG, "image/png"), "preset": "fast"}
    return await fake.send_slash_command("stylize", user=member, guild=guild, channel=channel, options=options)


def outcome_of(inter: Any) -> tuple[str, str | None]:
    return classify("\n".join(inter.texts()))


async def scale(args: argparse.Namespace) -> int:
    servers = int(args.servers)
    print(f"CPU:                      {cpu_kind()}")
    print(f"load average at start:    {load_average()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bot_scale_"))
    args.queue_max = max(args.queue_max, args.commands + 10)
    args.per_guild = max(args.per_guild, args.members)
    args.per_user = max(args.per_user, 1)
    one = await baseline_rss(args, tmp / "one")
    print(f"bot memory, one server:   {one:.0f} MiB resident after start-up", flush=True)

    fake = FakeDiscord(token_ttl=900, shards=args.shards, max_concurrency=args.max_concurrency,
                       rate_limits=RateLimits())
    await fake.start()
    made = time.monotonic()
    guilds = fake.add_guilds(servers, members=args.members)
    made_s = time.monotonic() - made
    port = free_port()
    bot = None
    try:
        started = time.monotonic()
        bot = await launch(fake, tmp / "many", [fake.guild], args, **settings(args, port))
        ready_s = time.monotonic() - started
        await asyncio.sleep(2.0)
        many = rss_mib(bot.proc.pid)
        identifies = sorted((i.t - started, i.shard_id) for i in fake.shard_identifies if i.accepted)
        print(f"servers:                  {servers} (+ the fake's own), {args.members} members each, "
              f"{args.shards} shards, max_concurrency {args.max_concurrency} (made in {made_s:.2f} s)")
        print(f"start-up:                 every shard ready and the workers warm {ready_s:.1f} s "
              f"after the start; IDENTIFYs at " + ", ".join(f"{t:.1f} s (shard {s})" for t, s in identifies))
        per_server = (many - one) / servers
        print(f"bot memory, all servers:  {many:.0f} MiB resident ({per_server * 1024:.1f} KiB per server "
              f"over the one-server bot)", flush=True)

        rng = random.Random(args.seed)
        everyone = [(m.user, g, next(c for c in g.channels.values() if c.name == "general"))
                    for g in guilds for m in g.members.values()
                    if not m.user.bot and m.user.id != g.owner_id]
        plan = rng.sample(everyone, min(args.commands, len(everyone)))
        cpu_before = psutil.Process(bot.proc.pid).cpu_times()
        t0 = time.monotonic()
        inters = await asyncio.gather(*(send(fake, m, g, c, rng.uniform(0, args.seconds), t0) for m, g, c in plan))
        sent_s = time.monotonic() - t0
        print(f"commands sent:            {len(inters)} within {sent_s:.1f} s", flush=True)
        deadline = time.monotonic() + args.drain_timeout
        settled: dict[int, tuple[str, str | None]] = {}  # answered commands (an answer does not change)
        while time.monotonic() < deadline:
            for inter in inters:
                if inter.id not in settled and (outcome := outcome_of(inter))[0] != "no answer":
                    settled[inter.id] = outcome
            jobs = {job for _, job in settled.values() if job}
            # a command never acknowledged (it missed its 3 s) gets no answer: not waited for
            unanswered = [i for i in inters if i.id not in settled and i.acknowledged]
            if not unanswered and jobs <= ended_jobs(fake):
                break
            await asyncio.sleep(2.0)
        drained_s = time.monotonic() - t0
        cpu_after = psutil.Process(bot.proc.pid).cpu_times()
        outcomes = [outcome_of(i) for i in inters]
        jobs = [job for _, job in outcomes if job]
        ended = ended_jobs(fake)
        lost = [j for j in jobs if j not in ended]
        counts = Counter(outcome for outcome, _ in outcomes)
        deferrals = [i.ack_latency for i in inters if i.ack_latency is not None]
        peak = peak_rss_mib(bot.proc.pid)
        cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        everything = fake.calls_per_second(since=t0)
        counted = fake.calls_per_second(since=t0, global_only=True)
        kinds = await bot_calls(port)

        print(f"deferral latency:         p50 {statistics.median(deferrals) * 1000:.0f} ms · "
              f"p99 {percentile(deferrals, 99) * 1000:.0f} ms · max {max(deferrals) * 1000:.0f} ms"
              + (f" · {len(inters) - len(deferrals)} never acknowledged" if len(deferrals) < len(inters) else ""))
        print(f"jobs accepted:            {counts['accepted']}")
        print(f"refused:                  {refusal_counts(counts)}; otherwise {counts['other']}, "
              f"no answer {counts['no answer']}")
        print(f"results and notices:      {len(jobs) - len(lost)} of {len(jobs)} after {drained_s:.0f} s "
              f"({len(jobs) / drained_s:.1f} jobs/s on {args.workers} CPU worker(s))")
        print(f"lost:                     {len(lost)}" + (f" e.g. {lost[:5]}" if lost else ""))
        print(f"bot memory under load:    peak {peak:.0f} MiB (VmHWM)" if peak else "bot memory: unknown")
        print(f"bot CPU:                  {cpu_s:.1f} s for {len(inters)} commands and their jobs "
              f"({cpu_s / max(1, len(inters)) * 1000:.1f} ms per command)")
        print(f"Discord calls, global:    peak {counted.peak} in 1 s, mean {counted.mean:.1f}/s "
              f"({counted.total} over {counted.seconds:.0f} s; the bot allows itself {args.calls_per_second}/s)")
        print(f"Discord calls, all:       peak {everything.peak} in 1 s, mean {everything.mean:.1f}/s "
              f"({everything.total}; interaction answers and callbacks are outside the global limit)")
        print("bot's calls by kind:      " + ", ".join(f"{k} {int(v)}" for k, v in sorted(kinds.items())))
        print(f"429s received:            {len(fake.rate_limited)}"
              + (f" e.g. {[(h.route, h.scope) for h in fake.rate_limited[:3]]}" if fake.rate_limited else ""))
        print(f"load average at end:      {load_average()}")
        ok = (deferrals and percentile(deferrals, 99) < 1.0 and not lost and not fake.rate_limited
              and counted.peak <= 40 and len(deferrals) == len(inters))
        print("targets:                  " + ("met" if ok else "NOT met"))
        return 0 if ok else 1
    finally:
        if bot is not None and bot.proc.poll() is None:
            await bot.stop(timeout=120)
        await fake.stop()


__all__ = ["scale"]
