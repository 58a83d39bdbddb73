"""One bot, two servers of strangers, end to end against the fake Discord (``python -m bot``).

Server A is the fake's default guild ("Fake Guild": alice, bob, mod with Manage Messages, and
lurker, who has Manage Messages in the server but not in its #general); server B ("Other
Server") belongs to eve and has members zed and yuri, channels #b-general and #b-art. One CPU
worker, random weights, tiny presets. Tests run in file order and share the bot.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from bot_fixtures import CONTENT_PNG, STYLE_PNG, BotProcess, shut_down, start_bot, write_config

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import Channel, FakeDiscord, Guild, InteractionRecord, MessageRecord, Permissions
except ImportError:  # plain `pytest`
    from fake_discord import Channel, FakeDiscord, Guild, InteractionRecord, MessageRecord, Permissions

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]


@dataclass
class Env:
    fake: FakeDiscord
    bot: BotProcess
    tmp: Path
    config: Path
    b: Guild
    b_general: Channel
    b_art: Channel

    async def start_bot(self) -> None:
        sessions = len(self.fake.sessions)
        self.bot = start_bot(self.fake, self.config, self.tmp,
                             {"NSTBOT_DISCORD__DEV_GUILD_IDS": f"{self.fake.guild.id},{self.b.id}"})
        await self.fake.wait_for(lambda: len(self.fake.sessions) > sessions and self.fake.session.connected
                                 and self.fake.session.ready.is_set(), timeout=60, what="a gateway session")
        for guild in (self.fake.guild, self.b):
            await self.fake.wait_for_commands(guild=guild, names=["stylize", "stylebot", "stylebot-settings"],
                                              timeout=30)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("servers")
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    fake.add_user("lurker", permissions=Permissions.MANAGE_MESSAGES)
    fake.set_overwrite(fake.channel, "lurker", deny=Permissions.MANAGE_MESSAGES)  # not in #general
    eve = fake.add_user("eve", join=False)
    b = fake.add_guild("Other Server", owner=eve)
    b_general, b_art = fake.add_channel("b-general", guild=b), fake.add_channel("b-art", guild=b)
    for name in ("zed", "yuri"):
        fake.add_user(name, guild=b)
    config = write_config(tmp, limits={"queue_max": 10, "per_user_waiting": 2, "per_guild_waiting": 4,
                                       "daily_jobs_per_member": 5})
    env = Env(fake, None, tmp, config, b, b_general, b_art)  # type: ignore[arg-type]
    try:
        await env.start_bot()
        yield env
    finally:
        await shut_down(env.bot, fake)


# --------------------------------------------------------------------------- helpers


async def stylize(fake: FakeDiscord, user: str, *, channel: Channel | None = None, **options) -> InteractionRecord:
    n = time.monotonic_ns()
    opts = {"content": fake.add_attachment(f"{n}/content.png", CONTENT_PNG, "image/png"),
            "style": fake.add_attachment(f"{n}/style.png", STYLE_PNG, "image/png"), **options}
    inter = await fake.send_slash_command("stylize", user=user, options=opts, channel=channel)
    cb = await inter.wait_for_callback(timeout=5)
    assert cb.type == 5 and cb.at < 3.0
    return inter


async def queued(fake: FakeDiscord, user: str, **kwargs) -> tuple[InteractionRecord, MessageRecord, str]:
    inter = await stylize(fake, user, **kwargs)

    def answered(r: InteractionRecord) -> MessageRecord | None:
        public = next((m for m in r.followups if not m.ephemeral), None)
        refused = r.original if r.original and not r.original.loading and "accepted" not in r.original.content else None
        return public or refused

    status = await inter.wait_until(answered, timeout=20)
    assert not status.ephemeral, f"refused: {status.content}"
    job_id = re.search(r"Job `([0-9a-f]+)`", status.content).group(1)
    return inter, status, job_id


async def refusal(fake: FakeDiscord, user: str, **kwargs) -> str:
    inter = await stylize(fake, user, **kwargs)
    reply = await inter.wait_for_reply(timeout=20)
    assert reply.ephemeral and not inter.public_texts(), "refusals must be ephemeral"
    return reply.content


async def command(fake: FakeDiscord, name: str, sub: str, user: str, where: Channel | None = None,
                  **options) -> str:
    """Run ``/name sub`` in ``where`` (default: server A's #general); returns the private answer."""
    rec = await fake.send_slash_command(name, subcommand=sub, user=user, options=options, channel=where)
    reply = await rec.wait_for_reply(timeout=15)
    assert reply.ephemeral, reply.content
    return reply.content


async def cancel_choices(fake: FakeDiscord, user: str, channel: Channel | None = None) -> list[str]:
    rec = await fake.send_autocomplete("stylebot", focused="job_id", subcommand="cancel", user=user, channel=channel)
    await rec.wait_until(lambda r: r.autocomplete_choices is not None, timeout=10)
    return [c["value"] for c in rec.autocomplete_choices]


def started_order(bot: BotProcess, job_ids: list[str]) -> list[str]:
    return [r["job_id"] for r in bot.log_records() if r.get("msg") == "job started" and r["job_id"] in job_ids]


async def steps_of(fake: FakeDiscord, status: MessageRecord) -> int:
    await fake.wait_for(lambda: re.search(r"step (\d+)/", status.content or ""), timeout=60, what="progress")
    return int(re.search(r"step (\d+)/", status.content).group(1))


# --------------------------------------------------------------------------- tests


async def test_a_job_can_only_be_cancelled_from_its_own_server_and_channel(env: Env):
    fake = env.fake
    inter, status, job_id = await queued(fake, "alice", preset="best")  # long: it keeps the worker busy
    env.blocker = (status, job_id)  # type: ignore[attr-defined]
    step = await steps_of(fake, status)

    # eve owns server B (every permission there): she sees nothing of A's jobs and cancels nothing
    assert await cancel_choices(fake, "eve", channel=env.b_general) == []
    text = await command(fake, "stylebot", "cancel", "eve", where=env.b_general, job_id=job_id)
    assert "nothing to cancel" in text
    # lurker has Manage Messages in server A, but not in the job's channel
    assert await cancel_choices(fake, "lurker") == []
    text = await command(fake, "stylebot", "cancel", "lurker", job_id=job_id)
    assert "Only the requester (or a moderator with Manage Messages in the job's channel)" in text
    click = await fake.click_button(status, f"nstbot:cancel:{job_id}", user="lurker")
    assert "Only the requester" in (await click.wait_for_reply(timeout=10)).content
    # the job runs on; a moderator of its channel is offered it
    await fake.wait_for(lambda: int(re.search(r"step (\d+)/", status.content).group(1)) > step, timeout=30,
                        what="the job to keep running")
    assert "Cancelled" not in status.content
    assert job_id in await cancel_choices(fake, "mod")
    assert job_id in await cancel_choices(fake, "alice")


async def test_worker_processes_do_not_hold_the_token(env: Env):
    bot = psutil.Process(env.bot.proc.pid)
    children = bot.children(recursive=True)
    assert children, "the worker should be running"
    # Not in their environment, nor in the bot's own (a worker could read /proc/<bot pid>/environ).
    for process in [bot, *children]:
        environ = process.environ()
        assert "DISCORD_TOKEN" not in environ and env.bot.token not in "\n".join(environ.values()), process


async def test_servers_take_turns_and_each_sees_its_own_part_of_the_line(env: Env):
    fake = env.fake
    blocker_status, blocker = env.blocker  # type: ignore[attr-defined]
    jobs = {}
    for name, user, channel in (("bob1", "bob", None), ("bob2", "bob", None), ("alice1", "alice", None),
                                ("zed1", "zed", env.b_general), ("zed2", "zed", env.b_general)):
        jobs[name] = await queued(fake, user, channel=channel, preset="fast")
    # Server A had this round's turn (the running job), so B goes first; then they alternate,
    # and within A its members take turns.
    expected = ["zed1", "bob1", "zed2", "bob2", "alice1"]
    for place, name in enumerate(expected, 1):
        await fake.wait_for(lambda: f"position **{place}**" in jobs[name][1].content, timeout=10,
                            what=f"{name} at place {place}")
    text = await command(fake, "stylebot", "status", "yuri", where=env.b_general)
    assert "**Waiting:** 5 of at most 10" in text
    assert "**This server:** 0 running, 2 of at most 4 waiting (places 1, 3)" in text
    text = await command(fake, "stylebot", "status", "bob")
    assert "**This server:** 1 running, 3 of at most 4 waiting (places 2, 4, 5)" in text
    # Server A's share of the line is four waiting jobs.
    jobs["alice2"] = await queued(fake, "alice", preset="fast")
    text = await refusal(fake, "mod", preset="fast")
    assert "This server already has 4 jobs waiting" in text

    # the moderator of the job's channel may cancel it; then the line runs in that order
    text = await command(fake, "stylebot", "cancel", "mod", job_id=blocker)
    await fake.wait_for(lambda: "Cancelled by" in blocker_status.content, timeout=20, what="the blocker cancelled")
    ids = [jobs[n][2] for n in expected + ["alice2"]]
    await fake.wait_for(lambda: all("Done" in jobs[n][1].content for n in jobs), timeout=180, what="all jobs done")
    assert started_order(env.bot, ids) == ids


async def test_admins_set_their_servers_rules_within_the_operators(env: Env):
    fake, b_general, b_art = env.fake, env.b_general, env.b_art
    text = await command(fake, "stylebot-settings", "show", "zed", where=b_general)
    assert "Only members with the Manage Server permission" in text
    text = await command(fake, "stylebot-settings", "show", "eve", where=b_general)
    assert "every channel" in text and "**Largest preset:** best" in text and "5 per member per 24 hours" in text

    text = await command(fake, "stylebot-settings", "channels", "eve", where=b_general, action="allow",
                         channel=b_art)
    assert text.startswith("Saved.") and f"<#{b_art.id}>" in text
    text = await command(fake, "stylebot-settings", "max-preset", "eve", where=b_general, preset="fast")
    assert "**Largest preset:** fast" in text
    text = await command(fake, "stylebot-settings", "daily-quota", "eve", where=b_general, jobs=10)
    assert "allows at most 5 jobs per member per day" in text
    text = await command(fake, "stylebot-settings", "daily-quota", "eve", where=b_general, jobs=1)
    assert "1 per member per 24 hours" in text

    text = await refusal(fake, "yuri", channel=b_general, preset="fast")
    assert f"can be used only in <#{b_art.id}>" in text
    text = await refusal(fake, "yuri", channel=b_art, preset="balanced")
    assert "allows presets up to **fast**, so `balanced` cannot be used here" in text
    inter, status, job_id = await queued(fake, "yuri", channel=b_art)  # the default preset fits
    text = await refusal(fake, "yuri", channel=b_art)
    assert re.search(r"You have used your 1 job for the last 24 hours in this server .* another <t:\d+:R>", text)
    text = await refusal(fake, "zed", channel=b_art)  # zed's two jobs earlier today count too
    assert "You have used your 1 job" in text
    # server A's rules did not change
    _, a_status, _ = await queued(fake, "bob", preset="balanced")
    await fake.wait_for(lambda: "Done" in status.content and "Done" in a_status.content, timeout=120,
                        what="both jobs done")

    # a restart keeps every server's settings and the day's count
    assert await env.bot.stop() == 0
    await env.start_bot()
    text = await command(fake, "stylebot-settings", "show", "eve", where=b_general)
    assert f"<#{b_art.id}>" in text and "**Largest preset:** fast" in text and "1 per member per 24 hours" in text
    text = await refusal(fake, "yuri", channel=b_art)
    assert "You have used your 1 job" in text
    text = await command(fake, "stylebot-settings", "channels", "eve", where=b_general, action="everywhere")
    assert "every channel" in text
