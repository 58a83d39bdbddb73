"""Many servers, end to end against the fake Discord (``python -m bot``): a sharded gateway,
and a line that drains without going over Discord's rate limits.

1. The fake requires 2 shards. The bot asks ``GET /gateway/bot``, both shards identify (in
   different ``max_concurrency`` buckets, so without the 5-second wait), and a server on each
   shard runs ``/stylize`` to a delivered result. ``/stylebot status`` and ``/healthz`` show
   both shards; a shard the fake drops is shown as reconnecting, then connected again.
2. The fake enforces Discord's limits with a global limit of 8 a second, and interaction
   tokens expire after 10 s, so that status edits and results go through channel messages,
   which count toward it; the bot allows itself 6. A line of 50 jobs from five servers
   drains: no 429, never more than the fake's 8 such calls in a second (6 on average), every command deferred within
   its 3 seconds, and every job delivered.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from bot_fixtures import CONTENT_PNG, STYLE_PNG, free_port, shut_down, start_bot, write_config

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, InteractionRecord
    from tests.fake_discord.ratelimits import RateLimits
except ImportError:  # plain `pytest`
    from fake_discord import FakeDiscord, InteractionRecord
    from fake_discord.ratelimits import RateLimits

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]


async def stylize(fake: FakeDiscord, user, guild, channel) -> InteractionRecord:
    n = time.monotonic_ns()
    options = {"content": fake.add_attachment(f"{n}/content.png", CONTENT_PNG, "image/png"),
               "style": fake.add_attachment(f"{n}/style.png", STYLE_PNG, "image/png")}
    inter = await fake.send_slash_command("stylize", user=user, guild=guild, channel=channel, options=options)
    callback = await inter.wait_for_callback(timeout=5)
    assert callback.type == 5 and callback.at < 3.0, "deferred within Discord's 3 seconds"
    return inter


def member_and_channel(guild):
    """A member who is not the bot or the owner, and the server's "general" channel."""
    member = next(m.user for m in guild.members.values() if not m.user.bot and m.user.id != guild.owner_id)
    channel = next(c for c in guild.channels.values() if c.name == "general")
    return member, channel


def job_of(inter: InteractionRecord) -> str | None:
    """The job id the bot's answer names ("Job `abc` accepted", or its status message)."""
    for text in inter.texts():
        found = re.search(r"Job `([0-9a-f]+)`", text)
        if found:
            return found.group(1)
    return None


def result_of(inter: InteractionRecord):
    return next((m for m in inter.followups if m.attachments and not m.ephemeral), None)


