"""Load on the real bot process through the fake Discord (a script, not a test).

With ``--shards N`` it runs the many-servers scenario instead (``--servers 1000 --shards 4``:
a sharded bot in 1,000 servers, 3,000 commands in 60 s): see ``bot_scale.py``.

    python benchmarks/bot_load.py [--servers 40,10] [--commands 200] [--seconds 10] [--workers 1]
                                  [--queue-max 20] [--per-guild 10] [--per-user 2] [--hostile 20]
                                  [--attack 50] [--attack-victims 6]

Starts the fake Discord in this process and ``python -m bot`` against it (random VGG19
weights, tiny presets, ``max_pixels`` 16 M and ``max_upload_bytes`` 8 MiB so that large
pictures reach the decoding checks; upload checking keeps the bot's defaults), waits until
the workers are warm, then runs three phases on the same bot, and a fourth on a bot of its own.
``--commands 0``, ``--hostile 0``, ``--bomb-runs 0`` and ``--attack 0`` skip a phase (with the
first two skipped, no first bot is started and phase 3 runs on the attack phase's bot).

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

4. Attack. A fresh bot (the first one stopped) with the same settings but a small spool: ``[storage] spool_max_mb`` 1
   and ``server_share`` such that each server's share holds about ``--attack-victims`` of
   server B's jobs (``--attack-share-kb`` sets it), so that the attacker fills its share. Server
   B (the victim) first sends ``--attack-victims`` (6) ordinary /stylize from fresh members,
   spread evenly over ``--attack-spread`` (3) seconds, with nothing else going on (the
   baseline, after one warm-up job). Then ``--attack`` (50) fresh members of server A each send
   one worst-case accepted upload (``hostile_pictures.worst_accepted_jpeg``: the costliest JPEG
   the decode-cost checks let through) at the same moment, and ``--attack-lead`` (0.2) s later
   server B's fresh members send the same ordinary jobs on the same schedule. Every accepted job
   is waited for. Prints, baseline against under attack, for server B: deferral p99, acceptance
   (accepted / sent), time to the first result of the batch (from its first command) and the
   median time to result (each job from its command), and where that time went (medians of
   command → in line → started → result, from the bot's log); for server A: counts by outcome
   and delivery, and how many of its jobs started before server B's first; per server, the CPU
   time of the upload checks (the bot's "upload checked" log lines), the room its new jobs made
   in its share of the spool (its own kept pictures dropped) and what its jobs hold there at
   the end. Targets: server B's acceptance under attack 100 %, its time to first result under
   attack within 1.5x the baseline's.

It also prints the CPU (AVX2 or AVX-512 BF16, from /proc/cpuinfo) and the load average at the
start and end (the machine may be busy with other work), and the errors in the bot's log.
Exit status 0 when no job is lost or duplicated, the load phase's deferral p99 is under 1 s and
the attack phase meets its targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
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

from bot.delivery.outbox import is_delivery_of  # noqa: E402
from bot.config import LimitsConfig, StorageConfig  # noqa: E402
from bot_fixtures import CONTENT_PNG, STYLE_PNG, BotProcess, start_bot, write_config  # noqa: E402
from fake_discord import FakeDiscord  # noqa: E402
from hostile_pictures import HOSTILE, scan_bomb_jpeg  # noqa: E402
from nst_core.errors import ImageError  # noqa: E402
from nst_core.images import decode_to_png, image_info  # noqa: E402

PRESETS = {"fast": {"size": 32, "steps": 6, "scales": 1}, "balanced": {"size": 48, "steps": 24, "scales": 1},
           "best": {"size": 48, "steps": 60, "scales": 1}}

# How the bot words each refusal: (outcome, text it contains, label printed)
REFUSALS = (
    ("user_limit", "You already have", "per-user limit"),
    ("server_limit", "This server already has", "per-server limit"),
    ("line_full", "The queue is full", "line full"),
    ("checks_busy", "The bot is checking a lot of pictures", "checks busy"),
    ("server_check_share", "shares its time between servers", "server's check time used"),
    ("spool_share", "share of the bot's storage", "server's storage share full"),
    ("spool_full", "storage for waiting jobs is full", "storage full"),
    ("scans", "scans, far more than a real photo", "too many JPEG scans"),
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
    sent_t: float = 0.0  # when it was dispatched (time.monotonic(), the fake's clock)


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
    return Answer(member.server, kind, dispatched, deferral, replied, outcome, job, text[:120], inter.dispatched_t)


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


def has_field(section: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(section))


async def launch(fake: FakeDiscord, directory: Path, guilds: list[Any], args: argparse.Namespace,
                 **sections: dict[str, Any]) -> BotProcess:
    """``python -m bot`` with this benchmark's settings (``sections`` added), once its workers are warm."""
    directory.mkdir(parents=True, exist_ok=True)
    limits = {"queue_max": args.queue_max, "per_user_waiting": args.per_user, "per_guild_waiting": args.per_guild,
              "max_upload_bytes": 8 << 20, "max_pixels": 16_000_000}
    config = write_config(directory, presets=PRESETS, limits=limits,
                          pool={"workers": args.workers, "job_timeout_s": 300},
                          progress={"edit_interval_s": 3.0}, logging={"level": "INFO", "format": "json"},
                          **sections)
    synced = [fake.command_sync_count(guild) for guild in guilds]
    bot = start_bot(fake, config, directory, {"NSTBOT_DISCORD__DEV_GUILD_IDS": ",".join(str(g.id) for g in guilds)})
    try:
        for guild, before in zip(guilds, synced):  # this bot's own sync (an earlier bot's is still there)
            await fake.wait_for(lambda: fake.command_sync_count(guild) > before, timeout=90,
                                what=f"command sync for {guild.name}")
            await fake.wait_for_commands(guild=guild, names=["stylize"], timeout=60)
        await fake.wait_ready(timeout=90)
        await bot.wait_log("workers ready", timeout=180)
    except BaseException:
        if bot.proc.poll() is None:
            await bot.stop(timeout=60)
        raise
    return bot


