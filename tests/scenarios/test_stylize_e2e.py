"""The real bot process (``python -m bot``) against the fake Discord, end to end.

Two bot processes, one after the other, each with one CPU worker, random VGG19 weights and
tiny presets (see ``bot_fixtures.TINY_PRESETS``): bot A with the usual 15-minute token
lifetime for most tests; bot B with a 4-second lifetime (the fake's and the bot's own) for
late delivery and shutdown. Tests within a class share their bot and run in file order;
each leaves the line empty. The first tests need no worker and run while it warms up.
"""

from __future__ import annotations

import io
import itertools
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot_fixtures import (
    CONTENT_PNG, PNG_MAGIC, STYLE_PNG, BotProcess, noise_png, png, position_of, start_bot, status_texts,
    write_config,
)

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, InteractionRecord, MessageRecord, Permissions
except ImportError:  # plain `pytest`
    from fake_discord import FakeDiscord, InteractionRecord, MessageRecord, Permissions

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

RESULT_TIMEOUT = 120.0  # the first result includes the worker's start (TensorFlow, VGG19)
_names = itertools.count()


@dataclass
class Env:
    fake: FakeDiscord
    bot: BotProcess
    workdir: Path
    config: Path


async def _start(tmp: Path, fake: FakeDiscord, **sections) -> Env:
    styles = tmp / "styles"
    styles.mkdir()
    (styles / "mosaic.png").write_bytes(STYLE_PNG)
    (styles / "waves.png").write_bytes(png(np.full((24, 24, 3), (20, 90, 200), np.uint8)))
    await fake.start()
    config = write_config(tmp, styles_dir=styles, **sections)
    bot = start_bot(fake, config, tmp)
    try:
        await fake.wait_ready(timeout=60)
        await fake.wait_for_commands(guild=fake.guild, names=["stylize", "stylebot"], timeout=30)
    except BaseException:
        print(bot.tail())
        await bot.stop()
        await fake.stop()
        raise
    return Env(fake, bot, tmp, config)


async def _finish(env: Env) -> None:
    try:
        if env.bot.proc.poll() is None:
            await env.bot.stop()
    finally:
        await env.fake.stop()
    assert not env.fake.unhandled, f"the bot hit routes the fake does not serve: {env.fake.unhandled}"


# --------------------------------------------------------------------------- helpers


async def stylize(fake: FakeDiscord, user: str, *, style: bytes | None = STYLE_PNG, content: bytes = CONTENT_PNG,
                  content_name: str = "content.png", content_type: str | None = "image/png",
                  **options) -> InteractionRecord:
    n = next(_names)
    opts = dict(options)
    opts["content"] = fake.add_attachment(f"{n}/{content_name}", content, content_type)
    if style is not None:
        opts["style"] = fake.add_attachment(f"{n}/style.png", style, "image/png")
    inter = await fake.send_slash_command("stylize", user=user, options=opts)
    cb = await inter.wait_for_callback(timeout=5)
    assert cb.type == 5 and cb.at < 3.0, "the command must be acknowledged (deferred) within 3 s"
    assert inter.callbacks[0] is cb  # nothing answered before the deferral
    return inter


async def queued(fake: FakeDiscord, user: str, **kwargs) -> tuple[InteractionRecord, MessageRecord, str]:
    """Run /stylize and return (interaction, public status message, job id)."""
    inter = await stylize(fake, user, **kwargs)
    status = await inter.wait_until(lambda r: next((m for m in r.followups if not m.ephemeral), None), timeout=20)
    job_id = re.search(r"Job `([0-9a-f]+)`", status.content).group(1)
    assert inter.original is not None and inter.original.ephemeral and job_id in inter.original.content
    return inter, status, job_id


async def refusal(fake: FakeDiscord, user: str, **kwargs) -> str:
    inter = await stylize(fake, user, **kwargs)
    reply = await inter.wait_for_reply(timeout=20)
    assert reply.ephemeral and not inter.public_texts(), "refusals must be ephemeral"
    return reply.content


async def wait_text(fake: FakeDiscord, message: MessageRecord, pattern: str, timeout: float = 30.0) -> str:
    await fake.wait_for(lambda: re.search(pattern, message.content or ""), timeout=timeout,
                        what=f"status matching {pattern!r}")
    return message.content


