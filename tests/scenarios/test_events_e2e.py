"""Style events end to end: the real bot (``python -m bot``) against the fake Discord.

A host with Manage Events starts an event with a painting from the library; four members
enter (three through the Join button's modal with a file upload, one through the message
command "Enter in event"); they vote (one for their own entry, refused; one taken back; one
beyond the three a member has); the bot restarts while the event is open; it closes at its
time with a gallery whose votes match. Meanwhile a second server's ``/stylize`` is served
while entries wait. Then: an event without the Manage Events permission for the bot, an
entry deleted, the host's cancel with entries in line, and a close that fell due while the
bot was down. One CPU worker, random weights, tiny presets ("best" is a few seconds here, so
that entries wait).
"""

from __future__ import annotations

import io
import itertools
import re
import sqlite3
import time
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from bot_fixtures import CONTENT_PNG, STYLE_PNG, BotProcess, kill9, reap, shut_down, start_bot, wait_gone, \
    write_config

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import Channel, FakeDiscord, Guild, InteractionRecord, MessageRecord, Permissions
except ImportError:  # plain `pytest`
    from fake_discord import Channel, FakeDiscord, Guild, InteractionRecord, MessageRecord, Permissions

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

RESULT_TIMEOUT = 150.0  # the first result includes the worker's start (TensorFlow, VGG19)
PRESETS = {"fast": {"size": 32, "steps": 6, "scales": 1}, "balanced": {"size": 48, "steps": 24, "scales": 2},
           "best": {"size": 48, "steps": 120, "scales": 1}}  # an entry takes a few seconds: entries wait
ENTRANTS = ("alice", "bob", "carol", "dave")
_names = itertools.count()


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fake = FakeDiscord(token_ttl=900)
        fake = self.fake
        fake.add_user("host", permissions=Permissions.MANAGE_EVENTS)
        for name in ("carol", "dave"):
            fake.add_user(name)
        self.art = fake.add_channel("art")
        eve = fake.add_user("eve", join=False)
        self.b: Guild = fake.add_guild("Other Server", owner=eve)
        self.b_general: Channel = fake.add_channel("b-general", guild=self.b)
        fake.add_user("zed", guild=self.b)
        # The library's paintings are up to 1024 px: the pixel limit is a real one's (uploads stay tiny).
        self.config = write_config(tmp, presets=PRESETS, limits={
            "max_pixels": 1_100_000, "per_user_waiting": 2, "per_guild_waiting": 5, "queue_max": 10})
        self.bot: BotProcess | None = None

    async def start(self) -> None:
        sessions = len(self.fake.sessions)
        self.bot = start_bot(self.fake, self.config, self.tmp,
                             {"NSTBOT_DISCORD__DEV_GUILD_IDS": f"{self.fake.guild.id},{self.b.id}"})
        await self.fake.wait_for(lambda: len(self.fake.sessions) > sessions and self.fake.session.connected
                                 and self.fake.session.ready.is_set(), timeout=60, what="a gateway session")
        for guild in (self.fake.guild, self.b):
            await self.fake.wait_for_commands(guild=guild, names=["stylize", "stylebot", "Enter in event"],
                                              timeout=30)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.tmp / "data" / "jobs.sqlite3")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("events"))
    await env.fake.start()
    try:
        await env.start()
        yield env
    finally:
        await shut_down(env.bot, env.fake)


# --------------------------------------------------------------------------- helpers


def picture(fake: FakeDiscord, data: bytes = CONTENT_PNG, name: str = "photo.png") -> dict:
    return fake.add_attachment(f"{next(_names)}/{name}", data, "image/png")


async def start_event(fake: FakeDiscord, channel: Channel, **options) -> tuple[InteractionRecord, MessageRecord, str]:
    """``/stylebot event start`` by the host; returns the interaction, the card and the event id."""
    inter = await fake.send_slash_command("stylebot", subcommand="event start", user="host", channel=channel,
                                          options=options)
    reply = await inter.wait_for_reply(timeout=30)
    assert reply.ephemeral and "is open until" in reply.content, reply.content
    card = await fake.wait_for_message(channel, lambda m: any(c.startswith("nstbot:event-join:")
                                                              for c in m.custom_ids()), timeout=10)
    event_id = next(c for c in card.custom_ids() if c.startswith("nstbot:event-join:")).rsplit(":", 1)[1]
    return inter, card, event_id


async def join(fake: FakeDiscord, card: MessageRecord, event_id: str, user: str) -> InteractionRecord:
    """Join: the modal with a file upload, submitted with a picture."""
    click = await fake.click_button(card, f"nstbot:event-join:{event_id}", user=user)
    await click.wait_until(lambda r: r.modal is not None, timeout=10)
    upload = click.modal["components"][0]
    assert upload["type"] == 18 and upload["component"]["type"] == 19  # a label around a file upload
    return await fake.submit_modal(click, {upload["component"]["custom_id"]: [picture(fake)]}, user=user)


