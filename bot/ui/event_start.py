"""``/stylebot event start``: a style event begins. For members with Manage Events (checked
again when run, whatever the server's command settings say); within the server's rules (the
channels it allows, its largest preset) and at most one open event per channel and
:data:`~bot.core.event.OPEN_EVENTS_PER_SERVER` per server. The event is recorded, its card
posted with a thread for the entries under it, and, where the bot has Manage Events, a
Discord scheduled event made with the same times; without that permission the host is told
once, privately, and the event goes on."""

from __future__ import annotations

import asyncio
import logging
import time

import discord
from discord import app_commands

from bot.config import Config
from bot.core.event import (MAX_ENTRIES_PER_MEMBER, OPEN_EVENTS_PER_SERVER, EventState, StyleEvent, discord_time,
                            new_event_id, parse_duration)
from bot.core.refusals import EventRefused, Refused, UploadProblem
from bot.intake.uploads import UploadChecker
from bot.render.words import clip
from bot.service.events import entry_thumb
from bot.service.server_settings import ServerSettings
from bot.store.errors import StoreError
from bot.store.job_store import JobStore
from bot.ui.access import channel_ids
from bot.ui.errors import answer_error
from bot.ui.event_cards import EventCards
from bot.ui.event_close import EventCloser
from bot.ui.gather import PictureGatherer

__all__ = ["EventStarter"]

log = logging.getLogger(__name__)