async def load_phase(fake: FakeDiscord, bot: BotProcess, args: argparse.Namespace, servers: list[tuple[str, Any, Any]],
                     sizes: list[int], members: list[Member], layout: str) -> bool:
    """1. Load; returns whether its targets are met (nothing lost or duplicated, deferral p99 under 1 s)."""
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
    if lat:
        print(f"deferral latency:         p50 {statistics.median(lat) * 1000:.0f} ms · "
              f"p99 {percentile(lat, 99) * 1000:.0f} ms · max {max(lat) * 1000:.0f} ms"
              + (f" · {len(answers) - len(lat)} never acknowledged" if len(lat) < len(answers) else ""))
    else:
        print(f"deferral latency:         none of the {len(answers)} commands was acknowledged")
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
    return bool(not lost and not duplicated and lat and percentile(lat, 99) < 1.0)


async def hostile_phase(fake: FakeDiscord, bot: BotProcess, args: argparse.Namespace,
                        servers: list[tuple[str, Any, Any]]) -> bool:
    """2. Hostile uploads, all at once on an idle bot; returns whether none was lost or duplicated."""
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
    return not hostile_lost and not hostile_dup


async def bomb_phase(fake: FakeDiscord, args: argparse.Namespace, server: tuple[str, Any, Any]) -> None:
    """3. Time to refuse the scan bomb, in this process and through the bot (idle)."""
    bomb = scan_bomb_jpeg()
    times = []
    for _ in range(args.bomb_runs * 4):
        t = time.perf_counter()
        try:
            image_info(bomb[1])
            raise SystemExit("image_info accepted the scan bomb")
        except ImageError:
            times.append(time.perf_counter() - t)
    name, guild, channel = server
    timer = Member(name, fake.add_user(f"bombtimer{len(fake.users)}", guild=guild).username, channel)
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
          f"{statistics.median(e2e) * 1000:.0f} ms, max {max(e2e) * 1000:.0f} ms over {len(e2e)} runs (bot idle)",
          flush=True)


