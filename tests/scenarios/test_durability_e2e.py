"""Nothing lost: the real bot process against the fake Discord, killed and faulted on purpose.

One fake Discord for the module and one state folder; the bot is started, ``kill -9``-ed with
jobs waiting, running and mid-delivery, and started again on the same store. The later tests
use the restarted bot: Discord answering 500 to followups, and workers killed mid-job.
Tests run in file order and share the bot.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from bot.render import words
from bot.core.job import Job
from bot.delivery.outbox import is_delivery_of, marker
from bot.store.job_store import JobStore
from nst_core.params import StylizeParams
from bot_fixtures import (
    CONTENT_PNG, PNG_MAGIC, STYLE_PNG, BotProcess, free_port, kill9, reap, start_bot, status_texts, wait_gone,
    write_config,
)
from nst_core.pool.base import Finished

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, InteractionRecord, MessageRecord
except ImportError:  # plain `pytest`
    from fake_discord import FakeDiscord, InteractionRecord, MessageRecord

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

# "balanced" runs a few seconds: long enough to be caught running, short enough to run again.
PRESETS = {
    "fast": {"size": 32, "steps": 6, "scales": 1},
    "balanced": {"size": 48, "steps": 80, "scales": 1},
    "best": {"size": 48, "steps": 3000, "scales": 1},
}


@dataclass
class Env:
    fake: FakeDiscord
    tmp: Path
    config: Path
    health_port: int
    bot: BotProcess | None = None
    stray: list[int] = field(default_factory=list)  # worker pids of killed bots

    @property
    def db(self) -> Path:
        return self.tmp / "data" / "jobs.sqlite3"

    @property
    def spool(self) -> Path:
        return self.tmp / "data" / "spool"

    async def start(self) -> BotProcess:
        sessions = len(self.fake.sessions)
        self.bot = start_bot(self.fake, self.config, self.tmp)
        try:
            await self.fake.wait_for(lambda: len(self.fake.sessions) > sessions and self.fake.session.connected
                                     and self.fake.session.ready.is_set(), timeout=60, what="a new gateway session")
            await self.fake.wait_for_commands(guild=self.fake.guild, names=["stylize", "stylebot"], timeout=30)
        except BaseException:
            print(self.bot.tail())
            raise
        return self.bot

    def states(self) -> dict[str, tuple]:
        with sqlite3.connect(self.db) as db:
            return {row[0]: row[1:] for row in db.execute("SELECT job_id, state, route FROM jobs")}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("durable")
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    for name in ("carol", "dave"):
        fake.add_user(name)
    port = free_port()
    config = write_config(tmp, presets=PRESETS,
                          limits={"queue_max": 10, "per_user_waiting": 3},
                          pool={"retries": 1},
                          delivery={"timeout_s": 5, "retries": 1, "backoff_s": 0.5, "redeliver_after_s": 2},
                          health={"port": port})
    env = Env(fake, tmp, config, port)
    try:
        yield env
    finally:
        try:
            if env.bot is not None and env.bot.proc.poll() is None:
                await env.bot.stop()
        finally:
            reap(env.stray)
            await fake.stop()
    assert not fake.unhandled, f"the bot hit routes the fake does not serve: {fake.unhandled}"


# --------------------------------------------------------------------------- helpers


async def stylize(fake: FakeDiscord, user: str, preset: str = "fast") -> InteractionRecord:
    n = time.monotonic_ns()
    opts = {"content": fake.add_attachment(f"{n}/content.png", CONTENT_PNG, "image/png"),
            "style": fake.add_attachment(f"{n}/style.png", STYLE_PNG, "image/png"), "preset": preset}
    inter = await fake.send_slash_command("stylize", user=user, options=opts)
    cb = await inter.wait_for_callback(timeout=5)
    assert cb.type == 5 and cb.at < 3.0
    return inter


async def queued(fake: FakeDiscord, user: str, preset: str = "fast") -> tuple[InteractionRecord, MessageRecord, str]:
    inter = await stylize(fake, user, preset)
    status = await inter.wait_until(lambda r: next((m for m in r.followups if not m.ephemeral), None), timeout=20)
    job_id = re.search(r"Job `([0-9a-f]+)`", status.content).group(1)
    return inter, status, job_id


def deliveries(fake: FakeDiscord, job_id: str, kind: str = "result") -> list[MessageRecord]:
    """Every message anywhere (channel, followups, DMs) that delivers ``job_id``'s result/notice."""
    return [m for m in fake.messages.values()
            if not m.deleted and not m.ephemeral and is_delivery_of(m.embeds, job_id, kind)]