async def accepted(inter: InteractionRecord) -> str:
    """The job id of the private "accepted" answer (a refusal fails the test with its text)."""
    reply = await inter.wait_until(lambda r: next((m for m in r.all_messages if m.ephemeral and not m.loading), None),
                                   timeout=30)
    assert "accepted" in reply.content, reply.content
    return re.search(r"Job `([0-9a-f]+)`", reply.content).group(1)


async def private_answer(inter: InteractionRecord) -> str:
    reply = await inter.wait_for_reply(timeout=30)
    assert reply.ephemeral, reply.content
    return reply.content


def entry_results(fake: FakeDiscord, thread_id: int) -> dict[str, MessageRecord]:
    """The entries posted in the thread, by job id."""
    out = {}
    for m in fake.messages_in(thread_id, author=fake.bot_user):
        vote = next((c for c in m.custom_ids() if c.startswith("nstbot:vote:")), None)
        if vote and m.attachments:
            out[vote.rsplit(":", 1)[1]] = m
    return out


async def vote(fake: FakeDiscord, entry: MessageRecord, job_id: str, user: str) -> str:
    return await private_answer(await fake.click_button(entry, f"nstbot:vote:{job_id}", user=user))


def thread_of(fake: FakeDiscord, card: MessageRecord) -> Channel:
    thread = fake.channels.get(card.id)  # Discord gives a message's thread the message's id
    assert thread is not None and thread.type == 11 and thread.parent_id == card.channel_id
    return thread


def field_values(message: MessageRecord) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}


# --------------------------------------------------------------------------- the whole event