def worst_picture() -> tuple[tuple[str, bytes, str], str]:
    """The attack's upload: the costliest JPEG the checks let through, and how it was made."""
    import hostile_pictures

    return hostile_pictures.worst_accepted_jpeg(), "worst_accepted_jpeg()"


def result_times(fake: FakeDiscord, jobs: list[str]) -> dict[str, float]:
    """When each job's result message was posted (time.monotonic()); jobs without one are left out."""
    wanted = set(jobs)
    times: dict[str, float] = {}
    for m in fake.messages.values():
        if m.deleted or m.ephemeral:
            continue
        for job in wanted:
            if is_delivery_of(m.embeds, job, "result"):
                times[job] = min(times.get(job, m.created_t), m.created_t)
    return times


def log_times(records: list[dict], msg: str) -> dict[str, float]:
    """The first log line ``msg`` of each job, as time.monotonic() (the log's clock is the wall clock)."""
    import datetime

    offset = time.time() - time.monotonic()
    times: dict[str, float] = {}
    for r in records:
        if r.get("msg") == msg and r.get("job_id") and r["job_id"] not in times:
            times[r["job_id"]] = datetime.datetime.fromisoformat(r["ts"]).timestamp() - offset
    return times


@dataclass
class Batch:
    """The victim's figures for one sub-phase."""

    answers: list[Answer]
    results: dict[str, float]  # job → its result message's time
    queued: dict[str, float]  # job → when it went in line (its pictures checked and stored)
    started: dict[str, float]  # job → when it first started

    def stage(self, since: str, until: str) -> float:
        """Median over the accepted jobs of the time from ``since`` to ``until`` ("sent", "queued",
        "started", "result")."""
        def at(a: Answer, what: str) -> float | None:
            return a.sent_t if what == "sent" else {"queued": self.queued, "started": self.started,
                                                    "result": self.results}[what].get(a.job or "")
        spans = [u - t for a in self.answers if a.job
                 for t, u in [(at(a, since), at(a, until))] if t is not None and u is not None]
        return statistics.median(spans) if spans else float("inf")

    @property
    def sent(self) -> int:
        return len(self.answers)

    @property
    def accepted(self) -> int:
        return sum(1 for a in self.answers if a.outcome == "accepted")

    @property
    def deferral_p99(self) -> float:
        lat = [a.deferral for a in self.answers]
        return percentile(lat, 99) if lat else float("inf")

    @property
    def to_result(self) -> list[float]:
        return [self.results[a.job] - a.sent_t for a in self.answers if a.job in self.results]

    @property
    def first_result(self) -> float:
        """From the batch's first command to its first result."""
        if not self.results or not self.answers:
            return float("inf")
        return min(self.results.values()) - min(a.sent_t for a in self.answers)

    @property
    def median_result(self) -> float:
        return statistics.median(self.to_result) if self.to_result else float("inf")


def seconds(value: float, unit: str = "s") -> str:
    if value == float("inf"):
        return "none"
    return f"{value * 1000:.0f} ms" if unit == "ms" else f"{value:.2f} s"


def per_server(records: list[dict], msg: str, key: str, names: dict[int | None, str]) -> dict[str, tuple[int, float]]:
    """(count, sum of ``key``) of the log lines ``msg`` by server."""
    out: dict[str, tuple[int, float]] = {}
    for r in records:
        if r.get("msg") == msg:
            name = names.get(r.get("guild_id"), str(r.get("guild_id")))
            n, total = out.get(name, (0, 0.0))
            out[name] = (n + 1, total + float(r.get(key) or 0.0))
    return out


