"""Load on the real bot process through the fake Discord (a script, not a test).

    python benchmarks/bot_load.py [--servers 40,10] [--commands 200] [--seconds 10] [--workers 1]
                                  [--queue-max 20] [--per-guild 10] [--per-user 2] [--hostile 20]

Starts the fake Discord in this process and ``python -m bot`` against it (random VGG19
weights, tiny presets, ``max_pixels`` 16 M and ``max_upload_bytes`` 8 MiB so that large
pictures reach the decoding checks; upload checking keeps the bot's defaults), waits until
the workers are warm, then runs three phases on the same bot.

1. Load. ``--servers 40,10`` makes server A with 40 members and server B with 10 (one number,
   e.g. ``--servers 50 --per-guild 20``, is the old single-server run: everyone in the fake's
   default server, with no per-server limit below the line's).
   ``--commands`` /stylize commands are sent at uniformly random moments within ``--seconds``,
   each from a member drawn at random among all members, so each server sends in proportion
   to its members (A about 80 %, B about 20 % by default). It waits for every accepted job to
   end and prints:

   * deferral latency p50 / p99: command dispatched → the bot's "thinking" answer (target: p99
     under 1 s; Discord gives up after 3 s);
   * jobs accepted and refused by reason (per-user limit, per-server limit, full line, upload
     checks busy, otherwise), in all and per server;
   * lost: accepted jobs whose requester got neither a result nor a failure notice (target 0),
     and duplicated: jobs delivered more than once (target 0);
   * each server's share of the first results: the first N jobs to start (order of the bot's
     "job started" log lines; N = ``--first``, at most the number of servers times the smaller
     server's accepted jobs) by server, next to what round robin predicts: replaying the log,
     each start goes to the server among those with jobs waiting that was served least
     recently (with two servers: alternating while both have jobs waiting); and the longest
     run of starts from one server while another had jobs waiting (the bot's rounds allow 2:
     one turn per server per round, turns within a round taken by arrival);
   * the bot process's peak memory (VmHWM) so far, and its workers'.

2. Hostile uploads. Once the line is empty, ``--hostile`` (20) new members, alternating
   between the servers, send /stylize at the same moment, each with one of the pictures of
   ``hostile_pictures.py`` (16-bit grey PNG, progressive-JPEG scan bomb, palette PNG with
   transparency, in turn). Prints how each kind was answered (counts by outcome), whether the
   accepted ones were delivered, and the bot's peak memory after this phase (target under
   300 MiB).

3. Time to refuse the scan bomb: ``nst_core.images.image_info`` on it in this process (median
   of ``--bomb-runs`` x 4 runs, target under 0.1 s), and /stylize with it → the bot's ephemeral
   refusal, end to end, while the bot is otherwise idle (median of ``--bomb-runs``).

It also prints the CPU (AVX2 or AVX-512 BF16, from /proc/cpuinfo) and the load average at the
start and end (the machine may be busy with other work), and the errors in the bot's log.
Exit status 0 when no job is lost or duplicated and the load phase's deferral p99 is under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from bot.outbox import is_delivery_of  # noqa: E402
from bot.config import LimitsConfig  # noqa: E402
from bot_fixtures import CONTENT_PNG, STYLE_PNG, start_bot, write_config  # noqa: E402
from fake_discord import FakeDiscord  # noqa: E402
from hostile_pictures import HOSTILE, scan_bomb_jpeg  # noqa: E402
from nst_core.errors import ImageError  # noqa: E402
from nst_core.images import MAX_JPEG_SCANS, image_info  # noqa: E402

PRESETS = {"fast": {"size": 32, "steps": 6, "scales": 1}, "balanced": {"size": 48, "steps": 24, "scales": 1},
           "best": {"size": 48, "steps": 60, "scales": 1}}

# How the bot words each refusal: (outcome, text it contains, label printed)
REFUSALS = (
    ("user_limit", "You already have", "per-user limit"),
    ("server_limit", "This server already has", "per-server limit"),
    ("line_full", "The queue is full", "line full"),
    ("checks_busy", "The bot is checking a lot of pictures", "checks busy"),
    ("checks_busy", "Your previous pictures are still being checked", "checks busy"),
    ("scans", f"more than {MAX_JPEG_SCANS} scans", "too many JPEG scans"),
)
LABELS = {"accepted": "accepted", "other": "refused otherwise", "no answer": "no answer",
          **{outcome: f"refused: {label}" for outcome, _, label in REFUSALS}}


@dataclass
class Member:
    server: str  # "A", "B", ...
    name: str
    channel: Any  # where the member's commands are sent


@dataclass
class Answer:
    server: str
    kind: str  # "load", or the hostile picture's label
    dispatched: float  # seconds since the phase started
    deferral: float  # dispatch → "thinking" (inf: never acknowledged)
    replied: float  # dispatch → first visible answer (inf: none)
    outcome: str
    job: str | None
    text: str


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


def cpu_kind() -> str:
    flags: set[str] = set()
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
    kind = "AVX-512 BF16" if flags & {"avx512_bf16", "amx_bf16"} else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{kind} ({model}, {os.cpu_count()} cores)"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def classify(text: str) -> tuple[str, str | None]:
    match = re.search(r"Job `([0-9a-f]+)` accepted", text)
    if match:
        return "accepted", match.group(1)
    for outcome, needle, _ in REFUSALS:
        if needle in text:
            return outcome, None
    return ("other" if text else "no answer"), None


async def stylize(fake: FakeDiscord, member: Member, content: tuple[str, bytes, str], at: float, t0: float,
                  kind: str = "load") -> Answer:
    """/stylize from ``member`` with ``content`` at ``t0 + at``; waits for the bot's first answer."""
    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
    name, data, content_type = content
    key = f"{member.name}/{time.monotonic_ns()}"
    options = {"content": fake.add_attachment(f"{key}/{name}", data, content_type),
               "style": fake.add_attachment(f"{key}/style.png", STYLE_PNG, "image/png"),
               "preset": "fast"}
    inter = await fake.send_slash_command("stylize", user=member.name, options=options, channel=member.channel)
    dispatched = time.monotonic() - t0
    try:
        deferral = (await inter.wait_for_callback(timeout=10)).at
    except asyncio.TimeoutError:
        deferral = float("inf")
    try:
        reply = await inter.wait_for_reply(timeout=60)
        replied = inter.since(reply.edited_t or reply.created_t)
    except asyncio.TimeoutError:
        replied = float("inf")
    text = "\n".join(inter.texts())  # the "accepted" line may not be the newest message any more
    outcome, job = classify(text)
    return Answer(member.server, kind, dispatched, deferral, replied, outcome, job, text[:120])


