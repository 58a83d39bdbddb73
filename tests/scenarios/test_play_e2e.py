"""Playing with results, end to end: the real bot (``python -m bot``) against the fake Discord.

The buttons under a result (each one, by another member, twice quickly, after the pictures
expired, after a restart), the lineage of a remix of a remix, the built-in library's
autocomplete and contact sheet, a built-in style on its own, two styles blended, "before |
after", and both message commands with the saved style. One bot, tiny presets, random weights.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot_fixtures import CONTENT_PNG, STYLE_PNG, BotProcess, shut_down, start_bot, write_config

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, InteractionRecord, MessageRecord
except ImportError:  # plain `pytest`
    from fake_discord import FakeDiscord, InteractionRecord, MessageRecord

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

RESULT_TIMEOUT = 150.0  # the first result includes the worker's start (TensorFlow, VGG19)
DECODE_PROBE = """
import os
from PIL import ImageFile

_load = ImageFile.ImageFile.load


def load(self):
    if self.tile:  # pixels still to decode (a loaded image has none)
        with open(os.environ["DECODE_PROBE_LOG"], "a") as log:
            log.write(f"{os.getpid()} {self.format} {self.size[0]}x{self.size[1]}\\n")
    return _load(self)


ImageFile.ImageFile.load = load
"""
_names = itertools.count()
REMIXES = ("again", "more", "less", "colours", "sharper")


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fake = FakeDiscord(token_ttl=900)
        for name in ("carol", "dave", "erin"):
            self.fake.add_user(name)
        # No [styles] path: the built-in library alone, as on a fresh install. Its paintings are
        # up to 1024 px, so the pixel limit is the size of a real one (uploads stay tiny).
        self.config = write_config(tmp, limits={"max_pixels": 1_000_000, "per_user_waiting": 5, "queue_max": 8})
        self.bot: BotProcess | None = None
        # Every picture Pillow decodes, in the bot and in its workers, is written down here.
        self.decodes = tmp / "decodes.log"
        probe = tmp / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(DECODE_PROBE)

    async def start(self) -> None:
        self.bot = start_bot(self.fake, self.config, self.tmp,
                             extra_env={"PYTHONPATH": str(self.tmp / "probe"), "DECODE_PROBE_LOG": str(self.decodes)})
        await self.fake.wait_ready(timeout=60)
        await self.fake.wait_for_commands(guild=self.fake.guild, names=["stylize", "stylebot"], timeout=30)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.tmp / "data" / "jobs.sqlite3")

    def record(self, job_id: str) -> dict:
        with self.db() as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("play"))
    await env.fake.start()
    try:
        await env.start()
        yield env
    finally:
        await shut_down(env.bot, env.fake)


# --------------------------------------------------------------------------- helpers


def attachment(fake: FakeDiscord, data: bytes, name: str = "pic.png") -> dict:
    return fake.add_attachment(f"{next(_names)}/{name}", data, "image/png")


async def stylize(fake: FakeDiscord, user: str, *, style: bytes | None = STYLE_PNG, **options) -> InteractionRecord:
    opts = {"content": attachment(fake, CONTENT_PNG, "content.png"), **options}
    if style is not None:
        opts["style"] = attachment(fake, style, "style.png")
    return await fake.send_slash_command("stylize", user=user, options=opts)


def job_id_in(text: str) -> str:
    return re.search(r"[Jj]ob `([0-9a-f]+)`", text).group(1)


async def result_of(inter: InteractionRecord, timeout: float = RESULT_TIMEOUT) -> MessageRecord:
    return await inter.wait_until(
        lambda r: next((m for m in r.followups if "is ready" in (m.content or "")), None), timeout=timeout)


def fields(result: MessageRecord) -> dict[str, str]:
    return {f["name"]: f["value"] for f in result.embeds[0]["fields"]}


async def press(fake: FakeDiscord, result: MessageRecord, action: str, user: str) -> InteractionRecord:
    job_id = job_id_in(result.content)
    return await fake.click_button(result, f"nstbot:{action}:{job_id}", user=user)


async def remix_result(env: Env, result: MessageRecord, action: str, user: str) -> tuple[MessageRecord, str]:
    """Press a remix button; returns the new job's result and id, after checking its status
    message replied to the result it came from."""
    click = await press(env.fake, result, action, user)
    ack = await click.wait_for_reply(timeout=30)
    assert ack.ephemeral and "accepted" in ack.content, ack.content
    new_id = job_id_in(ack.content)
    status = await env.fake.wait_for_message(
        env.fake.channel, lambda m: m.reference_id == result.id and new_id in (m.content or ""), timeout=30)
    assert "of job" in status.content and job_id_in(result.content) in status.content
    new_result = await result_of(click)
    await env.fake.wait_for(lambda: "Done" in (status.content or ""), timeout=30, what="the reply's last edit")
    return new_result, new_id


# --------------------------------------------------------------------------- the library


async def test_the_built_in_library_autocompletes_with_title_artist_and_year(env: Env):
    rec = await env.fake.send_autocomplete("stylize", focused="library_style", value="gogh")
    await rec.wait_until(lambda r: r.autocomplete_choices is not None, timeout=10)
    assert rec.autocomplete_choices == [{"name": "The Starry Night, Vincent van Gogh (1889)", "value": "starry-night"}]
    rec = await env.fake.send_autocomplete("stylize", focused="library_style2", value="")
    await rec.wait_until(lambda r: r.autocomplete_choices is not None, timeout=10)
    # a fresh install offers the six built-in paintings
    assert [c["value"] for c in rec.autocomplete_choices] == ["starry-night", "great-wave", "composition-vii",
                                                            "the-scream", "shipwreck-of-the-minotaur",
                                                            "woman-with-a-hat"]


async def test_the_contact_sheet_shows_every_style_numbered(env: Env):
    rec = await env.fake.send_slash_command("stylebot", subcommand="styles", user="alice")
    reply = await rec.wait_until(lambda r: next((m for m in r.all_messages if m.attachments), None), timeout=30)
    assert not reply.ephemeral and "1. `starry-night` The Starry Night, Vincent van Gogh (1889)" in reply.content
    sheet = Image.open(io.BytesIO(reply.attachments[0].data))
    assert sheet.format == "PNG" and sheet.width >= 3 * 150  # thumbnails side by side


# --------------------------------------------------------------------------- a result and its buttons


async def test_a_library_style_alone_works_and_every_button_is_under_the_result(env: Env):
    inter = await stylize(env.fake, "alice", style=None, library_style="great-wave", seed=5)
    result = await result_of(inter)
    job_id = job_id_in(result.content)
    assert fields(result)["Preset"] == "fast (strength 1)"
    assert result.custom_ids() == [f"nstbot:{a}:{job_id}" for a in (*REMIXES, "compare", "delete")]
    env.first_result = result  # the next tests play with it


async def test_another_member_remixes_again_and_gets_a_new_seed_as_their_own_job(env: Env):
    parent = env.first_result
    child, child_id = await remix_result(env, parent, "again", "bob")
    assert f"<@{env.fake.user('bob').id}>" in child.content  # bob's job, bob is told
    assert fields(child)["Seed"] != "5" and fields(child)["Preset"] == "fast (strength 1)"
    record = env.record(child_id)
    assert (record["parent_id"], record["remix"], record["user_id"]) == (
        job_id_in(parent.content), "again", env.fake.user("bob").id)

    # a remix of a remix keeps its lineage
    grandchild, grandchild_id = await remix_result(env, child, "more", "alice")
    assert env.record(grandchild_id)["parent_id"] == child_id and env.record(child_id)["parent_id"] == job_id_in(
        parent.content)
    assert fields(grandchild)["Preset"] == "fast (strength 1.5)" and fields(grandchild)["Seed"] == fields(child)["Seed"]


async def test_less_style_colours_and_sharper_change_one_thing_each(env: Env):
    parent = env.first_result
    less, _ = await remix_result(env, parent, "less", "alice")
    assert fields(less)["Preset"] == "fast (strength 0.6667)"
    colours, _ = await remix_result(env, parent, "colours", "alice")
    assert fields(colours)["Preset"] == "fast (strength 1, colours preserved)"
    sharper, sharper_id = await remix_result(env, parent, "sharper", "alice")
    assert fields(sharper)["Preset"].startswith("balanced") and fields(sharper)["Seed"] == "5"
    # best is the top: its result has no Sharper button (balanced's still has one)
    assert f"nstbot:sharper:{sharper_id}" in sharper.custom_ids()


async def test_pressing_twice_quickly_makes_one_job(env: Env):
    parent = env.first_result
    before = len(env.fake.messages_in(env.fake.channel))
    first, second = await asyncio.gather(press(env.fake, parent, "again", "carol"),
                                         press(env.fake, parent, "again", "carol"))
    replies = [await first.wait_for_reply(timeout=30), await second.wait_for_reply(timeout=30)]
    texts = sorted(r.content for r in replies)
    assert sum("accepted" in t for t in texts) == 1 and sum("You just pressed that" in t for t in texts) == 1, texts
    made = next(c for c in (first, second) if any("accepted" in (m.content or "") for m in c.all_messages))
    await result_of(made)
    statuses = [m for m in env.fake.messages_in(env.fake.channel)[before:] if m.reference_id == parent.id]
    assert len(statuses) == 1


async def test_before_after_on_request_and_by_button(env: Env):
    inter = await stylize(env.fake, "alice", compare=True)
    result = await result_of(inter)
    names = [a.filename for a in result.attachments]
    assert names[0].startswith("stylized.") and names[-1].startswith("before-after.")
    pair = Image.open(io.BytesIO(result.attachments[-1].data))
    assert pair.width > 2 * pair.height * 0.9  # side by side (48×32 content next to the result)
    assert "nstbot:compare:" not in " ".join(result.custom_ids())  # already there: no button

    # by button: the original picture was alice's alone, so only she (or a moderator) sees it
    click = await press(env.fake, env.first_result, "compare", "bob")
    reply = await click.wait_for_reply(timeout=30)
    assert reply.ephemeral and "only the member who supplied it" in reply.content and not reply.attachments
    click = await press(env.fake, env.first_result, "compare", "alice")
    reply = await click.wait_until(lambda r: next((m for m in r.all_messages if m.attachments), None), timeout=30)
    assert reply.ephemeral and reply.attachments[0].filename.startswith("before-after.")


async def test_two_styles_blend_and_the_embed_names_both(env: Env):
    inter = await stylize(env.fake, "bob", library_style2="starry-night", blend=0.3)
    result = await result_of(inter)
    assert fields(result)["Styles"] == "style.png 70% + The Starry Night 30%"
    inter = await stylize(env.fake, "bob", blend=0.3)  # a share of nothing
    reply = await inter.wait_for_reply(timeout=20)
    assert reply.ephemeral and "`blend` mixes in a second style" in reply.content


async def test_expired_pictures_answer_privately(env: Env):
    parent = env.first_result
    with env.db() as db:  # as if reuse_hours had passed
        db.execute("UPDATE jobs SET kept_until = 1 WHERE job_id = ?", (job_id_in(parent.content),))
    click = await press(env.fake, parent, "again", "dave")
    reply = await click.wait_for_reply(timeout=20)
    assert reply.ephemeral and "have expired" in reply.content
    assert not [m for m in env.fake.messages_in(env.fake.channel) if m.reference_id == parent.id
                and "dave" in (m.content or "")]


async def test_a_result_older_than_the_records_says_so(env: Env):
    parent = env.first_result
    with env.db() as db:  # as if retention_hours had passed and the record was purged
        db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id_in(parent.content),))
    click = await press(env.fake, parent, "more", "dave")
    reply = await click.wait_for_reply(timeout=20)
    assert reply.ephemeral and "older than the bot keeps records" in reply.content


async def test_delete_is_for_the_requester_or_a_moderator(env: Env):
    inter = await stylize(env.fake, "alice")
    result = await result_of(inter)
    click = await press(env.fake, result, "delete", "bob")
    reply = await click.wait_for_reply(timeout=20)
    assert reply.ephemeral and "Only the member who asked" in reply.content
    assert not env.fake.messages[result.id].deleted
    click = await press(env.fake, result, "delete", "alice")
    reply = await click.wait_for_reply(timeout=20)
    assert "Deleted" in reply.content and env.fake.messages[result.id].deleted
    with env.db() as db:
        assert db.execute("SELECT kept_until FROM jobs WHERE job_id = ?",
                          (job_id_in(result.content),)).fetchone()[0] is None


# --------------------------------------------------------------------------- one member, one server's pictures


def camera_jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=70)
    return buf.getvalue()


async def test_three_stylize_sent_within_a_second_are_all_accepted_and_delivered(env: Env):
    inters = await asyncio.gather(*(stylize(env.fake, "erin", seed=n) for n in range(3)))
    for inter in inters:  # each waited its turn to be checked; none was refused
        ack = await inter.wait_until(lambda r: next((m for m in r.all_messages if m.ephemeral and m.content), None),
                                     timeout=30)
        assert "accepted" in ack.content, ack.content
    for inter in inters:
        await result_of(inter)


async def test_a_strangers_picture_is_decoded_once_from_the_command_to_before_after(env: Env):
    photo = camera_jpeg(240, 150)
    inter = await env.fake.send_slash_command("stylize", user="alice", options={
        "content": env.fake.add_attachment(f"{next(_names)}/photo.jpg", photo, "image/jpeg"),
        "style": attachment(env.fake, STYLE_PNG, "style.png"), "compare": True})
    result = await result_of(inter)
    assert result.attachments[-1].filename.startswith("before-after.")
    again, _ = await remix_result(env, result, "again", "alice")  # a remix, with before | after again
    assert again.attachments[-1].filename.startswith("before-after.")
    decodes = env.decodes.read_text().splitlines()
    photo_decodes = [line for line in decodes if line.endswith("JPEG 240x150")]
    assert len(photo_decodes) == 1, decodes  # at check time, in the bot; all else read the bot's own PNG
    assert photo_decodes[0].split()[0] == str(env.bot.proc.pid)
    assert sum(line.endswith("PNG 48x30") for line in decodes) >= 4  # workers and deliveries


async def test_only_the_owner_takes_a_picture_back_towards_the_original(env: Env):
    inter = await stylize(env.fake, "alice", compare=True, strength=2.0)
    result = await result_of(inter)
    for action in ("less", "colours"):  # both take it back towards alice's photo
        click = await press(env.fake, result, action, "bob")
        reply = await click.wait_for_reply(timeout=30)
        assert reply.ephemeral and "only the member who supplied it" in reply.content, reply.content
    more, more_id = await remix_result(env, result, "more", "bob")  # more style is anyone's
    assert not any(a.filename.startswith("before-after") for a in more.attachments)  # never inherited
    assert env.record(more_id)["compare"] == 0
    less, _ = await remix_result(env, more, "less", "carol")  # back to what alice posted, not below
    assert fields(less)["Preset"] == "fast (strength 2)"
    mine, _ = await remix_result(env, result, "less", "alice")
    assert fields(mine)["Preset"] == "fast (strength 1.3333)"


async def test_deleting_a_result_cancels_the_remixes_still_in_line(env: Env):
    inter = await stylize(env.fake, "alice")
    result = await result_of(inter)
    busy = await stylize(env.fake, "carol", preset="best")  # keeps the worker busy
    busy_status = await busy.wait_until(lambda r: next((m for m in r.followups if not m.ephemeral), None), timeout=30)
    click = await press(env.fake, result, "again", "bob")
    ack = await click.wait_for_reply(timeout=30)
    child_id = job_id_in(ack.content)
    assert env.record(child_id)["state"] == "waiting"
    click = await press(env.fake, result, "delete", "alice")
    reply = await click.wait_until(lambda r: next((m for m in r.all_messages if "Deleted" in (m.content or "")),
                                                  None), timeout=30)
    # The store records the state first and then removes the folder (a crash between the two
    # leaves files that the next open sweeps, never a waiting job without its pictures).
    await env.fake.wait_for(lambda: env.record(child_id)["state"] == "cancelled"
                            and not (env.tmp / "data" / "spool" / child_id).exists(),
                            timeout=30, what="bob's remix gone, alice's picture with it")
    cancel = await env.fake.click_button(busy_status, f"nstbot:cancel:{job_id_in(busy_status.content)}", user="carol")
    await cancel.wait_for_reply(timeout=30)


# --------------------------------------------------------------------------- message commands


async def test_stylize_this_image_from_a_members_message(env: Env):
    fake = env.fake
    message = await fake.post_user_message(fake.channel, user="bob", content="look",
                                           attachments=[attachment(fake, CONTENT_PNG, "cat.png")])
    inter = await fake.send_message_command("Stylize this image", message, user="carol")
    picker = await inter.wait_for_reply(timeout=20)
    assert picker.ephemeral and picker.custom_ids() == ["nstbot:pick-style"]
    choice = await fake.select(picker, "nstbot:pick-style", values=["composition-vii"], user="carol")
    result = await result_of(choice)
    assert f"<@{fake.user('carol').id}>" in result.content and "Composition VII" in result.embeds[0]["footer"]["text"]

    empty = await fake.post_user_message(fake.channel, user="bob", content="no picture here")
    inter = await fake.send_message_command("Stylize this image", empty, user="carol")
    reply = await inter.wait_for_reply(timeout=20)
    assert reply.ephemeral and "has no picture" in reply.content


async def test_use_as_my_style_then_stylize_without_a_style(env: Env):
    fake = env.fake
    message = await fake.post_user_message(fake.channel, user="bob",
                                           attachments=[attachment(fake, STYLE_PNG, "swirls.png")])
    inter = await fake.send_message_command("Use as my style", message, user="dave")
    reply = await inter.wait_until(lambda r: next((m for m in r.all_messages if "Saved" in (m.content or "")), None),
                                   timeout=20)
    assert reply.ephemeral and "swirls.png" in reply.content
    inter = await stylize(fake, "dave", style=None)
    ack = await inter.wait_until(lambda r: next((m for m in r.all_messages if "accepted" in (m.content or "")),
                                                None), timeout=20)
    assert "Using your saved style `swirls.png`" in ack.content
    result = await result_of(inter)
    assert "swirls.png" in result.embeds[0]["footer"]["text"]
    # a picture embedded in a message (a link preview) works too, through Discord's copy of it
    image = attachment(fake, STYLE_PNG, "linked.png")
    message = await fake.post_user_message(fake.channel, user="bob", embeds=[{"type": "image", "image": {
        "url": image["url"]}}])
    inter = await fake.send_message_command("Use as my style", message, user="erin")
    reply = await inter.wait_until(lambda r: next((m for m in r.all_messages if "Saved" in (m.content or "")), None),
                                   timeout=20)
    assert "linked.png" in reply.content
    # only dave's and erin's: mod has none, and is told how to get one
    inter = await stylize(fake, "mod", style=None)
    reply = await inter.wait_for_reply(timeout=20)
    assert reply.ephemeral and "Use as my style" in reply.content


# --------------------------------------------------------------------------- after a restart


async def test_buttons_keep_working_after_a_restart(env: Env):
    inter = await stylize(env.fake, "alice")
    result = await result_of(inter)
    assert await env.bot.stop() == 0
    await env.start()
    child, child_id = await remix_result(env, result, "again", "bob")
    assert env.record(child_id)["parent_id"] == job_id_in(result.content)