async def result_of(inter: InteractionRecord, timeout: float = RESULT_TIMEOUT) -> MessageRecord:
    return await inter.wait_until(
        lambda r: next((m for m in r.followups if "is ready" in (m.content or "")), None), timeout=timeout)


def cancel_id(job_id: str) -> str:
    return f"nstbot:cancel:{job_id}"


def started_order(bot: BotProcess, job_ids: list[str]) -> list[str]:
    return [r["job_id"] for r in bot.log_records() if r.get("msg") == "job started" and r["job_id"] in job_ids]


# --------------------------------------------------------------------------- bot A


@pytest_asyncio.fixture(scope="class", loop_scope="module")
async def env_a(tmp_path_factory):
    env = await _start(tmp_path_factory.mktemp("bot_a"), FakeDiscord(token_ttl=900))
    try:
        yield env
    finally:
        await _finish(env)


class TestBot:
    async def test_bad_requests_get_specific_ephemeral_answers(self, env_a: Env):
        fake = env_a.fake
        text = await refusal(fake, "alice", content=b"hello, I am not a picture\n" * 4, content_name="notes.png")
        assert "`notes.png`" in text and "not an image that can be read" in text and "PNG, JPEG" in text
        text = await refusal(fake, "alice", content=b"plain text", content_name="notes.txt", content_type="text/plain")
        assert "is a text/plain file" in text
        big = noise_png(150, 150)  # ~66 KB against a 60 000 byte limit
        text = await refusal(fake, "alice", content=big)
        assert "content image `content.png` is 66 KB; the limit is 59 KB" in text
        wide = png(np.zeros((200, 250, 3), np.uint8))  # 50 000 pixels against 40 000
        text = await refusal(fake, "bob", style=wide)
        assert "style image `style.png` is 250×200 pixels" in text and "resize it to at most about" in text
        text = await refusal(fake, "bob", style=None)
        assert "attach a style image with the `style` option or pick one from the library" in text
        text = await refusal(fake, "bob", style=None, library_style="nope")
        assert "no style called `nope`" in text
        # nothing was queued and nothing public was posted
        assert not [r for r in env_a.bot.log_records() if r.get("msg") == "job queued"]
        assert not fake.messages_in(fake.channel)
        assert env_a.bot.proc.poll() is None

    async def test_library_styles_autocomplete(self, env_a: Env):
        rec = await env_a.fake.send_autocomplete("stylize", focused="library_style", value="mo")
        await rec.wait_until(lambda r: r.autocomplete_choices is not None, timeout=10)
        assert [c["value"] for c in rec.autocomplete_choices] == ["mosaic"]
        rec = await env_a.fake.send_autocomplete("stylize", focused="library_style", value="")
        await rec.wait_until(lambda r: r.autocomplete_choices is not None, timeout=10)
        # the built-in paintings first, then the operator's folder
        assert [c["value"] for c in rec.autocomplete_choices] == [
            "starry-night", "great-wave", "composition-vii", "the-scream", "shipwreck-of-the-minotaur",
            "woman-with-a-hat", "mosaic", "waves"]

    async def test_stylize_with_two_attachments_end_to_end(self, env_a: Env):
        fake = env_a.fake
        inter, status, job_id = await queued(fake, "alice", preset="balanced", seed=7, strength=1.5)
        assert inter.callbacks[0].data.get("flags") == 64  # ephemeral "thinking", so refusals stay private
        assert status.custom_ids() == [cancel_id(job_id)] and not status.ephemeral
        result = await result_of(inter)

        # the status message: a position, then progress edits, then done; edits spaced out
        texts = status_texts(status)
        running = [t for t in texts if "Running" in t]
        assert running, texts
        assert re.search(r"`[█░]{16}` \d+% · step \d+/24 · scale 1/1 \(48×32\)", running[-1])
        assert any("left" in t for t in running)
        assert "Done" in status.content and status.custom_ids() == []  # the button is gone
        edit_times = [h["t"] for h in status.history[1:]] + [status.edited_t]
        gaps = [b - a for a, b in zip(edit_times, edit_times[1:-1])]  # the final edit may come sooner
        assert gaps and min(gaps) >= 0.4, gaps  # edit_interval_s = 0.5

        # the result: a mention, the image, the loss summary and the chart
        assert f"<@{fake.user('alice').id}>" in result.content and job_id in result.content
        names = [a.filename for a in result.attachments]
        assert names == ["stylized.png", "losses.png"]
        image = result.attachments[0]
        assert image.data.startswith(PNG_MAGIC)
        assert Image.open(io.BytesIO(image.data)).size == (48, 32)
        chart = Image.open(io.BytesIO(result.attachments[1].data))
        assert chart.format == "PNG" and chart.size == (640, 280)
        [embed] = result.embeds
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        for name in ("Content loss", "Style loss", "TV loss"):
            assert re.fullmatch(r"\S+ → \S+( \([+−]\d+%\))?", fields[name]), fields[name]
        assert fields["Iterations"] == "24" and fields["Resolution"] == "48×32" and fields["Scales"] == "48×32"
        assert fields["Seed"] == "7" and fields["Preset"] == "balanced (strength 1.5)"
        assert re.fullmatch(r"\d+\.\d s \(\d+(\.\d+)? s/step\)", fields["Time"])  # and seconds per step
        assert embed["image"]["url"] == "attachment://losses.png"
        assert not inter.rejected

    async def test_cancel_by_requester_others_refused_and_waiting_cancel(self, env_a: Env):
        fake = env_a.fake
        inter, status, job_id = await queued(fake, "alice", preset="best")
        await wait_text(fake, status, r"step \d+/3000")
        b_inter, b_status, b_job = await queued(fake, "bob", preset="fast")
        await wait_text(fake, b_status, r"position \*\*1\*\*")

        # bob may not cancel alice's job: refused privately, and the job keeps running
        click = await fake.click_button(status, cancel_id(job_id), user="bob")
        reply = await click.wait_for_reply(timeout=10)
        assert reply.ephemeral and "Only the requester" in reply.content
        step_then = int(re.search(r"step (\d+)/", status.content).group(1))
        await fake.wait_for(lambda: int(re.search(r"step (\d+)/", status.content).group(1)) > step_then + 2,
                            timeout=30, what="alice's job to keep going")

        # bob cancels his own waiting job: it leaves the line and never runs
        click = await fake.click_button(b_status, cancel_id(b_job), user="bob")
        assert (await click.wait_for_reply(timeout=10)).ephemeral
        await wait_text(fake, b_status, "Cancelled")
        assert b_status.custom_ids() == []

        # alice cancels her running job: it stops, no result comes
        click = await fake.click_button(status, cancel_id(job_id))
        reply = await click.wait_for_reply(timeout=10)
        assert reply.ephemeral and "Cancelling" in reply.content
        await wait_text(fake, status, "Cancelled", timeout=15)
        await fake.wait_for(lambda: "was cancelled" in (click.original.content or ""), timeout=15)
        assert not [m for m in inter.followups + b_inter.followups if "is ready" in (m.content or "")]
        assert b_job not in started_order(env_a.bot, [b_job])
        ended = [r for r in env_a.bot.log_records() if r.get("msg") == "job ended" and r["job_id"] == job_id]
        assert ended and ended[-1]["kind"] == "cancelled"

    async def test_moderator_cancel_by_id_and_status(self, env_a: Env):
        fake = env_a.fake
        inter, status, job_id = await queued(fake, "alice", preset="best")
        await wait_text(fake, status, r"step \d+/3000")

        rec = await fake.send_slash_command("stylebot", subcommand="status", user="bob")
        text = (await rec.wait_for_reply(timeout=10)).content
        assert "**Waiting:** 0 of at most 4" in text and "**Running:** 1" in text and "1/1 ready" in text
        assert re.search(r"Recent average:\*\* \d+ s \(last 1 jobs\)", text)

        rec = await fake.send_slash_command("stylebot", subcommand="cancel", user="bob", options={"job_id": job_id})
        assert "Only the requester" in (await rec.wait_for_reply(timeout=10)).content
        assert fake.permissions_of("mod") & Permissions.MANAGE_MESSAGES
        rec = await fake.send_slash_command("stylebot", subcommand="cancel", user="mod", options={"job_id": job_id})
        reply = await rec.wait_for_reply(timeout=10)
        assert reply.ephemeral
        await wait_text(fake, status, rf"Cancelled by <@{fake.user('mod').id}>", timeout=15)
        rec = await fake.send_slash_command("stylebot", subcommand="cancel", user="mod", options={"job_id": job_id})
        assert "not waiting or running" in (await rec.wait_for_reply(timeout=10)).content

    async def test_the_line_is_fair_with_exact_positions_and_limits(self, env_a: Env):
        fake = env_a.fake
        fake.add_user("carol")
        _, a1_status, a1 = await queued(fake, "alice", preset="best")  # keeps the worker busy
        await wait_text(fake, a1_status, r"step \d+/3000")
        jobs = {}
        # the jobs ahead of a3 take a second or so each, so a3's status shows the line moving
        for name, user, preset in (("a2", "alice", "balanced"), ("a3", "alice", "fast"), ("b1", "bob", "balanced"),
                                   ("b2", "bob", "balanced")):
            inter, status, job_id = await queued(fake, user, preset=preset, style=None, library_style="mosaic")
            jobs[name] = (inter, status, job_id)

        # round-robin: bob's first job goes before alice's second; each user's jobs in order
        expected = {"b1": 1, "a2": 2, "b2": 3, "a3": 4}
        for name, position in expected.items():
            await wait_text(fake, jobs[name][1], rf"position \*\*{position}\*\*", timeout=10)

        text = await refusal(fake, "alice", preset="fast")
        assert "You already have 2 jobs waiting" in text
        text = await refusal(fake, "carol", preset="fast")
        # (with the time the waiting jobs will take, once the bot has timed some jobs)
        assert re.search(r"The queue is full \(4 jobs waiting(, about \d+ minutes? of work)?\)", text), text

        click = await fake.click_button(a1_status, cancel_id(a1))
        await click.wait_for_reply(timeout=10)
        for name in expected:
            await result_of(jobs[name][0], timeout=60)
        order = sorted(expected, key=expected.get)
        assert started_order(env_a.bot, [jobs[n][2] for n in order]) == [jobs[n][2] for n in order]
        # positions were updated as the line moved; once everyone was in line, only forward
        a3_positions = [p for p in map(position_of, status_texts(jobs["a3"][1])) if p is not None]
        since_full = a3_positions[a3_positions.index(4):]
        assert since_full == sorted(since_full, reverse=True) and len(set(since_full)) >= 2, a3_positions

    async def test_expired_token_falls_back_to_channel_then_dm(self, env_a: Env):
        fake = env_a.fake
        alice = fake.user("alice")
        inter, status, job_id = await queued(fake, "alice", preset="balanced")
        fake.expire_token(inter)  # Discord refuses the token earlier than the bot expects
        result = await fake.wait_for_message(fake.channel, lambda m: job_id in (m.content or "") and m.attachments,
                                             timeout=60)
        assert result.kind == "channel" and f"<@{alice.id}>" in result.content
        assert [a.filename for a in result.attachments][0].startswith("stylized.")
        assert "Done" in status.content  # edited through the channel once the token was refused
        assert any(r.status == 401 for r in inter.rejected)

        inter, status, job_id = await queued(fake, "bob", preset="balanced")
        fake.expire_token(inter)
        fake.refuse_channel(fake.channel)
        try:
            dm = await fake.wait_for_message(dm_to="bob", predicate=lambda m: job_id in (m.content or ""), timeout=60)
        finally:
            fake.allow_channel(fake.channel)
        assert dm.attachments and dm.attachments[0].data
        assert not [m for m in fake.messages_in(fake.channel) if job_id in (m.content or "") and m.attachments]

    async def test_cancel_buttons_work_on_messages_the_process_never_sent(self, env_a: Env):
        # As after a restart: no view is stored for this message; the button's custom id is enough.
        fake = env_a.fake
        custom_id = cancel_id("0123456789")
        payload = {"content": "an old status message", "components": [
            {"type": 1, "components": [{"type": 2, "style": 4, "label": "Cancel", "custom_id": custom_id}]}]}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{fake.api_base}/channels/{fake.channel.id}/messages", json=payload,
                                    headers={"Authorization": f"Bot {fake.bot_token}"}) as resp:
                assert resp.status == 200
                message_id = int((await resp.json())["id"])
        click = await fake.click_button(message_id, custom_id, user="alice")
        reply = await click.wait_for_reply(timeout=10)
        assert reply.ephemeral and "`0123456789` is not waiting or running any more" in reply.content

    async def test_sigterm_exits_cleanly_and_logs_hold_no_token(self, env_a: Env):
        assert env_a.fake.privileged_intents == 0
        assert await env_a.bot.stop(signal.SIGTERM) == 0
        log_text = env_a.bot.log_text()
        assert env_a.bot.token not in log_text
        records = env_a.bot.log_records()
        assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
        assert any(r["msg"] == "stopped" for r in records)