def delivered(fake: FakeDiscord, job_id: str) -> int:
    return sum(1 for m in fake.messages.values() if not m.deleted and not m.ephemeral
               and (is_delivery_of(m.embeds, job_id, "result")
                    or is_delivery_of(m.embeds, job_id, "notice")))


async def drain(fake: FakeDiscord, jobs: list[str], timeout: float) -> tuple[list[str], list[str], int]:
    """Wait until every job in ``jobs`` was delivered; returns (lost, duplicated, failure notices)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(delivered(fake, j) for j in jobs):
        await asyncio.sleep(0.5)
    counts = {j: delivered(fake, j) for j in jobs}
    failed = sum(1 for j in jobs if any(is_delivery_of(m.embeds, j, "notice")
                                        for m in fake.messages.values()))
    return [j for j, n in counts.items() if n == 0], [j for j, n in counts.items() if n > 1], failed


def start_order(records: list[dict], job_server: dict[str, str]) -> list[tuple[str, set[str]]]:
    """Each of these jobs' first start, in order: (its server, the servers with jobs waiting
    when it left the line, its own included), replayed from the bot's log. A job leaves the line
    when the previous one ends ("job finished" / "job ended"), or when it is queued on an idle
    worker; exact with one worker, approximate with more."""
    waiting: Counter = Counter()
    started: set[str] = set()
    order = []
    at_pop: set[str] = set()
    idle = True
    for record in records:
        msg, job = record.get("msg"), record.get("job_id")
        if msg in ("job finished", "job ended"):
            at_pop = {s for s, n in waiting.items() if n > 0}
            idle = not at_pop  # else the next job leaves the line now
        if job not in job_server:
            continue
        server = job_server[job]
        if msg == "job queued":
            waiting[server] += 1
            if idle:
                at_pop = {s for s, n in waiting.items() if n > 0}
        elif msg == "job started" and job not in started:
            started.add(job)
            order.append((server, at_pop | {server}))
            waiting[server] -= 1
            idle = False
    return order


def round_robin_guess(order: list[tuple[str, set[str]]]) -> list[str]:
    """Where round robin sends each start: the waiting server served least recently."""
    last: dict[str, int] = {}
    guesses = []
    for i, (server, waiting) in enumerate(order):
        guesses.append(min(waiting, key=lambda s: (last.get(s, -1), s != server)))
        last[server] = i
    return guesses


def refusal_counts(counts: Counter, every: bool = True) -> str:
    """``counts`` of outcomes as "per-user limit 3, per-server limit 0, ..." (``every`` reason, or those seen)."""
    reasons = [o for o in dict.fromkeys(outcome for outcome, _, _ in REFUSALS) if every or counts[o]]
    return ", ".join(f"{LABELS[o].removeprefix('refused: ')} {counts[o]}" for o in reasons) or "none"


def add_members(fake: FakeDiscord, sizes: list[int], prefix: str, servers: list[tuple[str, Any, Any]]) -> list[Member]:
    return [Member(name, fake.add_user(f"{prefix}{name}{i:02d}", guild=guild).username, channel)
            for (name, guild, channel), size in zip(servers, sizes) for i in range(size)]


async def main(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.servers.split(",")]
    print(f"CPU:                      {cpu_kind()}")
    print(f"load average at start:    {load_average()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bot_load_"))
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    servers = [("A", fake.guild, fake.channel)]
    for i in range(1, len(sizes)):
        name = chr(ord("A") + i)
        owner = fake.add_user(f"owner{name}", join=False)
        guild = fake.add_guild(f"Server {name}", owner=owner)
        servers.append((name, guild, fake.add_channel(f"{name.lower()}-general", guild=guild)))
    members = add_members(fake, sizes, "load", servers)
    limits = {"queue_max": args.queue_max, "per_user_waiting": args.per_user, "per_guild_waiting": args.per_guild,
              "max_upload_bytes": 8 << 20, "max_pixels": 16_000_000}
    config = write_config(tmp, presets=PRESETS, limits=limits,
                          pool={"workers": args.workers, "job_timeout_s": 300},
                          progress={"edit_interval_s": 3.0}, logging={"level": "INFO", "format": "json"})
    bot = start_bot(fake, config, tmp, {"NSTBOT_DISCORD__DEV_GUILD_IDS": ",".join(str(g.id) for _, g, _ in servers)})
    try:
        await fake.wait_ready(timeout=90)
        for _, guild, _ in servers:
            await fake.wait_for_commands(guild=guild, names=["stylize"], timeout=60)
        await bot.wait_log("workers ready", timeout=180)
        layout = ", ".join(f"{name} {size} members" for (name, _, _), size in zip(servers, sizes))
        print(f"bot ready (pid {bot.proc.pid}); sending {args.commands} commands from {layout} "
              f"within {args.seconds:g} s", flush=True)

        # ---- 1. load
        rng = random.Random(args.seed)
        plan = [(rng.choice(members), rng.uniform(0, args.seconds)) for _ in range(args.commands)]
        t0 = time.monotonic()
        answers = await asyncio.gather(*(stylize(fake, m, ("content.png", CONTENT_PNG, "image/png"), at, t0)
                                         for m, at in plan))
        sent_s = max(a.dispatched for a in answers)
        jobs = [a.job for a in answers if a.job]
        lost, duplicated, failed = await drain(fake, jobs, args.drain_timeout)
        drained_s = time.monotonic() - t0
        load_peak = peak_rss_mib(bot.proc.pid)

        lat = [a.deferral for a in answers if a.deferral != float("inf")]
        outcome = Counter(a.outcome for a in answers)
        refused = sum(n for o, n in outcome.items() if o not in ("accepted", "other", "no answer"))
        others = [a.text for a in answers if a.outcome in ("other", "no answer")]
        print()
        print(f"commands sent:            {len(answers)} within {sent_s:.1f} s "
              f"({layout}; {args.workers} CPU worker(s), queue_max {args.queue_max}, "
              f"per-server {args.per_guild}, per-user {args.per_user})")
        print(f"deferral latency:         p50 {statistics.median(lat) * 1000:.0f} ms · "
              f"p99 {percentile(lat, 99) * 1000:.0f} ms · max {max(lat) * 1000:.0f} ms"
              + (f" · {len(answers) - len(lat)} never acknowledged" if len(lat) < len(answers) else ""))
        print(f"jobs accepted:            {outcome['accepted']}")
        print(f"refused by limits:        {refused} ({refusal_counts(outcome)})")
        print(f"refused otherwise:        {len(others)}" + (f" e.g. {others[:2]}" if others else ""))
        if len(servers) > 1:
            for (name, _, _), size in zip(servers, sizes):
                mine = [a for a in answers if a.server == name]
                counts = Counter(a.outcome for a in mine)
                print(f"  server {name} ({size:3d} members): sent {len(mine)}, "
                      f"accepted {counts['accepted']}, refused {len(mine) - counts['accepted']} "
                      f"({refusal_counts(counts, every=False)})")
        print(f"delivered:                {len(jobs) - len(lost)} of {len(jobs)} "
              f"({failed} as failure notices) after {drained_s:.0f} s")
        print(f"lost:                     {len(lost)}" + (f" {lost[:5]}" if lost else ""))
        print(f"delivered twice or more:  {len(duplicated)}")
        if len(servers) > 1:
            job_server = {a.job: a.server for a in answers if a.job}
            order = start_order(bot.log_records(), job_server)
            accepted = Counter(job_server.values())
            n = min(args.first, len(servers) * min(accepted.get(name, 0) for name, _, _ in servers), len(order))
            guesses = round_robin_guess(order)
            actual, guessed = Counter(s for s, _ in order[:n]), Counter(guesses[:n])
            contested = [i for i, (_, waiting) in enumerate(order) if len(waiting) > 1]
            agree = sum(1 for i in contested if guesses[i] == order[i][0])
            run = longest = 1
            for i in range(1, len(order)):  # the same server again while another had jobs waiting
                run = run + 1 if order[i][0] == order[i - 1][0] and len(order[i][1]) > 1 else 1
                longest = max(longest, run)
            print(f"first {n:2d} jobs started:   "
                  + ", ".join(f"{name} {actual[name]}" for name, _, _ in servers)
                  + " (round robin predicts " + ", ".join(f"{name} {guessed[name]}" for name, _, _ in servers) + ")")
            print(f"round robin check:        {agree} of the {len(contested)} starts made while several servers had "
                  f"jobs waiting went to the one served least recently ({len(order)} starts in all); longest run "
                  f"from one server while another waited: {longest} (rounds allow 2: one turn per server per round, "
                  "turns within a round by arrival)")
        print(f"bot peak memory (VmHWM):  {load_peak:.0f} MiB after the load" if load_peak
              else "bot peak memory: unknown", flush=True)

        # ---- 2. hostile uploads, all at once on an idle bot
        hostile_answers: list[Answer] = []
        hostile_lost: list[str] = []
        hostile_dup: list[str] = []
        hostile_peak = None
        if args.hostile:
            pictures = [(label, make()) for label, make in HOSTILE]
            hostile = []
            for i in range(args.hostile):
                name, guild, channel = servers[i % len(servers)]
                hostile.append(Member(name, fake.add_user(f"hostile{i:02d}", guild=guild).username, channel))
            t1 = time.monotonic()
            hostile_answers = list(await asyncio.gather(*(
                stylize(fake, m, pictures[i % len(pictures)][1], 0.0, t1, kind=pictures[i % len(pictures)][0])
                for i, m in enumerate(hostile))))
            answered_s = max(a.dispatched + a.replied for a in hostile_answers)
            hostile_jobs = [a.job for a in hostile_answers if a.job]
            hostile_lost, hostile_dup, hostile_failed = await drain(fake, hostile_jobs, args.drain_timeout)
            hostile_peak = peak_rss_mib(bot.proc.pid)
            hlat = [a.deferral for a in hostile_answers if a.deferral != float("inf")]
            print()
            print(f"hostile uploads:          {len(hostile_answers)} /stylize at once, all answered within "
                  f"{answered_s:.1f} s; deferral max {max(hlat, default=float('inf')) * 1000:.0f} ms"
                  + (f", {len(hostile_answers) - len(hlat)} never acknowledged" if len(hlat) < len(hostile_answers)
                     else ""))
            for label, (_, data, _) in pictures:
                mine = Counter(a.outcome for a in hostile_answers if a.kind == label)
                print(f"  {label + f' ({len(data) / 1024:.0f} KB):':48s} "
                      + ", ".join(f"{LABELS[o]} {n}" for o, n in mine.most_common()))
            odd = [a.text for a in hostile_answers if a.outcome in ("other", "no answer")]
            if odd:
                print(f"  unexpected answers:     {odd[:3]}")
            print(f"hostile jobs delivered:   {len(hostile_jobs) - len(hostile_lost)} of {len(hostile_jobs)} "
                  f"({hostile_failed} as failure notices); lost {len(hostile_lost)}, "
                  f"delivered twice or more {len(hostile_dup)}")
            print(f"bot peak memory (VmHWM):  {hostile_peak:.0f} MiB after the hostile uploads (target under 300 MiB)"
                  if hostile_peak else "bot peak memory: unknown")

        # ---- 3. time to refuse the scan bomb
        bomb = scan_bomb_jpeg()
        times = []
        for _ in range(args.bomb_runs * 4):
            t = time.perf_counter()
            try:
                image_info(bomb[1])
                raise SystemExit("image_info accepted the scan bomb")
            except ImageError:
                times.append(time.perf_counter() - t)
        timer = Member("A", fake.add_user("bombtimer", guild=servers[0][1]).username, servers[0][2])
        e2e = []
        for _ in range(args.bomb_runs):
            answer = await stylize(fake, timer, bomb, 0.0, time.monotonic(), kind="bomb")
            if answer.outcome != "scans":
                print(f"scan bomb answered with:  {answer.outcome} {answer.text!r}")
            e2e.append(answer.replied)
        print()
        print(f"scan bomb, image_info:    median {statistics.median(times) * 1000:.2f} ms over {len(times)} runs "
              "(target under 100 ms)")
        print(f"scan bomb, /stylize:      dispatch → ephemeral refusal median "
              f"{statistics.median(e2e) * 1000:.0f} ms, max {max(e2e) * 1000:.0f} ms over {len(e2e)} runs (bot idle)")

        import psutil

        workers = [c.pid for c in psutil.Process(bot.proc.pid).children(recursive=True)]
        worker_peaks = [p for p in (peak_rss_mib(pid) for pid in workers) if p]
        if worker_peaks:
            print(f"worker peak memory:       {', '.join(f'{p:.0f} MiB' for p in worker_peaks)} "
                  "(TensorFlow; includes the resource tracker)")
        records = bot.log_records()
        errors = [r for r in records if r.get("level") in ("ERROR", "CRITICAL")]
        warnings = Counter(r.get("msg") for r in records if r.get("level") == "WARNING")
        print(f"bot log:                  {len(errors)} errors"
              + (f" e.g. {[r.get('msg') for r in errors[:3]]}" if errors else "")
              + (f"; warnings {dict(warnings)}" if warnings else "; no warnings"))
        if fake.unhandled:
            print(f"unserved requests:        {len(fake.unhandled)}")
        print(f"load average at end:      {load_average()}")
        checks = LimitsConfig()
        print(f"(upload checks: bot defaults, {checks.checks_at_once} at once, {checks.checks_waiting} waiting, "
              f"{checks.check_timeout_s:g} s timeout)")
        ok = (not lost and not duplicated and not hostile_lost and not hostile_dup
              and lat and percentile(lat, 99) < 1.0)
        return 0 if ok else 1
    finally:
        if bot.proc.poll() is None:
            await bot.stop(timeout=60)
        await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="40,10", help="members per server, comma-separated (50: one server)")
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue-max", type=int, default=20)
    parser.add_argument("--per-guild", type=int, default=10, help="[limits] per_guild_waiting")
    parser.add_argument("--per-user", type=int, default=2)
    parser.add_argument("--first", type=int, default=20, help="how many first starts to split by server")
    parser.add_argument("--hostile", type=int, default=20, help="members sending hostile uploads at once (0: skip)")
    parser.add_argument("--bomb-runs", type=int, default=5)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=5)
    sys.exit(asyncio.run(main(parser.parse_args())))