async def healthz(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            return resp.status, await resp.json()


async def test_two_shards_each_serve_their_servers(tmp_path: Path):
    fake = FakeDiscord(shards=2, max_concurrency=2)
    await fake.start()
    bot = None
    try:
        guilds = [fake.guild_on_shard(0), fake.guild_on_shard(1)]
        port = free_port()
        config = write_config(tmp_path, health={"port": port},
                              limits={"queue_max": 10, "per_user_waiting": 2, "per_guild_waiting": 4})
        bot = start_bot(fake, config, tmp_path,
                        {"NSTBOT_DISCORD__DEV_GUILD_IDS": ",".join(str(g.id) for g in guilds)})
        await fake.wait_for(lambda: all(fake.shard_session(i) is not None and fake.shard_session(i).ready.is_set()
                                        for i in (0, 1)), timeout=60, what="both shards ready")
        identifies = [i for i in fake.shard_identifies if i.accepted]
        assert sorted((i.shard_id, i.shard_count) for i in identifies) == [(0, 2), (1, 2)]
        assert not fake.identify_concurrency_violations()
        # different buckets: the second shard did not wait out discord.py's default 5 seconds
        assert abs(identifies[1].t - identifies[0].t) < 4.0
        for guild in guilds:
            await fake.wait_for_commands(guild=guild, names=["stylize", "stylebot"], timeout=30)

        # a server on each shard: its command arrives on its shard's connection, its result comes back
        inters = [await stylize(fake, *member_and_channel(guild)[:1], guild, member_and_channel(guild)[1])
                  for guild in guilds]
        results = await fake.wait_for(lambda: all(result_of(i) for i in inters) and [result_of(i) for i in inters],
                                      timeout=120, what="both results")
        assert all(r.attachments[0].filename.startswith("stylized") for r in results)
        assert [fake.shard_of(guild) for guild in guilds] == [0, 1]  # each command came on its own shard

        member, channel = member_and_channel(guilds[1])
        status = await fake.send_slash_command("stylebot", subcommand="status", user=member, guild=guilds[1],
                                               channel=channel)
        reply = await status.wait_for_reply(timeout=15)
        assert "**Gateway:** 2 shards, all connected; this server is on shard 1" in reply.content

        code, body = await healthz(port)
        assert code == 200, body
        shards = body["checks"]["gateway"]["shards"]
        assert [(s["id"], s["connected"], s["guilds"]) for s in shards] == [(0, True, 1), (1, True, 1)]

        # a shard drops: shown as reconnecting (not yet an outage), then back
        await fake.take_shard_down(1)
        await asyncio.sleep(1.0)
        code, body = await healthz(port)
        shard1 = body["checks"]["gateway"]["shards"][1]
        assert code == 200 and not shard1["connected"] and shard1["down_for_s"] >= 0.5, body
        fake.bring_shard_up(1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code, body = await healthz(port)
            if body["checks"]["gateway"]["shards"][1]["connected"]:
                break
            await asyncio.sleep(0.5)
        assert body["checks"]["gateway"]["shards"][1]["connected"], body
        metrics = await _metrics(port)
        assert 'stylebot_shard_connected{shard="1"} 1.0' in metrics
        assert await bot.stop() == 0
    finally:
        await shut_down(bot, fake)


async def _metrics(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text()


def delivered_jobs(fake: FakeDiscord) -> set[str]:
    """Jobs whose result (or failure notice) reached Discord, by the marker in its footer."""
    jobs = set()
    for message in list(fake.messages.values()):
        for embed in message.embeds or ():
            found = re.match(r"stylebot (?:result|notice) ([0-9a-f]+)", ((embed or {}).get("footer") or {}).get("text", ""))
            if found:
                jobs.add(found.group(1))
    return jobs


async def test_a_line_of_fifty_drains_within_discords_limits(tmp_path: Path):
    # Interaction tokens that expire after 10 s: most status edits and the results go
    # through channel messages, which count toward the global limit, here 8 a second.
    fake = FakeDiscord(token_ttl=10.0, rate_limits=RateLimits(global_per_s=8))
    await fake.start()
    bot = None
    try:
        guilds = fake.add_guilds(5, members=10)
        members = [(m.user, guild, next(c for c in guild.channels.values() if c.name == "general"))
                   for guild in guilds for m in guild.members.values()
                   if not m.user.bot and m.user.id != guild.owner_id]
        assert len(members) == 50
        port = free_port()
        config = write_config(tmp_path, health={"port": port},
                              discord={"calls_per_second": 6, "interaction_ttl_s": 10, "interaction_margin_s": 2},
                              limits={"queue_max": 60, "per_user_waiting": 1, "per_guild_waiting": 10,
                                      # all 50 uploads may wait for their checks at once, on a busy machine
                                      "checks_waiting": 64, "check_timeout_s": 120},
                              progress={"edit_interval_s": 0.5})
        bot = start_bot(fake, config, tmp_path,
                        {"NSTBOT_DISCORD__DEV_GUILD_IDS": ",".join(str(g.id) for g in guilds)})
        await fake.wait_ready(timeout=60)
        for guild in guilds:
            await fake.wait_for_commands(guild=guild, names=["stylize"], timeout=30)
        started = time.monotonic()
        inters = await asyncio.gather(*(stylize(fake, m, g, c) for m, g, c in members))
        try:
            jobs = await fake.wait_for(lambda: all(job_of(i) for i in inters) and [job_of(i) for i in inters],
                                       timeout=120, what="50 jobs in line")
        except asyncio.TimeoutError:
            raise AssertionError([i.texts() for i in inters if not job_of(i)][:3]) from None
        assert len(set(jobs)) == 50
        # while the line drains, commands still get their answer within the 3 seconds
        late = []
        while not set(jobs) <= delivered_jobs(fake) and time.monotonic() - started < 240:
            member, guild, channel = members[0]
            probe = await fake.send_slash_command("stylebot", subcommand="status", user=member, guild=guild,
                                                  channel=channel)
            late.append((await probe.wait_for_callback(timeout=5)).at)
            await asyncio.sleep(1.0)
        missing = set(jobs) - delivered_jobs(fake)
        assert not missing, f"{len(missing)} of 50 not delivered"
        assert late and max(late) < 3.0
        assert fake.rate_limited == [], fake.rate_limited[:3]
        rate = fake.calls_per_second(since=started, global_only=True)
        assert rate.peak <= 8 and rate.mean <= 6, rate  # the bot's 6 a second, as they reached the fake
        assert rate.total > 60, rate  # the line really made the bot use channel routes: edits and results
        metrics = await _metrics(port)
        background = re.search(r'stylebot_discord_calls_total\{kind="background"\} (\d+)', metrics)
        assert background and int(background.group(1)) > 0
        assert await bot.stop() == 0
    finally:
        await shut_down(bot, fake)