async def delivered_once(fake: FakeDiscord, job_id: str, kind: str = "result", timeout: float = 60.0,
                         settle: float = 0.0) -> MessageRecord:
    await fake.wait_for(lambda: deliveries(fake, job_id, kind), timeout=timeout, what=f"{kind} of {job_id}")
    if settle:
        await asyncio.sleep(settle)
    found = deliveries(fake, job_id, kind)
    assert len(found) == 1, [(m.id, m.kind, m.content) for m in found]
    return found[0]


def webhook_posts(inter: InteractionRecord) -> str:
    return rf"^/webhooks/\d+/{re.escape(inter.token)}$"


def log_records(bot: BotProcess, msg: str) -> list[dict]:
    return [r for r in bot.log_records() if r.get("msg") == msg]


async def metrics(env: Env) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{env.health_port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def seed_result() -> Finished:
    summary = {"initial": {"content": 1.0, "style": 2.0, "tv": 0.1}, "final": {"content": 0.5, "style": 1.0, "tv": 0.1},
               "iterations": 6, "scales": [[32, 21]], "resolution": [32, 21], "history": [], "notes": []}
    return Finished("", CONTENT_PNG, summary, (), "cpu0", 0.6)


def seed_job(fake: FakeDiscord, job_id: str, user: str) -> Job:
    """A job as /stylize would record it, with an interaction token Discord no longer honours."""
    return Job(job_id=job_id, user_id=fake.user(user).id, channel_id=fake.channel.id, guild_id=fake.guild.id,
               application_id=fake.application_id, interaction_token="expired", token_created_at=time.time() - 3600,
               upload_limit=8 << 20, params=StylizeParams(preset="fast", seed=1), content=CONTENT_PNG,
               style=STYLE_PNG, style_label="style.png")


# --------------------------------------------------------------------------- kill -9 and restart


async def test_kill9_with_jobs_waiting_running_and_mid_delivery_then_restart(env: Env):
    fake = env.fake
    bot = await env.start()
    # The workers are still loading, so every job waits. j0's result will be in the air when
    # the bot dies: Discord (the fake) is slow to take it, and never gets all of it.
    i0, _, j0 = await queued(fake, "bob", "fast")
    slow = fake.inject_fault(webhook_posts(i0), method="POST", status=None, delay=8.0)
    i1, s1, j1 = await queued(fake, "alice", "balanced")
    _, _, j2 = await queued(fake, "bob", "fast")
    _, _, j3 = await queued(fake, "alice", "fast")
    _, _, j4 = await queued(fake, "carol", "fast")
    assert set(env.states()) == {j0, j1, j2, j3, j4}, "every accepted job is recorded before it is announced"
    assert all(state == ("waiting", None) for state in env.states().values())
    assert all((env.spool / j / "content.img").is_file() for j in (j0, j1, j2, j3, j4))

    await fake.wait_for(lambda: slow.hits >= 1, timeout=90, what="j0's result on its way")
    await fake.wait_for(lambda: re.search(r"step \d+/80", s1.content or ""), timeout=30, what="j1 running")
    assert env.states()[j0][0] == "delivering" and env.states()[j1][0] == "running"
    assert [r["job_id"] for r in log_records(bot, "job started")] == [j0, j1]
    # The line now: j1 running, then carol's first job, then bob's and alice's second ones.
    env.stray = kill9(bot)
    assert not await wait_gone(env.stray), "workers must not outlive a killed bot"
    assert not deliveries(fake, j0)

    # What a kill at other moments leaves behind, written as the bot would have: a6 was posted
    # but the bot died before recording it; a8 was finished but not yet being delivered; a7's
    # failure notice was being sent and never arrived.
    a6, a7, a8 = "a6a6a6a6a6", "a7a7a7a7a7", "a8a8a8a8a8"
    store = JobStore(env.db, env.spool)
    await store.open()
    for job_id in (a6, a7, a8):
        await store.accept(seed_job(fake, job_id, "dave"))
    for job_id in (a6, a8):
        await store.save_result(job_id, seed_result())
    await store.update(a6, state="delivering", route="channel")
    await store.update(a7, remove_files=True, state="notifying", failure="The seeded job failed.",
                       failure_kind="error", route="channel")
    await store.close()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.api_base}/channels/{fake.channel.id}/messages",
                                json={"content": words.result_content(fake.user("dave").id, a6, late=True),
                                      "embeds": [{"footer": {"text": marker("result", a6)}}]},
                                headers={"Authorization": f"Bot {fake.bot_token}"}) as resp:
            assert resp.status == 200

    bot = await env.start()
    await bot.wait_log("recovered jobs from the store", timeout=30)
    await delivered_once(fake, a8, timeout=30)
    notice = await delivered_once(fake, a7, "notice", timeout=30)
    assert "The seeded job failed." in notice.content and notice.kind == "channel"

    # Everyone still waiting (or running) hears that the job is back in line, in a new status message.
    for job_id, user in ((j1, "alice"), (j2, "bob"), (j3, "alice"), (j4, "carol")):
        msg = await fake.wait_for_message(fake.channel, lambda m, j=job_id: f"**Job `{j}`**" in (m.content or "")
                                          and "put back in line" in (m.content or ""), timeout=30)
        assert f"<@{fake.user(user).id}>" in msg.content
        first = msg.history[0] if msg.history else {"components": msg.components}
        assert f"nstbot:cancel:{job_id}" in str(first["components"]), "the new status message has a Cancel button"
    assert "continues in a new message below" in s1.content and s1.custom_ids() == []

    for job_id in (j1, j2, j3, j4):
        await delivered_once(fake, job_id, timeout=90)
    await delivered_once(fake, j0, settle=1.0)
    await delivered_once(fake, a6)
    looked = {r["job_id"]: r["found"] for r in log_records(bot, "looked for an earlier delivery")}
    assert looked[j0] is None and looked[a6] is not None  # j0 never arrived: sent now; a6 had: not again
    # The old line, in its old order (j1 was running, so it goes first).
    assert [r["job_id"] for r in log_records(bot, "job started")][:4] == [j1, j4, j2, j3]
    await fake.wait_for(lambda: all(env.states()[j][0] == "delivered" for j in (j0, j1, j2, j3, j4, a6, a8)),
                        timeout=10, what="every job recorded as delivered")
    assert env.states()[a7][0] == "notified"
    # What is left are the delivered jobs' pictures, kept for the buttons under their results.
    assert {p.name for p in env.spool.iterdir()} <= {j0, j1, j2, j3, j4, a6, a8}, "no files of other jobs"


