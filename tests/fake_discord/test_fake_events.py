"""The fake Discord's routes for events: a modal with a file upload, a thread under a message,
and a guild's scheduled events, driven by a real discord.py client in-process."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime, timedelta, timezone

import discord
import pytest
import yarl
from discord import app_commands
from PIL import Image

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, FakeDiscordError, Permissions
except ImportError:  # plain `pytest` (rootdir/tests on sys.path)
    from fake_discord import FakeDiscord, FakeDiscordError, Permissions

pytestmark = pytest.mark.timeout(60)


def make_png(size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


class UploadModal(discord.ui.Modal, title="Send a picture"):
    def __init__(self, state: dict) -> None:
        super().__init__(timeout=60)
        self.state = state
        self.files = discord.ui.FileUpload(custom_id="files", min_values=1, max_values=2)
        self.add_item(discord.ui.Label(text="Pictures", component=self.files))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.state["uploads"] = [(a.filename, a.content_type, a.width, a.height, await a.read())
                                 for a in self.files.values]
        await interaction.response.send_message(f"got {len(self.files.values)}", ephemeral=True)


class Client(discord.Client):
    def __init__(self, guild_id: int, state: dict) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.1)
        self.tree = app_commands.CommandTree(self)
        self.guild_id = guild_id

        @self.tree.command(name="upload", description="A modal with a file upload")
        async def upload(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(UploadModal(state))

    async def setup_hook(self) -> None:
        guild = discord.Object(self.guild_id)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)


@pytest.fixture
async def env(monkeypatch):
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    state: dict = {}
    client = Client(fake.guild.id, state)
    task = asyncio.create_task(client.start(fake.bot_token))
    try:
        await fake.wait_ready(timeout=10)
        await fake.wait_for_commands(guild=fake.guild, names=["upload"], timeout=10)
        yield fake, client, state
    finally:
        await client.close()
        try:
            await asyncio.wait_for(task, timeout=5)
        except Exception:
            task.cancel()
        await fake.stop()


async def test_a_modal_submit_carries_uploaded_files_as_discord_sends_them(env):
    fake, client, state = env
    opened = await fake.send_slash_command("upload", user="alice")
    await opened.wait_until(lambda r: r.modal is not None, timeout=5)
    label = opened.modal["components"][0]
    assert label["type"] == 18 and label["component"] == {**label["component"], "type": 19, "custom_id": "files"}
    png = make_png((8, 6))
    submit = await fake.submit_modal(opened, {"files": [fake.add_attachment("a/cat.png", png, "image/png")]})
    assert "got 1" in (await submit.wait_for_reply(timeout=5)).content
    assert state["uploads"] == [("cat.png", "image/png", 8, 6, png)]
    upload = submit.payload["data"]["components"][0]["component"]
    assert upload["values"] == list(submit.payload["data"]["resolved"]["attachments"])
    with pytest.raises(FakeDiscordError, match="takes 1..2 files"):
        await fake.submit_modal(opened, {"files": []})


async def test_a_thread_under_a_message_is_a_channel_with_its_parents_permissions(env):
    fake, client, state = env
    message = await client.get_partial_messageable(fake.channel.id, guild_id=fake.guild.id).send("card")
    data = await client.http.start_thread_with_message(fake.channel.id, message.id, name="Entries",
                                                       auto_archive_duration=10080)
    thread = fake.channels[int(data["id"])]
    assert thread.id == message.id and thread.type == 11 and thread.parent_id == fake.channel.id
    assert data["thread_metadata"]["archived"] is False and fake.events_of("thread_create")
    sent = await client.get_partial_messageable(thread.id, guild_id=fake.guild.id).send("in the thread")
    assert [m.id for m in fake.messages_in(thread)] == [sent.id]
    assert fake.guild.permissions_in(fake.user("mod").id, thread) & Permissions.MANAGE_MESSAGES
    guild = fake.guild.to_json()  # GUILD_CREATE lists threads apart from channels
    assert [t["id"] for t in guild["threads"]] == [str(thread.id)]
    assert str(thread.id) not in [c["id"] for c in guild["channels"]]
    with pytest.raises(discord.HTTPException) as again:  # one thread per message
        await client.http.start_thread_with_message(fake.channel.id, message.id, name="Again",
                                                    auto_archive_duration=60)
    assert again.value.code == 160004
    other = await client.get_partial_messageable(fake.channel.id, guild_id=fake.guild.id).send("card 2")
    fake.set_overwrite(fake.channel, fake.bot_user.id, deny=Permissions.CREATE_PUBLIC_THREADS)
    with pytest.raises(discord.Forbidden):
        await client.http.start_thread_with_message(fake.channel.id, other.id, name="No", auto_archive_duration=60)


async def test_scheduled_events_need_manage_events_and_a_time_to_come(env):
    fake, client, state = env
    now = datetime.now(timezone.utc)
    event = dict(name="Paint-off", privacy_level=2, entity_type=3, entity_metadata={"location": "#general"},
                 scheduled_start_time=(now + timedelta(minutes=1)).isoformat(),
                 scheduled_end_time=(now + timedelta(hours=1)).isoformat())
    with pytest.raises(discord.Forbidden):
        await client.http.create_guild_scheduled_event(fake.guild.id, **event)
    fake.bot_permissions = Permissions.DEFAULT_BOT | Permissions.MANAGE_EVENTS
    with pytest.raises(discord.HTTPException, match="past"):
        await client.http.create_guild_scheduled_event(
            fake.guild.id, **{**event, "scheduled_start_time": (now - timedelta(minutes=1)).isoformat()})
    made = await client.http.create_guild_scheduled_event(fake.guild.id, **event)
    assert fake.guild.scheduled_events[int(made["id"])]["name"] == "Paint-off"
    assert [e["id"] for e in await client.http.get_scheduled_events(fake.guild.id, False)] == [made["id"]]
    await client.http.delete_scheduled_event(fake.guild.id, made["id"])
    assert not fake.guild.scheduled_events and fake.events_of("scheduled_event_delete")
    with pytest.raises(discord.NotFound):
        await client.http.delete_scheduled_event(fake.guild.id, made["id"])