def spool_usage(database: Path, names: dict[int | None, str]) -> dict[str, int] | None:
    """Bytes each server's jobs hold in the spool, from the bot's database (read only); None if unreadable."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute("SELECT guild_id, SUM(spool_bytes) FROM jobs GROUP BY guild_id").fetchall()
    except sqlite3.Error:
        return None
    return {names.get(g, str(g)): int(n or 0) for g, n in rows}


async def attack_phase(fake: FakeDiscord, bot: BotProcess, args: argparse.Namespace, attacker: tuple[str, Any, Any],
                       victim: tuple[str, Any, Any], share: str, database: Path) -> bool:
    """4. Attack: server B's ordinary jobs alone, then while server A sends worst-case uploads;
    returns whether the targets are met (and nothing was lost or duplicated)."""
    worst, made = worst_picture()
    ordinary = ("content.png", CONTENT_PNG, "image/png")
    k = args.attack_victims
    schedule = [i * args.attack_spread / max(1, k - 1) for i in range(k)]
    names = {attacker[1].id: attacker[0], victim[1].id: victim[0]}

    def members(server: tuple[str, Any, Any], prefix: str, n: int) -> list[Member]:
        name, guild, channel = server
        return [Member(name, fake.add_user(f"{prefix}{i:02d}", guild=guild).username, channel) for i in range(n)]

    # One job first: the worker's first job at a picture size is slower than the rest.
    warm = await stylize(fake, members(victim, "warmup", 1)[0], ordinary, 0.0, time.monotonic(), kind="warm-up")
    if warm.job:
        await drain(fake, [warm.job], args.drain_timeout)

    async def batch(label: str, attack: int) -> tuple[Batch, list[Answer], list[dict], tuple[list, list, int]]:
        mark = len(bot.log_records())
        victims = members(victim, f"victim{label}", k)
        attackers = members(attacker, "attacker", attack)
        t = time.monotonic()
        lead = args.attack_lead if attack else 0.0
        answers = await asyncio.gather(
            *(stylize(fake, m, worst, 0.0, t, kind="attack") for m in attackers),
            *(stylize(fake, m, ordinary, lead + at, t, kind="victim") for m, at in zip(victims, schedule)))
        jobs = [a.job for a in answers if a.job]
        drained = await drain(fake, jobs, args.drain_timeout)
        mine = [a for a in answers if a.kind == "victim"]
        records = bot.log_records()[mark:]
        return (Batch(mine, result_times(fake, [a.job for a in mine if a.job]), log_times(records, "job queued"),
                      log_times(records, "job started")),
                [a for a in answers if a.kind == "attack"], records, drained)

    print()
    print(f"attack phase:             load average {load_average()}; spool {share}")
    base, _, base_records, base_drained = await batch("base", 0)
    under, attack_answers, attack_records, attack_drained = await batch("atk", args.attack)

    ratio = under.first_result / base.first_result if base.first_result not in (0.0, float("inf")) else float("inf")
    accepted_ok = under.sent > 0 and under.accepted == under.sent
    first_ok = ratio <= 1.5
    size = image_info(worst[1])
    print(f"attack:                   server {attacker[0]}: {args.attack} members send at once one "
          f"{worst[0]} each ({size[0]} {size[1]}x{size[2]}, {len(worst[1]) / 1024:.0f} KB; {made}); "
          f"server {victim[0]}: {k} members send ordinary /stylize over {args.attack_spread:g} s, "
          f"{args.attack_lead:g} s later (the baseline: the same, alone)")
    rows = (
        ("deferral p99", seconds(base.deferral_p99, "ms"), seconds(under.deferral_p99, "ms"), "", ""),
        ("accepted", f"{base.accepted}/{base.sent} ({base.accepted / max(1, base.sent):.0%})",
         f"{under.accepted}/{under.sent} ({under.accepted / max(1, under.sent):.0%})", "100 %",
         "PASS" if accepted_ok else "FAIL"),
        ("time to first result", seconds(base.first_result), seconds(under.first_result)
         + (f" ({ratio:.2f}x)" if ratio != float("inf") else ""), "within 1.5x", "PASS" if first_ok else "FAIL"),
        ("median time to result", seconds(base.median_result), seconds(under.median_result), "", ""),
        ("  command → in line", seconds(base.stage("sent", "queued")), seconds(under.stage("sent", "queued")),
         "", "(median: checks, pictures stored)"),
        ("  in line → started", seconds(base.stage("queued", "started")), seconds(under.stage("queued", "started")),
         "", "(median: waiting for the worker)"),
        ("  started → result", seconds(base.stage("started", "result")), seconds(under.stage("started", "result")),
         "", "(median: the job, its delivery)"),
    )
    print(f"  server {victim[0]} (victim)        {'baseline':16s} {'under attack':22s} target")
    for label, b, u, target, verdict in rows:
        print(f"  {label:24s} {b:16s} {u:22s} {target:12s} {verdict}".rstrip())
    for label, batch_ in (("baseline", base), ("under attack", under)):
        refused = Counter(a.outcome for a in batch_.answers if a.outcome != "accepted")
        if refused:
            print(f"  {victim[0]} refused ({label}): " + ", ".join(f"{LABELS[o]} {n}" for o, n in refused.items())
                  + f" e.g. {[a.text for a in batch_.answers if a.outcome != 'accepted'][:1]}")
    outcomes = Counter(a.outcome for a in attack_answers)
    lost, dup, failed = attack_drained
    attack_jobs = [a.job for a in attack_answers if a.job]
    print(f"attacker (server {attacker[0]}):      " + ", ".join(f"{LABELS[o]} {n}" for o, n in outcomes.most_common()))
    print(f"attack phase jobs:        {sum(1 for a in attack_answers + under.answers if a.job)} accepted "
          f"({len(attack_jobs)} of them server {attacker[0]}'s), delivered all but {len(lost)} "
          f"({failed} as failure notices), delivered twice or more {len(dup)}; baseline: lost {len(base_drained[0])}, "
          f"twice or more {len(base_drained[1])}")
    checks = LimitsConfig()
    share_s = f"each server's share {checks.check_share_s:g} s per {checks.check_window_s:g} s" if has_field(
        LimitsConfig, "check_share_s") else "no per-server share"
    cpu_text, room_text, late = [], [], []
    for label, records in (("baseline", base_records), ("under attack", attack_records)):
        cpu = per_server(records, "upload checked", "cpu_s", names)
        room = per_server(records, "spool room made", "freed_bytes", names)
        dropped = per_server(records, "spool room made", "dropped", names)
        timeouts = Counter(names.get(r.get("guild_id"), "?") for r in records
                           if r.get("msg") == "an upload check ran out of time")
        cpu_text.append(f"{label}: " + (", ".join(f"{n} {t:.2f} s in {c} pictures" for n, (c, t) in
                                                   sorted(cpu.items())) or "none"))
        room_text.append(f"{label}: " + (", ".join(f"{n} {c} times ({dropped[n][1]:.0f} kept files dropped, "
                                                    f"{t / 1024:.0f} KB)" for n, (c, t) in sorted(room.items()))
                                          or "none"))
        if timeouts:
            late.append(f"{label}: " + ", ".join(f"{n} {c}" for n, c in sorted(timeouts.items())))
    attack_started = log_times(attack_records, "job started")
    first_victim = min((under.started[a.job] for a in under.answers if a.job in under.started), default=float("inf"))
    before = sum(1 for j in attack_jobs if attack_started.get(j, float("inf")) < first_victim)
    print(f"server {attacker[0]}'s jobs started before server {victim[0]}'s first (under attack): {before}")
    print(f"upload checks' CPU time:  {'; '.join(cpu_text)} ({share_s})")
    if late:
        print(f"checks out of time:       {'; '.join(late)}")
    print(f"spool room made:          {'; '.join(room_text)} (the server's own kept pictures dropped for its new jobs)")
    usage = spool_usage(database, names)
    if usage is not None:
        print(f"spool held at the end:    " + ", ".join(f"{n} {b / 1024:.0f} KB" for n, b in sorted(usage.items()))
              + f" (spool {share.split(' (')[0]})")
    print(f"targets:                  {'PASS' if accepted_ok and first_ok else 'FAIL'} (server {victim[0]}'s "
          f"acceptance under attack 100 %, its time to first result within 1.5x the baseline's)", flush=True)
    return (accepted_ok and first_ok and not lost and not dup and not base_drained[0] and not base_drained[1])


def attack_storage(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The attack bot's [storage]: a 1 MiB spool, each server's share room for about ``--attack-victims``
    of the victim's jobs (their pictures and results), so that the attacker's ten or so fill it."""
    side = min(64, max(p["size"] for p in PRESETS.values()))  # engine.max_size 64 in bot_fixtures.write_config
    job_bytes = (len(decode_to_png(CONTENT_PNG, max_pixels=16_000_000, longer_side=side))
                 + len(decode_to_png(STYLE_PNG, max_pixels=16_000_000, longer_side=side)) + 4096)  # + its result
    share_bytes = args.attack_share_kb * 1024 or max(1, args.attack_victims) * job_bytes
    spool = 1 << 20
    storage: dict[str, Any] = {"spool_max_mb": 1}
    if has_field(StorageConfig, "server_share"):
        fraction = min(1.0, max(0.01, round(share_bytes / spool, 3)))
        storage["server_share"] = fraction
        text = (f"1 MiB, each server's share {fraction:g} ({fraction * spool / 1024:.0f} KB, about "
                f"{fraction * spool / job_bytes:.1f} of server B's jobs at {job_bytes / 1024:.1f} KB)")
    else:
        text = "1 MiB (this bot has no per-server share of the spool)"
    return storage, text