async def test_a_server_paints_votes_survives_a_restart_and_gets_a_gallery(env: Env):
    fake = env.fake
    fake.bot_permissions = Permissions.DEFAULT_BOT | Permissions.MANAGE_EVENTS
    users = {name: fake.user(name).id for name in (*ENTRANTS, "host")}

    # Only members with Manage Events may start one (checked when run).
    refused = await fake.send_slash_command("stylebot", subcommand="event start", user="alice",
                                            options={"title": "Mine", "duration": "1h", "library_style": "the-scream"})
    assert "Manage Events" in await private_answer(refused)

    start, card, event_id = await start_event(fake, fake.channel, title="Harbour at night", duration="10m",
                                              library_style="the-scream", preset="best")
    started_at = time.time()
    embed = card.embeds[0]
    assert "Harbour at night" in embed["title"] and "The Scream" in embed["description"]
    closes = field_values(card)["Closes"]
    assert re.fullmatch(r"<t:\d+:R> \(<t:\d+:f>\)", closes), closes
    assert abs(int(re.search(r"<t:(\d+)", closes).group(1)) - (started_at + 600)) < 30
    assert field_values(card)["Host"] == f"<@{users['host']}>" and field_values(card)["Entries"] == "0"
    assert embed["thumbnail"]["url"].startswith("attachment://") and card.attachments
    assert set(card.custom_ids()) == {f"nstbot:event-{a}:{event_id}" for a in ("join", "close", "cancel")}
    thread = thread_of(fake, card)
    [scheduled] = fake.guild.scheduled_events.values()  # the bot may manage events here: one was made
    assert scheduled["name"] == "Harbour at night" and scheduled["entity_type"] == 3
    assert "Manage Events" not in (await start.wait_for_reply()).content

    # Four members enter: three with Join (a modal with a file upload), one with the message command.
    entries: dict[str, InteractionRecord] = {}
    for name in ("alice", "bob", "carol"):
        entries[name] = await join(fake, card, event_id, name)
    post = await fake.post_user_message(fake.channel, user="dave", attachments=[picture(fake, name="dave.png")])
    entries["dave"] = await fake.send_message_command("Enter in event", post, user="dave")
    # Meanwhile, in another server, an ordinary /stylize.
    b_job = await fake.send_slash_command("stylize", user="zed", guild=env.b, channel=env.b_general, options={
        "content": picture(fake), "style": picture(fake, STYLE_PNG, "style.png"), "preset": "fast"})
    job_of = {name: await accepted(inter) for name, inter in entries.items()}
    b_job_id = await accepted(b_job)
    # The other server sees nothing of this server's event.
    b_post = await fake.post_user_message(env.b_general, user="zed", attachments=[picture(fake)])
    elsewhere = await fake.send_message_command("Enter in event", b_post, user="zed", guild=env.b,
                                                channel=env.b_general)
    assert "no open event in this channel" in await private_answer(elsewhere)
    assert all(f"<#{thread.id}>" in inter.original.content for inter in entries.values())
    # One entry per member (the default): a second Join is refused at once, privately.
    again = await fake.click_button(card, f"nstbot:event-join:{event_id}", user="alice")
    assert "one entry per member" in await private_answer(again) and again.modal is None

    # The entries' status messages and pictures go to the thread, each picture with Vote and Delete.
    await fake.wait_for(lambda: len(entry_results(fake, thread.id)) == 4, timeout=RESULT_TIMEOUT,
                        what="four entries in the thread")
    posted = entry_results(fake, thread.id)
    assert set(posted) == set(job_of.values())
    for name, job_id in job_of.items():
        assert posted[job_id].content.startswith(f"<@{users[name]}>") and "too old" not in posted[job_id].content
        assert set(posted[job_id].custom_ids()) == {f"nstbot:vote:{job_id}", f"nstbot:delete:{job_id}"}
    assert not [m for m in fake.messages_in(fake.channel) if m.attachments and "is ready" in (m.content or "")]
    # The other server was served while entries waited: its job started before the last entry did.
    with env.db() as db:
        started = dict(db.execute("SELECT job_id, started_at FROM jobs").fetchall())
    assert started[b_job_id] < max(started[j] for j in job_of.values())
    await fake.wait_for(lambda: field_values(fake.messages[card.id])["Entries"] == "4", timeout=20,
                        what="the card's count of entries")

    # Votes: never your own; a second press takes it back; three per member; answers are private.
    entry = {name: (posted[job_of[name]], job_of[name]) for name in ENTRANTS}
    assert "your own entry" in await vote(fake, *entry["alice"], "alice")
    assert "Vote counted" in await vote(fake, *entry["alice"], "bob")
    assert "Vote counted" in await vote(fake, *entry["alice"], "carol")
    assert "Vote counted" in await vote(fake, *entry["bob"], "alice")
    assert "2 of 3 votes left" in await vote(fake, *entry["carol"], "host")
    assert "taken back" in await vote(fake, *entry["carol"], "host")
    for name in ("bob", "dave", "alice"):
        assert "Vote counted" in await vote(fake, *entry[name], "host")
    assert "used your 3 votes" in await vote(fake, *entry["carol"], "host")
    texts = [m.content for m in fake.messages.values() if m.ephemeral and "vote" in (m.content or "").lower()]
    assert all("hidden until the close" in t for t in texts if "counted" in t or "taken back" in t)

    # A restart while the event is open; its time comes soon after the bot is back.
    await env.bot.stop()
    with env.db() as db:
        db.execute("UPDATE events SET closes_at = ? WHERE event_id = ?", (time.time() + 25, event_id))
    await env.start()
    assert "Vote counted" in await vote(fake, *entry["dave"], "carol")  # the buttons work after the restart
    expected = {"alice": 3, "bob": 2, "dave": 2, "carol": 0}  # alice: bob, carol, host; bob: alice, host...

    gallery = await fake.wait_for_message(fake.channel, lambda m: bool(m.attachments) and "has closed" in m.content,
                                          timeout=60)
    with env.db() as db:
        closes_at = db.execute("SELECT closes_at FROM events WHERE event_id = ?", (event_id,)).fetchone()[0]
        stored = dict(db.execute("SELECT job_id, COUNT(*) FROM event_votes GROUP BY job_id").fetchall())
    assert time.time() >= closes_at - 1  # at its time, not before
    assert {name: stored.get(job_of[name], 0) for name in ENTRANTS} == expected
    lines = [l for l in gallery.content.splitlines() if re.match(r"\d+\. <@", l)]
    assert lines == [f"1. <@{users['alice']}> · 3 votes", f"2. <@{users['bob']}> · 2 votes",
                     f"2. <@{users['dave']}> · 2 votes", f"4. <@{users['carol']}> · 0 votes"], gallery.content
    assert gallery.reference_id == card.id  # under the card
    sheet = Image.open(io.BytesIO(gallery.attachments[0].data))
    assert sheet.width >= 4 * 160 and len(gallery.attachments[0].data) < 8 << 20
    final = await fake.wait_for(lambda: "Winners" in field_values(fake.messages[card.id]) and fake.messages[card.id],
                                timeout=10, what="the card's final look")
    assert final.custom_ids() == [] and f"🥇 <@{users['alice']}> · 3 votes" in field_values(final)["Winners"]
    assert str(gallery.id) in field_values(final)["Gallery"]
    assert fake.guild.scheduled_events  # it ended at its own time: Discord closes it, the bot leaves it

    # A moderator of the channel deletes an entry after the close: it leaves the gallery and the standings.
    shown = gallery.attachments[0].data
    gone = await fake.click_button(entry["dave"][0], f"nstbot:delete:{job_of['dave']}", user="mod")
    assert "Deleted" in await private_answer(gone) and fake.messages[entry["dave"][0].id].deleted
    redrawn = await fake.wait_for(lambda: f"<@{users['dave']}>" not in fake.messages[gallery.id].content
                                  and fake.messages[gallery.id], timeout=20, what="the gallery drawn again")
    assert "with 3 entries" in redrawn.content and redrawn.attachments[0].data != shown
    assert f"3. <@{users['carol']}> · 0 votes" in redrawn.content

    # After the close: no more votes, no more entries (told when it closed).
    assert "closed at <t:" in await vote(fake, *entry["bob"], "carol")
    late = await fake.send_message_command("Enter in event", post, user="dave")
    assert f"closed at <t:{int(closes_at)}:f>" in await private_answer(late)