# --------------------------------------------------------------------------- Discord 5xx on delivery


async def test_500_on_the_first_followup_and_on_results(env: Env):
    fake = env.fake
    before = await metrics(env)
    # The first followup of the command (its status message) fails once: discord.py retries it.
    fault = fake.inject_fault(r"^/webhooks/\d+/[^/]+$", method="POST", status=500, times=1)
    inter, status, job_id = await queued(fake, "alice", "fast")
    assert fault.hits == 1
    assert len([m for m in inter.followups if not m.ephemeral and "**Job `" in (m.content or "")]) == 1
    result = await delivered_once(fake, job_id, timeout=30, settle=0.5)
    assert result.kind == "followup"

    # The result's followup fails once: retried, delivered once.
    inter, status, job_id = await queued(fake, "bob", "balanced")
    fault = fake.inject_fault(webhook_posts(inter), method="POST", status=500, times=1)
    result = await delivered_once(fake, job_id, timeout=60, settle=0.5)
    assert fault.hits == 1 and result.kind == "followup"

    # The result's followup keeps failing: after the retries, the channel; still once.
    inter, status, job_id = await queued(fake, "carol", "fast")
    fault = fake.inject_fault(webhook_posts(inter), method="POST", status=500, times=None)
    try:
        result = await delivered_once(fake, job_id, timeout=60, settle=0.5)
    finally:
        fake.faults.remove(fault)
    assert fault.hits >= 2 and result.kind == "channel" and "too old" in result.content
    after = await metrics(env)
    key = ("stylebot_deliveries_total", (("path", "channel"),))
    assert after[key] == before.get(key, 0) + 1