# --------------------------------------------------------------------------- bot B: short token lifetime


@pytest_asyncio.fixture(scope="class", loop_scope="module")
async def env_b(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bot_b")
    env = await _start(tmp, FakeDiscord(token_ttl=4.0),
                       discord={"interaction_ttl_s": 4, "interaction_margin_s": 1},
                       shutdown={"running_jobs": "finish", "timeout_s": 1})
    try:
        yield env
    finally:
        await _finish(env)


class TestShortTokenLifetime:
    async def test_a_result_after_token_expiry_arrives_as_a_channel_message(self, env_b: Env):
        fake = env_b.fake
        alice = fake.user("alice")
        # balanced: 24 steps; with the worker still starting it finishes well after 4 s
        inter, status, job_id = await queued(fake, "alice", preset="balanced")
        result = await fake.wait_for_message(fake.channel, lambda m: job_id in (m.content or "") and m.attachments,
                                             timeout=RESULT_TIMEOUT)
        assert inter.expired
        assert result.kind == "channel" and f"<@{alice.id}>" in result.content and "too old" in result.content
        assert result.attachments[0].data.startswith(PNG_MAGIC) and result.embeds
        # the bot knew the token's lifetime: it never tried the expired token
        assert not inter.rejected
        edits = fake.requests_to(rf"^/channels/{fake.channel.id}/messages/{status.id}$", "PATCH")
        assert edits and "Done" in status.content

    async def test_sigterm_pauses_jobs_and_the_next_start_runs_them(self, env_b: Env):
        fake = env_b.fake
        # this bot shares nothing with bot A, but it did sync its guild commands at start
        assert fake.command_sync_count(fake.guild) == 1
        _, a_status, a_job = await queued(fake, "alice", preset="best")
        await wait_text(fake, a_status, r"step \d+/3000", timeout=60)
        b_inter, b_status, b_job = await queued(fake, "bob", preset="fast")
        await wait_text(fake, b_status, r"position \*\*1\*\*")

        env_b.bot.proc.send_signal(signal.SIGTERM)
        # Nobody is told their job failed: both are paused, and their status messages say so.
        await wait_text(fake, b_status, "restarting. This job keeps its place", timeout=20)
        await wait_text(fake, a_status, "restarting, so this job was stopped. It starts again", timeout=20)
        assert cancel_id(b_job) not in str(b_status.components)  # the bot that would answer is gone
        assert await env_b.bot.stop(timeout=30) == 0
        # running_jobs = "finish" with timeout_s = 1: it waited, then stopped the long job
        assert any(r["msg"].startswith("running jobs did not finish in time") for r in env_b.bot.log_records())
        assert env_b.bot.token not in env_b.bot.log_text()
        assert b_job not in started_order(env_b.bot, [b_job])
        bob, alice = fake.user("bob"), fake.user("alice")
        assert not [m for m in fake.messages_in(fake.channel) if "did not finish" in (m.content or "")]

        # The next start puts both back in line, the stopped job first, and tells their requesters.
        sessions = len(fake.sessions)
        env_b.bot = start_bot(fake, env_b.config, env_b.workdir)
        await fake.wait_for(lambda: len(fake.sessions) > sessions and fake.session.ready.is_set(), timeout=60,
                            what="the restarted bot's gateway session")
        news = {}
        for job_id, user in ((a_job, alice), (b_job, bob)):
            news[job_id] = await fake.wait_for_message(
                fake.channel, lambda m, j=job_id: f"**Job `{j}`**" in (m.content or "")
                and "put back in line" in (m.content or ""), timeout=30)
            assert f"<@{user.id}>" in news[job_id].content
        await env_b.bot.wait_log("job started", timeout=60)
        assert started_order(env_b.bot, [a_job, b_job])[:1] == [a_job]
        # alice no longer wants hers: the Cancel button on the new status message works
        click = await fake.click_button(news[a_job], cancel_id(a_job), user="alice")
        assert (await click.wait_for_reply(timeout=10)).ephemeral
        await wait_text(fake, news[a_job], "Cancelled", timeout=20)
        result = await fake.wait_for_message(fake.channel, lambda m: b_job in (m.content or "") and m.attachments,
                                             timeout=RESULT_TIMEOUT)
        assert f"<@{bob.id}>" in result.content and result.attachments[0].data.startswith(PNG_MAGIC)