async def test_without_manage_events_it_says_so_and_a_host_can_cancel(env: Env):
    fake = env.fake
    fake.bot_permissions = Permissions.DEFAULT_BOT  # no Manage Events for the bot
    before = len(fake.guild.scheduled_events)
    start, card, event_id = await start_event(fake, env.art, title="Quick one", duration="2h",
                                              style=picture(fake, STYLE_PNG, "my-style.png"), preset="best")
    assert "Manage Events" in start.original.content and len(fake.guild.scheduled_events) == before
    thread = thread_of(fake, card)
    assert "my-style.png" in card.embeds[0]["description"]

    # An entry deleted by its author leaves the event.
    alice = await accepted(await join(fake, card, event_id, "alice"))
    await fake.wait_for(lambda: alice in entry_results(fake, thread.id), timeout=RESULT_TIMEOUT, what="the entry")
    deleted = await fake.click_button(entry_results(fake, thread.id)[alice], f"nstbot:delete:{alice}", user="alice")
    assert "Deleted" in await private_answer(deleted)
    with env.db() as db:
        assert db.execute("SELECT removed FROM event_entries WHERE job_id = ?", (alice,)).fetchone()[0] == 1
    # ...and so the author may enter again; then two more entries, which wait in line.
    second = [await join(fake, card, event_id, name) for name in ("alice", "bob", "carol")]
    ids = [await accepted(inter) for inter in second]

    # Only the host (or Manage Events) may cancel; the host's cancel stops the entries in line and tells them.
    nope = await fake.click_button(card, f"nstbot:event-cancel:{event_id}", user="bob")
    assert "Only the host" in await private_answer(nope)
    cancel = await fake.click_button(card, f"nstbot:event-cancel:{event_id}", user="host")
    assert "Cancelled" in await private_answer(cancel)
    told = await fake.wait_for_message(thread, lambda m: "cancelled the event" in m.content, timeout=30)
    with env.db() as db:
        states = dict(db.execute(f"SELECT job_id, state FROM jobs WHERE job_id IN ({','.join('?' * 3)})", ids))
    cancelled = [j for j in ids if states[j] == "cancelled"]
    assert cancelled, states  # at least the last ones were still waiting
    for job_id, inter in zip(ids, second):
        mentioned = f"<@{inter.user.id}>" in told.content
        assert mentioned == (job_id in cancelled)
    # The card says so and has no buttons any more.
    assert fake.messages[card.id].custom_ids() == [] and "cancelled" in fake.messages[card.id].embeds[0]["description"]


async def test_a_close_due_while_the_bot_was_down_happens_at_start_up(env: Env):
    fake = env.fake
    _, card, event_id = await start_event(fake, fake.channel, title="Overnight", duration="1d",
                                          library_style="woman-with-a-hat", preset="fast")
    dave = await accepted(await join(fake, card, event_id, "dave"))
    thread = thread_of(fake, card)
    await fake.wait_for(lambda: dave in entry_results(fake, thread.id), timeout=RESULT_TIMEOUT, what="the entry")
    children = kill9(env.bot)
    try:
        assert not await wait_gone(children)
        with env.db() as db:
            db.execute("UPDATE events SET closes_at = ? WHERE event_id = ?", (time.time() - 3600, event_id))
        await env.start()
    finally:
        reap(children)
    gallery = await fake.wait_for_message(fake.channel, lambda m: bool(m.attachments) and "Overnight" in m.content,
                                          timeout=60)
    assert f"1. <@{fake.user('dave').id}> · 0 votes" in gallery.content
    await fake.wait_for(lambda: not fake.messages[card.id].custom_ids(), timeout=10, what="the card's final look")
