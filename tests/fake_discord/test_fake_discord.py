"""Smoke tests for the fake Discord server, driven by a real discord.py client in-process."""

from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from PIL import Image

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import (ApplicationFlags, FakeDiscord, FakeDiscordError, Intents, MessageFlags,
                                    Permissions)
except ImportError:  # plain `pytest` (rootdir/tests on sys.path)
    from fake_discord import ApplicationFlags, FakeDiscord, FakeDiscordError, Intents, MessageFlags, Permissions

pytestmark = pytest.mark.timeout(60)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_png(size=(8, 6), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class RetryView(discord.ui.View):
    def __init__(self, state: dict) -> None:
        super().__init__(timeout=120)
        self.state = state

    @discord.ui.button(label="Again", custom_id="again", style=discord.ButtonStyle.primary)
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.state["clicks"].append(interaction.user.id)
        await interaction.response.send_message("clicked!", ephemeral=True)


class NameModal(discord.ui.Modal, title="Name it"):
    name = discord.ui.TextInput(label="Name", custom_id="name_input")

    def __init__(self, state: dict) -> None:
        super().__init__(timeout=60)
        self.state = state

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.state["modal_value"] = self.name.value
        await interaction.response.send_message(f"named {self.name.value}", ephemeral=True)


class PanelView(discord.ui.View):
    def __init__(self, state: dict) -> None:
        super().__init__(timeout=120)
        self.state = state

    @discord.ui.button(label="Update", custom_id="update")
    async def update(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        button.disabled = True
        await interaction.response.edit_message(content="updated", view=self)

    @discord.ui.button(label="Later", custom_id="later")
    async def later(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(
            content="later done", attachments=[discord.File(io.BytesIO(b"xyz"), "later.bin")])

    @discord.ui.button(label="Modal", custom_id="modal")
    async def modal(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_modal(NameModal(self.state))

    @discord.ui.select(custom_id="pick", options=[discord.SelectOption(label=x) for x in ("a", "b", "c")],
                       max_values=3)
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        self.state["picked"] = list(select.values)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(f"picked {select.values}")


class StylePickView(discord.ui.View):
    """An ephemeral style picker: a string select whose choice edits the picker message."""

    def __init__(self, state: dict, custom_id: str) -> None:
        super().__init__(timeout=120)
        self.state = state
        select = discord.ui.Select(custom_id=custom_id, min_values=1, max_values=2,
                                   options=[discord.SelectOption(label=x.upper(), value=x) for x in ("a", "b", "c")])
        select.callback = self.picked
        self.select = select
        self.add_item(select)

    async def picked(self, interaction: discord.Interaction) -> None:
        self.state["picks"].append((interaction.user.id, list(self.select.values), interaction.message.id,
                                    interaction.message.flags.ephemeral))
        await interaction.response.edit_message(content=f"picked {self.select.values}", view=None)


class ChannelView(discord.ui.View):
    """A button on a plain channel post (no interaction behind it): any member may press it."""

    def __init__(self, state: dict) -> None:
        super().__init__(timeout=120)
        self.state = state

    @discord.ui.button(label="Cancel", custom_id="chan_cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.state["chan_clicks"].append((interaction.user.id, interaction.message.id))
        await interaction.response.send_message(f"cancelled by {interaction.user.name}", ephemeral=True)


class SmokeClient(discord.Client):
    def __init__(self, guild_id: int, state: dict) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.1)
        self.guild_id = guild_id
        self.state = state
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="stylize", description="Stylize an image")
        @app_commands.describe(image="the picture", style="which style")
        async def stylize(interaction: discord.Interaction, image: discord.Attachment, style: str = "mosaic") -> None:
            state["interactions"].append(interaction)
            await interaction.response.defer(thinking=True)
            data = await image.read()
            state["downloaded"] = data
            state["attachment"] = (image.filename, image.content_type, image.width, image.height, image.size)
            with Image.open(io.BytesIO(data)) as im:
                out = io.BytesIO()
                im.convert("L").save(out, format="PNG")
            state["output"] = out.getvalue()
            await interaction.followup.send(
                f"styled with {style}", file=discord.File(io.BytesIO(state["output"]), "styled.png"),
                view=RetryView(state),
            )

        @stylize.autocomplete("style")
        async def style_autocomplete(interaction: discord.Interaction, current: str):
            return [app_commands.Choice(name=s, value=s) for s in ("mosaic", "monet", "munch") if s.startswith(current)]

        @self.tree.command(name="whoami", description="Show permissions")
        async def whoami(interaction: discord.Interaction) -> None:
            perms = interaction.permissions
            await interaction.response.send_message(
                f"manage_messages={perms.manage_messages} app_attach={interaction.app_permissions.attach_files}",
                ephemeral=True,
            )

        @self.tree.command(name="panel", description="Components playground")
        async def panel(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(
                "panel", view=PanelView(state), file=discord.File(io.BytesIO(b"p"), "p.txt"))
            msg = await interaction.original_response()
            state["panel_id"] = msg.id

        @self.tree.context_menu(name="Stylize this")
        async def stylize_this(interaction: discord.Interaction, message: discord.Message) -> None:
            state["ctx"].append(interaction)
            state["ctx_target"] = (message.id, message.author.id, message.content,
                                   [e.image.url or e.thumbnail.url for e in message.embeds])
            state["ctx_data"] = [await a.read() for a in message.attachments]
            await interaction.response.send_message("pick a style", view=StylePickView(state, "style_pick"),
                                                    ephemeral=True)
            await interaction.followup.send("or pick here", view=StylePickView(state, "style_pick2"), ephemeral=True)

        @self.tree.context_menu(name="Who is")
        async def who_is(interaction: discord.Interaction, member: discord.Member) -> None:
            await interaction.response.send_message(f"that is {member.name}", ephemeral=True)

    async def on_message(self, message: discord.Message) -> None:
        self.state["on_message"].append(message)

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
    state: dict = {"interactions": [], "clicks": [], "ctx": [], "picks": [], "chan_clicks": [], "on_message": []}
    client = SmokeClient(fake.guild.id, state)
    task = asyncio.create_task(client.start(fake.bot_token))
    try:
        await fake.wait_ready(timeout=10)
        await fake.wait_for_commands(guild=fake.guild, names=["stylize", "whoami", "panel", "Stylize this", "Who is"],
                                     timeout=10)
        yield fake, client, state
    finally:
        await client.close()
        try:
            await asyncio.wait_for(task, timeout=5)
        except Exception:
            task.cancel()
        await fake.stop()
    assert not fake.unhandled, f"discord.py hit routes the fake does not serve: {fake.unhandled}"


async def test_slash_command_defer_attachment_followup_and_button(env):
    fake, client, state = env
    assert fake.command_sync_count(fake.guild) == 1
    assert fake.command_sync_count() == 0
    cmd = next(c for c in fake.commands(fake.guild) if c["name"] == "stylize")
    assert [o["type"] for o in cmd["options"]] == [11, 3]

    src = make_png()
    att = fake.add_attachment("cat.png", src, "image/png")
    assert (att["width"], att["height"], att["size"]) == (8, 6, len(src))

    inter = await fake.send_slash_command("stylize", user="alice", options={"image": att})
    cb = await inter.wait_for_callback(timeout=5)
    assert cb.type == 5 and cb.status == 200 and cb.at < 3.0
    assert inter.deferred and inter.ack_latency < 3.0

    msg = await inter.wait_for_followup(timeout=10)
    assert state["downloaded"] == src
    assert state["attachment"] == ("cat.png", "image/png", 8, 6, len(src))
    assert fake.events_of("attachment_download")
    # the first followup after a thinking defer replaces the loading message
    assert inter.original is msg and not msg.loading and not msg.ephemeral
    assert msg.content == "styled with mosaic"
    assert [a.filename for a in msg.attachments] == ["styled.png"]
    out = msg.attachments[0]
    assert out.data == state["output"] and out.data.startswith(PNG_MAGIC)
    assert out.content_type == "image/png" and (out.width, out.height) == (8, 6)
    assert msg.custom_ids() == ["again"]
    assert msg in fake.messages_in(fake.channel)

    # the stored attachment URL really serves the uploaded bytes
    async with aiohttp.ClientSession() as session:
        async with session.get(out.url) as resp:
            assert resp.status == 200 and await resp.read() == out.data

    click = await fake.click_button(inter, "again")
    cb2 = await click.wait_for_callback(timeout=5)
    assert cb2.type == 4 and cb2.ephemeral
    await fake.wait_for(lambda: state["clicks"], timeout=5)
    assert state["clicks"] == [fake.user("alice").id]
    assert click.ephemeral_texts() == ["clicked!"]
    assert click.original is not None and click.original.flags & MessageFlags.EPHEMERAL

    # autocomplete
    ac = await fake.send_autocomplete("stylize", focused="style", value="mo", options={"image": att})
    await ac.wait_until(lambda r: r.autocomplete_choices is not None, timeout=5)
    assert [c["value"] for c in ac.autocomplete_choices] == ["mosaic", "monet"]
    assert ac.callbacks[0].type == 8


async def test_permissions_and_immediate_response(env):
    fake, client, state = env
    r1 = await fake.send_slash_command("whoami", user="mod")
    r2 = await fake.send_slash_command("whoami", user="alice")
    m1 = await r1.wait_for_reply(timeout=5)
    m2 = await r2.wait_for_reply(timeout=5)
    assert r1.callbacks[0].type == 4
    assert m1.ephemeral and m1.content == "manage_messages=True app_attach=True"
    assert m2.content == "manage_messages=False app_attach=True"
    assert int(r1.payload["member"]["permissions"]) & Permissions.MANAGE_MESSAGES
    with pytest.raises(FakeDiscordError):
        await fake.send_slash_command("nope")
    with pytest.raises(FakeDiscordError):
        await fake.send_slash_command("stylize", options={"bogus": 1})


async def test_component_update_defer_select_and_modal(env):
    fake, client, state = env
    inter = await fake.send_slash_command("panel", user="bob")
    panel = await inter.wait_for_reply(timeout=5)
    assert inter.callbacks[0].type == 4 and inter.callbacks[0].files[0].data == b"p"
    assert panel.attachments[0].data == b"p" and panel.type == 20
    await fake.wait_for(lambda: state.get("panel_id"), timeout=5)
    assert state["panel_id"] == panel.id
    assert set(panel.custom_ids()) == {"update", "later", "modal", "pick"}

    upd = await fake.click_button(panel, "update")
    assert upd.user.username == "bob"
    await upd.wait_until(lambda r: r.acknowledged, timeout=5)
    assert upd.callbacks[0].type == 7
    assert panel.content == "updated" and panel.find_component("update")["disabled"] is True
    assert panel.attachments[0].data == b"p"  # kept
    with pytest.raises(FakeDiscordError):
        await fake.click_button(panel, "update")

    later = await fake.click_button(panel, "later")
    await fake.wait_for(lambda: panel.content == "later done", timeout=5)
    assert later.callbacks[0].type == 6 and later.original is panel
    assert [a.filename for a in panel.attachments] == ["later.bin"] and panel.attachments[0].data == b"xyz"
    assert later.original_edits and later.original_edits[0][1]["content"] == "later done"

    pick = await fake.click_button(panel, "pick", values=["b", "c"])
    reply = await pick.wait_for_reply(timeout=5)
    assert state["picked"] == ["b", "c"]
    assert reply.ephemeral and reply.content == "picked ['b', 'c']"

    m = await fake.click_button(panel, "modal")
    await m.wait_until(lambda r: r.modal is not None, timeout=5)
    assert m.callbacks[0].type == 9 and m.modal["title"] == "Name it"
    sub = await fake.submit_modal(m, {"name_input": "Rex"})
    assert (await sub.wait_for_reply(timeout=5)).content == "named Rex"
    assert state["modal_value"] == "Rex"

    # a second response to an acknowledged interaction is refused like Discord does
    assert sub.acknowledged and not sub.rejected
    async with aiohttp.ClientSession() as session:
        url = f"{fake.api_base}/interactions/{sub.id}/{sub.token}/callback"
        async with session.post(url, json={"type": 4, "data": {"content": "again"}}) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 40060
    assert len(sub.callbacks) == 2 and sub.callbacks[1].status == 400 and len(sub.rejected) == 1


async def test_expired_token_answers_401(env):
    fake, client, state = env
    fake.token_ttl = 1.0
    att = fake.add_attachment("dog.png", make_png((4, 4)), "image/png")
    inter = await fake.send_slash_command("stylize", user="bob", options={"image": att, "style": "monet"})
    await inter.wait_for_followup(timeout=10)
    d_inter: discord.Interaction = state["interactions"][-1]
    await asyncio.sleep(max(0.0, inter.expires_t - time.monotonic()) + 0.05)
    with pytest.raises(discord.HTTPException) as ei:
        await d_inter.followup.send("too late")
    assert ei.value.status == 401 and ei.value.code == 50027
    with pytest.raises(discord.HTTPException) as ei:
        await d_inter.edit_original_response(content="too late")
    assert ei.value.status == 401 and ei.value.code == 50027
    assert [r.status for r in inter.rejected] == [401, 401]
    assert inter.followups[0].content == "styled with monet"


async def test_injected_500_refusal_and_channel_posts(env):
    fake, client, state = env
    channel = client.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)

    fault = fake.inject_fault(r"^/channels/\d+/messages$", method="POST", status=500, times=1)
    sent = await channel.send("hello", file=discord.File(io.BytesIO(b"abc"), "a.txt"))
    assert fault.hits == 1
    posts = fake.requests_to(rf"^/channels/{fake.channel.id}/messages$", "POST")
    assert [r.status for r in posts] == [500, 200]
    [msg] = fake.messages_in(fake.channel)
    assert msg.id == sent.id and msg.content == "hello" and msg.attachments[0].data == b"abc"
    assert sent.attachments[0].filename == "a.txt"

    # delay-only and 429 faults
    fake.inject_fault(r"^/users/\d+$", method="GET", status=None, delay=0.3)
    t0 = time.monotonic()
    await client.fetch_user(fake.user("alice").id)
    assert time.monotonic() - t0 >= 0.3
    limited = fake.inject_fault(r"/typing$", status=429, retry_after=0.05)
    await channel.typing()
    assert limited.hits == 1 and [r.status for r in fake.requests_to("/typing$")] == [429, 204]

    await sent.edit(content="edited")
    assert msg.content == "edited" and msg.history[0]["content"] == "hello"

    other = fake.add_channel("locked")
    fake.refuse_channel(other)
    await fake.dispatch("CHANNEL_CREATE", other.to_json())
    await fake.wait_for(lambda: client.get_channel(other.id), timeout=5)
    with pytest.raises(discord.Forbidden) as ei:
        await client.get_channel(other.id).send("nope")
    assert ei.value.code == 50001

    bob = await client.fetch_user(fake.user("bob").id)
    await bob.send("psst")
    assert [m.content for m in fake.dms_to("bob")] == ["psst"]
    fake.block_dms("bob")
    with pytest.raises(discord.Forbidden) as ei:
        await bob.send("again")
    assert ei.value.code == 50007


async def test_gateway_intents_compression_and_resume(env):
    fake, client, state = env
    assert fake.intents == discord.Intents.default().value
    assert fake.privileged_intents == 0
    assert not fake.intents & Intents.MESSAGE_CONTENT
    assert fake.connections[0].query.get("compress") == "zlib-stream"
    assert fake.connections[0].compress == "zlib-stream"

    session = fake.session
    await fake.gateway_reconnect()
    await fake.wait_for_event("resumed", timeout=10)
    assert fake.session is session and session.resumes == 1
    assert fake.resume_payloads[-1]["session_id"] == session.id

    r = await fake.send_slash_command("whoami", user="alice")
    await r.wait_for_reply(timeout=5)


async def test_rest_auth_is_enforced(monkeypatch):
    async with FakeDiscord() as fake:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{fake.api_base}/users/@me", headers={"Authorization": "Bot wrong"}) as resp:
                assert resp.status == 401
            async with session.get(f"{fake.api_base}/users/@me",
                                   headers={"Authorization": f"Bot {fake.bot_token}"}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "application/json"
                assert (await resp.json())["id"] == str(fake.application_id)
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        client = discord.Client(intents=discord.Intents.default())
        with pytest.raises(discord.LoginFailure):
            await client.login("not-the-token")
        await client.close()


async def test_members_messages_over_rest_and_gateway(env):
    fake, client, state = env
    channel = client.get_channel(fake.channel.id)
    src, linked = make_png((10, 7)), make_png((5, 5), (0, 0, 255))
    att = fake.add_attachment("photo.png", src, "image/png")
    link = fake.add_attachment("linked.png", linked, "image/png")
    msg = await fake.post_user_message(
        fake.channel, user="alice", content="look at this", attachments=[att],
        embeds=[{"type": "image", "url": link["url"], "thumbnail": {"url": link["url"]}}])
    assert msg.author.username == "alice" and not msg.from_bot and msg.type == 0 and msg.kind == "channel"
    assert msg.attachments[0].data == src and not msg.attachments[0].ephemeral
    assert msg.attachments[0].id != int(att["id"]) and msg.attachments[0].url == att["url"]
    thumb = msg.embeds[0]["thumbnail"]
    assert (thumb["width"], thumb["height"], thumb["content_type"]) == (5, 5, "image/png") and thumb["proxy_url"]
    assert fake.messages_in(fake.channel) == [msg]
    assert fake.messages_in(fake.channel, author=fake.bot_user) == [] and fake.messages_in(fake.channel, author="alice")

    # MESSAGE_CREATE reaches a bot with GUILD_MESSAGES, emptied without the MESSAGE_CONTENT intent
    await fake.wait_for(lambda: state["on_message"], timeout=5)
    got = state["on_message"][0]
    assert got.id == msg.id and got.author.id == fake.user("alice").id and isinstance(got.author, discord.Member)
    assert (got.content, got.attachments, got.embeds) == ("", [], [])

    # REST reads are emptied too unless the application has a message-content flag
    fetched = await channel.fetch_message(msg.id)
    assert fetched.author.name == "alice" and fetched.content == "" and not fetched.attachments
    fake.app_flags = ApplicationFlags.GATEWAY_MESSAGE_CONTENT_LIMITED
    fetched = await channel.fetch_message(msg.id)
    assert fetched.content == "look at this" and fetched.attachments[0].filename == "photo.png"
    assert await fetched.attachments[0].read() == src
    assert fetched.embeds[0].thumbnail.url == link["url"] and fetched.embeds[0].thumbnail.width == 5
    async with aiohttp.ClientSession() as session:
        async with session.get(fetched.embeds[0].thumbnail.url) as resp:
            assert await resp.read() == linked
    history = [m async for m in channel.history(limit=10)]
    assert [m.id for m in history] == [msg.id]
    mine = await channel.send("bot says hi")
    assert [m.id for m in [m async for m in channel.history(limit=10)]] == [mine.id, msg.id]
    assert [m.id async for m in channel.history(limit=10, before=discord.Object(mine.id))] == [msg.id]
    assert [m.id async for m in channel.history(limit=10, after=discord.Object(msg.id))] == [mine.id]
    assert await fake.wait_for_message(fake.channel) is fake.messages[mine.id]
    fake.app_flags = 0

    # mentioning the bot, or writing in a DM, shows the content without the intent
    await fake.post_user_message(user="bob", content=f"<@{fake.bot_user.id}> hello")
    dm = await fake.post_user_message(fake.dm_channel("bob"), user="bob", content="psst")
    await fake.wait_for(lambda: len(state["on_message"]) == 3, timeout=5)
    assert [m.content for m in state["on_message"][1:]] == [f"<@{fake.bot_user.id}> hello", "psst"]
    assert state["on_message"][1].mentions[0].id == fake.bot_user.id
    assert isinstance(state["on_message"][2].channel, discord.DMChannel) and dm.guild_id is None
    assert fake.dms_to("bob") == []  # only the bot's DMs
    with pytest.raises(FakeDiscordError):
        await fake.post_user_message(fake.dm_channel("bob"), user="alice", content="not my DM")
    with pytest.raises(FakeDiscordError):
        await fake.post_user_message(user="alice")  # empty

    # the bot can't edit a member's message; deleting needs MANAGE_MESSAGES (and never in DMs)
    with pytest.raises(discord.Forbidden) as ei:
        await fetched.edit(content="mine now")
    assert ei.value.code == 50005
    with pytest.raises(discord.Forbidden) as ei:
        await (await client.fetch_channel(dm.channel_id)).get_partial_message(dm.id).delete()
    assert ei.value.code == 50003
    fake.bot_permissions = Permissions.DEFAULT_EVERYONE
    with pytest.raises(discord.Forbidden) as ei:
        await fetched.delete()
    assert ei.value.code == 50013 and not msg.deleted
    fake.bot_permissions = Permissions.DEFAULT_BOT
    await fetched.delete()
    assert msg.deleted and fake.messages_in(fake.channel, author="alice") == []
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(msg.id)


async def test_message_context_menu_ephemeral_selects_and_webhook_scope(env):
    fake, client, state = env
    ctx = {c["type"]: c for c in fake.commands(fake.guild) if c["type"] in (2, 3)}
    assert ctx[3]["name"] == "Stylize this" and ctx[3]["description"] == "" and "options" not in ctx[3]
    assert ctx[2]["name"] == "Who is"

    src = make_png((6, 6))
    link = fake.add_attachment("embedded.png", make_png((3, 3)), "image/png")
    target = await fake.post_user_message(user="alice", content="style me", attachments=[
        fake.add_attachment("me.png", src, "image/png")], embeds=[{"image": {"url": link["url"]}}])
    inter = await fake.send_message_command("Stylize this", target, user="bob")
    data = inter.payload["data"]
    assert data["type"] == 3 and data["target_id"] == str(target.id) and data["guild_id"] == str(fake.guild.id)
    resolved = data["resolved"]["messages"][str(target.id)]
    assert resolved["author"]["username"] == "alice" and resolved["attachments"][0]["filename"] == "me.png"

    picker = await inter.wait_for_reply(timeout=5)
    followup = await inter.wait_for_followup(timeout=5)
    await fake.wait_for(lambda: "ctx_data" in state, timeout=5)
    # the target message comes complete although the bot has no message-content intent
    assert state["ctx_target"] == (target.id, fake.user("alice").id, "style me", [link["url"]])
    assert state["ctx_data"] == [src]
    assert picker.ephemeral and picker.type == 23 and picker.custom_ids() == ["style_pick"]
    assert picker.interaction_metadata["target_message_id"] == str(target.id)
    assert picker.interaction_metadata["command_type"] == 3
    assert followup is not picker and followup.ephemeral and followup.custom_ids() == ["style_pick2"]

    # string selects on the ephemeral original response and on the ephemeral followup
    bob = fake.user("bob").id
    sel = await fake.select(inter, "style_pick", values=["a", "c"])
    assert sel.user.id == bob and sel.message_id == picker.id
    assert sel.payload["message"]["flags"] & MessageFlags.EPHEMERAL and sel.payload["data"]["values"] == ["a", "c"]
    await fake.wait_for(lambda: picker.content == "picked ['a', 'c']", timeout=5)
    assert sel.callbacks[0].type == 7 and picker.components == [] and picker.ephemeral
    sel2 = await fake.select(inter, "style_pick2", values=["b"], user="bob")
    await fake.wait_for(lambda: followup.content == "picked ['b']", timeout=5)
    assert state["picks"] == [(bob, ["a", "c"], picker.id, True), (bob, ["b"], followup.id, True)]
    assert sel2.payload["message"]["id"] == str(followup.id)
    with pytest.raises(FakeDiscordError):  # gone from the picker after the edit
        await fake.select(inter, "style_pick", values=["a"])

    # misuse of selects is refused like the Discord client would
    again = await fake.send_message_command("Stylize this", target, user="bob")
    await again.wait_for_followup(timeout=5)
    for kwargs in ({"values": ["z"]}, {"values": ["a", "b", "c"]}, {"values": []}, {"values": ["a"], "user": "alice"}):
        with pytest.raises(FakeDiscordError):
            await fake.select(again, "style_pick2", **kwargs)

    # the interaction's webhook reaches only its own messages
    d_inter: discord.Interaction = state["ctx"][0]
    other_inter_msg = again.original
    plain = await client.get_channel(fake.channel.id).send("plain post")
    for foreign in (plain.id, target.id, other_inter_msg.id):
        with pytest.raises(discord.NotFound) as ei:
            await d_inter.followup.edit_message(foreign, content="hijack")
        assert ei.value.code == 10008
    with pytest.raises(discord.NotFound) as ei:
        await d_inter.followup.delete_message(plain.id)
    assert ei.value.code == 10008
    assert [r.status for r in inter.rejected] == [404] * 4
    assert fake.messages[plain.id].content == "plain post" and not fake.messages[plain.id].deleted
    await d_inter.followup.edit_message(followup.id, content="mine to edit")
    assert followup.content == "mine to edit"
    await d_inter.followup.delete_message(followup.id)
    await d_inter.delete_original_response()
    assert followup.deleted and picker.deleted and inter.all_messages == []
    assert {e.data.id for e in fake.events_of("message_delete")} == {followup.id, picker.id}

    with pytest.raises(FakeDiscordError):
        await fake.send_message_command("Stylize this", picker)  # deleted (and ephemeral)
    with pytest.raises(FakeDiscordError):
        await fake.send_message_command("stylize", target)  # a slash command, not a message command

    who = await fake.send_user_command("Who is", "alice", user="bob")
    assert who.payload["data"]["target_id"] == str(fake.user("alice").id)
    assert (await who.wait_for_reply(timeout=5)).content == "that is alice"


async def test_context_menu_sync_validation(env):
    fake, client, state = env
    url = f"{fake.api_base}/applications/{fake.application_id}/guilds/{fake.guild.id}/commands"
    headers = {"Authorization": f"Bot {fake.bot_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for body, field, code in (
            ({"name": "Bad", "type": 3, "description": "no"}, "description",
             "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION_INVALID"),
            ({"name": "Bad", "type": 3, "options": [{"type": 3, "name": "x", "description": "x"}]}, "options",
             "APPLICATION_COMMAND_CONTEXT_MENU_OPTIONS_INVALID"),
            ({"name": "x" * 33, "type": 3}, "name", "BASE_TYPE_BAD_LENGTH"),
        ):
            async with session.put(url, json=[body]) as resp:
                err = await resp.json()
                assert resp.status == 400 and err["code"] == 50035
                assert err["errors"]["0"][field]["_errors"][0]["code"] == code
        async with session.put(url, json=[{"name": "Fine Name", "type": 3, "description": ""}]) as resp:
            assert resp.status == 200 and (await resp.json())[0]["type"] == 3
    assert [c["name"] for c in fake.commands(fake.guild)] == ["Fine Name"]


async def test_replies_and_channel_post_buttons(env):
    fake, client, state = env
    channel = client.get_channel(fake.channel.id)
    ask = await fake.post_user_message(user="alice", content="please style")
    sent = await channel.get_partial_message(ask.id).reply("on it", view=ChannelView(state))
    rec = fake.messages[sent.id]
    assert rec.type == 19 and rec.reference_id == ask.id and rec.referenced is ask
    assert rec.message_reference == {"type": 0, "channel_id": str(fake.channel.id), "message_id": str(ask.id),
                                     "guild_id": str(fake.guild.id)}
    assert sent.type == discord.MessageType.reply and sent.reference.message_id == ask.id
    assert sent.reference.resolved.author.id == fake.user("alice").id
    post = fake.requests_to(rf"^/channels/{fake.channel.id}/messages$", "POST")[-1]
    assert int(post.json["message_reference"]["message_id"]) == ask.id

    # a member replies to the bot
    thanks = await fake.post_user_message(user="bob", content="thanks", reply_to=rec)
    assert thanks.type == 19 and thanks.reference_id == rec.id
    assert (await channel.fetch_message(thanks.id)).reference.resolved.content == "on it"

    # replying to an unknown message: 400 50035 unless fail_if_not_exists is false
    gone = discord.MessageReference(message_id=12345, channel_id=channel.id)
    with pytest.raises(discord.HTTPException) as ei:
        await channel.send("lost", reference=gone)
    assert ei.value.status == 400 and ei.value.code == 50035 and "Unknown message" in str(ei.value)
    assert ei.value.text and "message_reference" in str(ei.value)
    elsewhere = fake.add_channel("elsewhere")
    other = await fake.post_user_message(elsewhere, user="alice", content="over there")
    with pytest.raises(discord.HTTPException) as ei:
        await channel.send("wrong channel", reference=discord.MessageReference(
            message_id=other.id, channel_id=channel.id))
    assert ei.value.code == 50035
    loose = await channel.send("anyway", reference=discord.MessageReference(
        message_id=12345, channel_id=channel.id, fail_if_not_exists=False))
    assert loose.type == discord.MessageType.default and loose.reference is None
    assert fake.messages[loose.id].reference_id is None and fake.messages[loose.id].type == 0

    # the replied-to message deleted: referenced_message becomes null
    await channel.get_partial_message(ask.id).delete()
    refetched = await channel.fetch_message(sent.id)
    assert isinstance(refetched.reference.resolved, discord.DeletedReferencedMessage)
    with pytest.raises(discord.HTTPException):
        await channel.send("too late", reference=discord.MessageReference(message_id=ask.id, channel_id=channel.id))

    # buttons on a plain channel post: any member may press them
    c1 = await fake.click_button(rec, "chan_cancel", user="bob")
    c2 = await fake.click_button(sent.id, "chan_cancel", user="mod")
    c3 = await fake.click_button(rec, "chan_cancel")  # default: default_user() (alice)
    for c in (c1, c2, c3):
        await c.wait_for_reply(timeout=5)
        assert c.payload["message"]["id"] == str(rec.id) and not c.payload["message"]["flags"]
    ids = [fake.user(n).id for n in ("bob", "mod", "alice")]
    assert state["chan_clicks"] == [(i, rec.id) for i in ids]
    assert c2.ephemeral_texts() == ["cancelled by mod"]