# --------------------------------------------------------------------------- workers killed mid-job


async def test_a_worker_killed_mid_job_is_retried_once_then_reported(env: Env):
    fake, bot = env.fake, env.bot
    restarts = (await metrics(env))[("stylebot_worker_restarts_total", ())]

    inter, status, job_id = await queued(fake, "alice", "balanced")
    await fake.wait_for(lambda: re.search(r"step \d+/80", status.content or ""), timeout=30, what="running")
    [started] = [r for r in log_records(bot, "job started") if r["job_id"] == job_id]
    os.kill(started["pid"], signal.SIGKILL)
    result = await delivered_once(fake, job_id, timeout=90, settle=0.5)
    assert result.attachments[0].data.startswith(PNG_MAGIC)
    assert any("trying again" in t for t in status_texts(status)), status_texts(status)
    attempts = [r["attempt"] for r in log_records(bot, "job started") if r["job_id"] == job_id]
    assert attempts == [1, 2]

    # Killed on both tries: the requester is told why.
    inter, status, job_id = await queued(fake, "bob", "best")
    for attempt in (1, 2):
        await fake.wait_for(lambda: any(r["job_id"] == job_id and r["attempt"] == attempt
                                        for r in log_records(bot, "job started")), timeout=60, what=f"try {attempt}")
        [started] = [r for r in log_records(bot, "job started") if r["job_id"] == job_id and r["attempt"] == attempt]
        await fake.wait_for(lambda: re.search(r"step \d+/3000", status.content or ""), timeout=30, what="running")
        os.kill(started["pid"], signal.SIGKILL)
        if attempt == 1:
            await fake.wait_for(lambda: "trying again" in (status.content or ""), timeout=15, what="the retry")
    notice = await delivered_once(fake, job_id, "notice", timeout=30)
    assert "stopped unexpectedly" in notice.content and "killed by SIGKILL" in notice.content
    assert not deliveries(fake, job_id)
    await fake.wait_for(lambda: env.states()[job_id][0] == "notified", timeout=10, what="notice recorded")

    after = await metrics(env)
    assert after[("stylebot_worker_restarts_total", ())] >= restarts + 3
    assert after[("stylebot_jobs_total", (("outcome", "worker_died"),))] >= 1


async def test_health_and_metrics(env: Env):
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30  # the last test replaced a worker; wait until it is warm
        while True:
            async with session.get(f"http://127.0.0.1:{env.health_port}/healthz") as resp:
                body = await resp.json()
                if resp.status == 200 or time.monotonic() > deadline:
                    break
            await asyncio.sleep(0.5)
    assert resp.status == 200 and body["ok"], body
    assert body["checks"]["gateway"]["ok"] and body["checks"]["store"]["ok"]
    assert body["checks"]["workers"]["alive"] == 1
    values = await metrics(env)
    assert values[("stylebot_queue_length", ())] == 0
    assert values[("stylebot_jobs_total", (("outcome", "finished"),))] >= 3
    assert values[("stylebot_deliveries_total", (("path", "interaction"),))] >= 3
    assert values[("stylebot_job_duration_seconds_count", ())] >= 3
    assert env.bot is not None and await env.bot.stop(signal.SIGTERM) == 0
    assert env.bot.token not in env.bot.log_text()