class EventStarter:
    """Starts events; gives ``/stylebot`` its ``event`` group."""

    def __init__(self, config: Config, *, store: JobStore, gatherer: PictureGatherer, settings: ServerSettings,
                 checker: UploadChecker, cards: EventCards, closer: EventCloser) -> None:
        self.config = config
        self.store = store
        self.gatherer = gatherer
        self.settings = settings
        self.checker = checker
        self.cards = cards
        self.closer = closer
        self._starting: set[int] = set()  # servers with an event being started now

    def group(self) -> app_commands.Group:
        """``event``, a subcommand group for ``/stylebot``."""
        group = app_commands.Group(name="event", description="Style events: a server paints together, then votes")
        presets = self.config.engine.presets

        @group.command(name="start", description="Start a style event in this channel (Manage Events)")
        @app_commands.describe(title="The event's name", duration="How long it is open: 45m, 2h, 1d 12h (10 minutes "
                               "to 7 days)", library_style="A painting from the bot's library",
                               style="Your own style picture (instead of library_style)",
                               preset="Speed and quality of the entries", entries_per_member="Entries each member "
                               "may make (default 1)")
        @app_commands.choices(preset=[app_commands.Choice(name=name, value=name) for name in presets])
        async def start(interaction: discord.Interaction, title: app_commands.Range[str, 1, 100],
                        duration: app_commands.Range[str, 1, 40], library_style: str | None = None,
                        style: discord.Attachment | None = None, preset: app_commands.Choice[str] | None = None,
                        entries_per_member: app_commands.Range[int, 1, MAX_ENTRIES_PER_MEMBER] = 1) -> None:
            await self.start(interaction, title, duration, library_style, style,
                             preset.value if preset else None, entries_per_member)

        @start.autocomplete("library_style")
        async def library_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=e.label, value=e.name) for e in self.gatherer.library.search(current)]

        @start.error
        async def start_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
            await answer_error(interaction, error)

        return group

    async def start(self, interaction: discord.Interaction, title: str, duration: str, library_style: str | None,
                    style: discord.Attachment | None, preset: str | None, per_member: int) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = interaction.guild_id
        permissions = interaction.permissions
        if guild_id is None or interaction.channel_id is None:
            await interaction.followup.send("Events are for servers.", ephemeral=True)
            return
        if not permissions.manage_events:  # checked here too: the server may have changed who sees the command
            await interaction.followup.send("Starting an event needs the **Manage Events** permission in this "
                                            "server.", ephemeral=True)
            return
        if guild_id in self._starting:
            await interaction.followup.send("An event is being started in this server right now; try again in a "
                                            "moment.", ephemeral=True)
            return
        self._starting.add(guild_id)
        try:
            event, style_png = await self._new_event(interaction, title, duration, library_style, style, preset,
                                                     per_member)
            notes = await self._open(interaction, event, style_png)
        except Refused as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        finally:
            self._starting.discard(guild_id)
        log.info("event started", extra={"event_id": event.event_id, "guild_id": guild_id,
                                         "host": interaction.user.id, "closes_at": event.closes_at})
        await interaction.followup.send("\n".join([f"🎨 **{event.title}** is open until "
                                                   f"{discord_time(event.closes_at)} "
                                                   f"({discord_time(event.closes_at, 'R')}).", *notes]),
                                        ephemeral=True)

    async def _new_event(self, interaction: discord.Interaction, title: str, duration: str,
                         library_style: str | None, style: discord.Attachment | None, preset: str | None,
                         per_member: int) -> tuple[StyleEvent, bytes | None]:
        """The event as asked, checked against the rules (raises Refused); not recorded yet."""
        guild_id, channel_id = interaction.guild_id or 0, interaction.channel_id or 0
        self.settings.check_channel(guild_id, channel_ids(interaction))
        seconds = parse_duration(duration)
        allowed = self.settings.rules(guild_id).allowed_presets()
        if preset is None:
            default = self.config.engine.default_preset
            preset = default if default in allowed else allowed[-1]
        self.settings.check_preset(guild_id, preset)
        if not 1 <= per_member <= MAX_ENTRIES_PER_MEMBER:
            raise EventRefused(f"Entries per member go from 1 to {MAX_ENTRIES_PER_MEMBER}.")
        open_now = await self.store.open_events_in(guild_id)
        here = [e for e in open_now if channel_id in (e.channel_id, e.thread_id)]
        if here:
            raise EventRefused(f"**{here[0].title}** is already open in this channel until "
                               f"{discord_time(here[0].closes_at)}. One event at a time per channel.")
        if len(open_now) >= OPEN_EVENTS_PER_SERVER:
            raise EventRefused(f"This server already has {len(open_now)} events open, the most it may. Please wait "
                               "until one closes.")
        style_png: bytes | None = None
        if style is not None:
            self.gatherer.check_attachment("style image", style)
            async with self.checker.admit(interaction.user.id, guild_id) as admission:
                style_png = await self.gatherer.attachment(admission, style, "style image")
            label, library_name = style.filename, None
        elif library_style:
            entry = self.gatherer.library.get(library_style)
            if entry is None:
                raise UploadProblem(f"`{clip(library_style, 60)}` is not in the style library; pick one from the list.")
            label, library_name = entry.title, entry.name
        else:
            raise UploadProblem("Give the event a style: `library_style` (a painting from the library) or `style` "
                                "(a picture).")
        now = time.time()
        event = StyleEvent(event_id=new_event_id(), guild_id=guild_id, channel_id=channel_id,
                           host_id=interaction.user.id, title=" ".join(title.split())[:100] or "Style event",
                           style_label=label, library_style=library_name, preset=preset, per_member=per_member,
                           closes_at=now + seconds, created_at=now, upload_limit=interaction.filesize_limit)
        return event, style_png

    async def _open(self, interaction: discord.Interaction, event: StyleEvent, style_png: bytes | None) -> list[str]:
        """Record the event, post its card, open its thread and its scheduled event; returns notes for the host."""
        notes: list[str] = []
        picture = style_png if style_png is not None else await self.gatherer.library.read(event.library_style or "")
        thumb = await asyncio.to_thread(entry_thumb, picture)
        try:
            await self.store.add_event(event, style_png)
        except StoreError:
            log.exception("an event could not be recorded", extra={"event_id": event.event_id})
            raise EventRefused("The bot cannot record events right now. Please try again later.") from None
        try:
            card = await self.cards.post(event, thumb)
        except discord.HTTPException as exc:
            await self.store.end_event(event.event_id, EventState.CANCELLED, time.time())
            raise EventRefused("The bot cannot post in this channel (it needs Send Messages, Embed Links and Attach "
                               f"Files here), so the event was not started. (Discord said {exc.status}.)") from None
        event.card_message_id = card.id
        app = interaction.app_permissions
        if app.create_public_threads and app.send_messages_in_threads:
            event.thread_id = await self.cards.open_thread(event, card.id)
        if event.thread_id is None:
            notes.append("ℹ️ Entries are posted in this channel: the bot may not start a thread here (it needs "
                         "Create Public Threads and Send Messages in Threads).")
        if app.manage_events:
            event.scheduled_event_id = await self.cards.schedule(event, card.jump_url)
            if event.scheduled_event_id is None:
                notes.append("ℹ️ Discord refused the scheduled event, so the event is on its card only.")
        else:
            notes.append("ℹ️ No Discord scheduled event was made: the bot needs the **Manage Events** permission "
                         "for that. The event runs on its card all the same.")
        await self.store.set_event_fields(event.event_id, card_message_id=event.card_message_id,
                                          thread_id=event.thread_id, scheduled_event_id=event.scheduled_event_id)
        self.closer.wake()
        return notes