def bot_summary(fake: FakeDiscord, bot: BotProcess, label: str) -> None:
    import psutil

    try:
        workers = [c.pid for c in psutil.Process(bot.proc.pid).children(recursive=True)]
    except psutil.Error:
        workers = []
    worker_peaks = [p for p in (peak_rss_mib(pid) for pid in workers) if p]
    if worker_peaks:
        print(f"worker peak memory{label}:{' ' * max(1, 7 - len(label))}"
              f"{', '.join(f'{p:.0f} MiB' for p in worker_peaks)} (TensorFlow; includes the resource tracker)")
    records = bot.log_records()
    errors = [r for r in records if r.get("level") in ("ERROR", "CRITICAL")]
    warnings = Counter(r.get("msg") for r in records if r.get("level") == "WARNING")
    print(f"bot log{label}:{' ' * max(1, 18 - len(label))}{len(errors)} errors"
          + (f" e.g. {[r.get('msg') for r in errors[:3]]}" if errors else "")
          + (f"; warnings {dict(warnings)}" if warnings else "; no warnings"))


async def main(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.servers.split(",")]
    print(f"CPU:                      {cpu_kind()}")
    print(f"load average at start:    {load_average()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bot_load_"))
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    servers = [("A", fake.guild, fake.channel)]
    for i in range(1, max(len(sizes), 2 if args.attack else 1)):  # the attack phase needs a server B
        name = chr(ord("A") + i)
        owner = fake.add_user(f"owner{name}", join=False)
        guild = fake.add_guild(f"Server {name}", owner=owner)
        servers.append((name, guild, fake.add_channel(f"{name.lower()}-general", guild=guild)))
    guilds = [guild for _, guild, _ in servers]
    servers, extra = servers[:len(sizes)], servers[len(sizes):]  # phases 1-2 use the --servers ones
    members = add_members(fake, sizes, "load", servers)
    ok = True
    bots: list[tuple[BotProcess, str]] = []
    try:
        bot = None
        if args.commands or args.hostile or (args.bomb_runs and not args.attack):
            bot = await launch(fake, tmp / "main", guilds, args)
            bots.append((bot, ""))
            layout = ", ".join(f"{name} {size} members" for (name, _, _), size in zip(servers, sizes))
            print(f"bot ready (pid {bot.proc.pid}); sending {args.commands} commands from {layout} "
                  f"within {args.seconds:g} s", flush=True)
            if args.commands:  # ---- 1. load
                ok &= await load_phase(fake, bot, args, servers, sizes, members, layout)
            if args.hostile:  # ---- 2. hostile uploads, all at once on an idle bot
                ok &= await hostile_phase(fake, bot, args, servers)
            if args.bomb_runs:  # ---- 3. time to refuse the scan bomb
                await bomb_phase(fake, args, servers[0])
            if args.attack:
                bot_summary(fake, bot, "")
                await bot.stop(timeout=60)
        if args.attack:  # ---- 4. attack, on a bot of its own with a small spool
            storage, share = attack_storage(args)
            attacker, victim = (servers + extra)[:2]
            attack_bot = await launch(fake, tmp / "attack", guilds, args, storage=storage)
            bots.append((attack_bot, " (attack)"))
            print()
            print(f"attack bot ready (pid {attack_bot.proc.pid})", flush=True)
            if bot is None and args.bomb_runs:
                await bomb_phase(fake, args, servers[0])
            ok &= await attack_phase(fake, attack_bot, args, attacker, victim, share,
                                     tmp / "attack" / "data" / "jobs.sqlite3")
        last, label = bots[-1] if bots else (None, "")
        if last is not None:
            bot_summary(fake, last, label)
        if fake.unhandled:
            print(f"unserved requests:        {len(fake.unhandled)}")
        print(f"load average at end:      {load_average()}")
        checks = LimitsConfig()
        share_s = (f", each server's share {checks.check_share_s:g} s of CPU per {checks.check_window_s:g} s"
                   if has_field(LimitsConfig, "check_share_s") else "")
        print(f"(upload checks: bot defaults, {checks.checks_at_once} at once, {checks.checks_waiting} waiting, "
              f"{checks.check_timeout_s:g} s timeout{share_s})")
        return 0 if ok else 1
    finally:
        for bot_, _ in bots:
            if bot_.proc.poll() is None:
                await bot_.stop(timeout=60)
        await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=None,
                        help="members per server, comma-separated (50: one server; default 40,10); with --shards: "
                             "the number of servers (default 1000)")
    parser.add_argument("--shards", type=int, default=0,
                        help="run the many-servers scenario of bot_scale.py on this many shards instead")
    parser.add_argument("--members", type=int, default=3, help="with --shards: members per server")
    parser.add_argument("--max-concurrency", type=int, default=1, help="with --shards: Discord's identify concurrency")
    parser.add_argument("--calls-per-second", type=int, default=40, help="with --shards: the bot's call budget")
    parser.add_argument("--commands", type=int, default=None, help="0: skip phase 1 (default 200; with --shards 3000)")
    parser.add_argument("--seconds", type=float, default=None, help="default 10 (with --shards 60)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue-max", type=int, default=20)
    parser.add_argument("--per-guild", type=int, default=10, help="[limits] per_guild_waiting")
    parser.add_argument("--per-user", type=int, default=2)
    parser.add_argument("--first", type=int, default=20, help="how many first starts to split by server")
    parser.add_argument("--hostile", type=int, default=20, help="members sending hostile uploads at once (0: skip)")
    parser.add_argument("--bomb-runs", type=int, default=5, help="0: skip phase 3")
    parser.add_argument("--attack", type=int, default=50,
                        help="server A's members sending one worst-case accepted upload each, at once (0: skip)")
    parser.add_argument("--attack-victims", type=int, default=6,
                        help="server B's members sending one ordinary /stylize each, in both sub-phases")
    parser.add_argument("--attack-spread", type=float, default=3.0, help="seconds over which server B's are sent")
    parser.add_argument("--attack-lead", type=float, default=0.2,
                        help="seconds between server A's uploads and server B's first command")
    parser.add_argument("--attack-share-kb", type=float, default=0.0,
                        help="each server's share of the attack bot's 1 MiB spool (0: room for about "
                             "--attack-victims of server B's jobs)")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=5)
    arguments = parser.parse_args()
    if arguments.shards:
        from bot_scale import scale

        arguments.servers = arguments.servers or "1000"
        arguments.commands = 3000 if arguments.commands is None else arguments.commands
        arguments.seconds = 60.0 if arguments.seconds is None else arguments.seconds
        sys.exit(asyncio.run(scale(arguments)))
    arguments.servers = arguments.servers or "40,10"
    arguments.commands = 200 if arguments.commands is None else arguments.commands
    arguments.seconds = 10.0 if arguments.seconds is None else arguments.seconds
    sys.exit(asyncio.run(main(arguments)))
