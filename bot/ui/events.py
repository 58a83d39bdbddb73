"""Style events, as members meet them once started (:mod:`bot.ui.event_start`): the card's
Join button (a modal with a file upload), the message command "Enter in event", the ⭐ Vote
button under each entry, the host's Close and Cancel, and what Delete on an entry does to
the event.

Every entry is an ordinary job started by :class:`~bot.ui.job_start.JobStarter` (the server's
rules, the member's quota, the server's share of the line and of the checks), posted in the
event's thread rather than through the interaction. The rules are :mod:`bot.core.event`'s,
the records the job store's (:class:`bot.store.events.EventRecords`); the end is
:class:`~bot.ui.event_close.EventCloser`'s. Nothing of one server's event is reachable from
another: every button checks the server its event belongs to.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import discord
from discord import app_commands

from bot.config import Config
from bot.core.event import VOTES_PER_MEMBER, Entry, StyleEvent, closed_refusal
from bot.core.job import Job
from bot.core.refusals import EventRefused, Refused, UploadProblem
from bot.intake.uploads import Admission, UploadChecker
from bot.render.words import clip
from bot.service.events import EventBook
from bot.service.scheduler import Scheduler
from bot.service.server_settings import ServerSettings
from bot.store.job_store import JobStore
from bot.ui.access import servers_only
from bot.ui.errors import answer_error
from bot.ui.event_cards import EventCards
from bot.ui.event_close import EventCloser
from bot.ui.event_start import EventStarter
from bot.ui.gather import JobInputs, MessagePicture, PictureGatherer, message_picture
from bot.ui.job_start import JobRequest, JobStarter

__all__ = ["EventHost", "EntryModal", "StyleEvents", "style_events"]

log = logging.getLogger(__name__)

_NOT_HERE = "This button does not belong to an event the bot knows here."
_RECENT_S = 7 * 86400.0  # a late entry is told when the channel's last event closed, within this


class EntryModal(discord.ui.Modal):
    """The Join button's form: one picture, uploaded."""

    def __init__(self, host: "EventHost", event: StyleEvent) -> None:
        super().__init__(title=clip(f"Enter: {event.title}", 45), timeout=600.0)
        self.host, self.event_id = host, event.event_id
        self.picture = discord.ui.FileUpload(custom_id="picture", min_values=1, max_values=1, required=True)
        self.add_item(discord.ui.Label(text="Your picture", component=self.picture,
                                       description=clip(f"PNG, JPEG, WebP, GIF or BMP; painted in the style of "
                                                        f"{event.style_label}", 100)))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        attachments = self.picture.values
        if not attachments:
            await interaction.response.send_message("Please attach a picture to enter.", ephemeral=True)
            return
        a = attachments[0]
        await self.host.enter(interaction, self.event_id, MessagePicture(a.url, a.filename, a.content_type, a.size,
                                                                          a.width, a.height))

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        await answer_error(interaction, error)


class EventHost:
    """The events' buttons and message command (the client's ``event_host``)."""

    def __init__(self, config: Config, *, store: JobStore, book: EventBook, starter: JobStarter,
                 gatherer: PictureGatherer, cards: EventCards, closer: EventCloser) -> None:
        self.config = config
        self.store = store
        self.book = book
        self.starter = starter
        self.gatherer = gatherer
        self.cards = cards
        self.closer = closer
        self._entering: dict[tuple[str, int], int] = {}  # (event, member) -> entries being checked now

    # ------------------------------------------------------------------ registering

    def register(self, tree: app_commands.CommandTree) -> None:
        menu = app_commands.ContextMenu(name="Enter in event", callback=self.enter_from_message)
        menu.guild_only = True
        menu.error(self._error)
        tree.add_command(servers_only(menu))

    async def _error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await answer_error(interaction, error)

    # ------------------------------------------------------------------ the card's buttons

    async def event_button(self, interaction: discord.Interaction, action: str, event_id: str) -> None:
        try:
            event = await self.store.event(event_id)
            if event is None or event.guild_id != interaction.guild_id:
                await interaction.response.send_message(_NOT_HERE, ephemeral=True)
                return
            if action == "join":
                await self._join(interaction, event)
            else:
                await self._end(interaction, event, action)
        except Exception as exc:
            await answer_error(interaction, exc)

    async def _join(self, interaction: discord.Interaction, event: StyleEvent) -> None:
        try:
            await self._check_entry(event, interaction.user.id)
        except Refused as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        await interaction.response.send_modal(EntryModal(self, event))

    async def _end(self, interaction: discord.Interaction, event: StyleEvent, action: str) -> None:
        user = interaction.user.id
        if user != event.host_id and not interaction.permissions.manage_events:
            await interaction.response.send_message(f"Only the host (<@{event.host_id}>) or members with Manage "
                                                    "Events can close or cancel this event.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if action == "close":
            done = await self.closer.close(event, by_user=user)
            text = "🏁 Closed: the gallery is posted under the card." if done else "The event has ended already."
        else:
            told = await self.closer.cancel(event, by_user=user)
            text = ("The event has ended already." if told is None else
                    f"✖️ Cancelled. {len(told)} member{'' if len(told) == 1 else 's'} with entries in line "
                    f"{'was' if len(told) == 1 else 'were'} told.")
        await interaction.followup.send(text, ephemeral=True)

    # ------------------------------------------------------------------ entering

    async def _check_entry(self, event: StyleEvent, user_id: int, holding: int = 0) -> None:
        """Refuse an entry the event does not take now (closed, or the member's entries used up,
        counting those being checked now; ``holding``: this one is among them)."""
        if not event.is_open or time.time() >= event.closes_at:
            raise closed_refusal(event)
        made = (await self.store.entries_of(event.event_id, user_id)
                + self._entering.get((event.event_id, user_id), 0) - holding)
        if made >= event.per_member:
            each = "one entry" if event.per_member == 1 else f"{event.per_member} entries"
            raise EventRefused(f"This event takes {each} per member, and you have entered already. Delete an entry "
                               "of yours (🗑️ under it) to enter another picture.")

    async def enter_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = message_picture(message, self.config.discord.api_base)
        if picture is None:
            await interaction.response.send_message(
                "That message has no picture the bot can use (an attached PNG, JPEG, WebP, GIF or BMP, or an embedded "
                "image on Discord).", ephemeral=True)
            return
        here = interaction.channel_id
        parent = getattr(interaction.channel, "parent_id", None)
        events = await self.store.open_events_in(interaction.guild_id or 0)
        event = next((e for e in events if here in (e.channel_id, e.thread_id) or parent == e.channel_id), None)
        if event is None:
            last = await self.store.latest_event_in(interaction.guild_id or 0, parent or here or 0)
            text = (str(closed_refusal(last)) if last is not None and time.time() - last.closes_at < _RECENT_S else
                    "There is no open event in this channel. A member with Manage Events can start one with "
                    "`/stylebot event start`.")
            await interaction.response.send_message(text, ephemeral=True)
            return
        await self.enter(interaction, event.event_id, picture)

    async def enter(self, interaction: discord.Interaction, event_id: str, picture: MessagePicture) -> None:
        """An entry (from the modal or the message command): checked, then a job through the JobStarter."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        event = await self.store.event(event_id)
        if event is None or event.guild_id != interaction.guild_id:
            await interaction.followup.send(_NOT_HERE, ephemeral=True)
            return
        key = (event.event_id, interaction.user.id)
        self._entering[key] = self._entering.get(key, 0) + 1  # held before the check: two forms at once are two
        try:
            try:
                await self._check_entry(event, interaction.user.id, holding=1)
            except Refused as exc:
                await interaction.followup.send(str(exc), ephemeral=True)
                return

            async def record(job: Job) -> None:  # before the job is in line, so it is an entry from its start
                await self.book.add(self._entry(interaction, event, job))

            request = JobRequest(event.preset, channel_id=event.entries_channel_id, on_accepted=record,
                                 notes=[f"🎨 Your entry in **{clip(event.title, 80)}**: it appears in <#"
                                        f"{event.entries_channel_id}> when painted, with a ⭐ Vote button."])
            job = await self.starter.start(interaction, request, lambda admission: self._gather(
                admission, event, picture))
            if job is not None:
                log.info("event entry", extra={"event_id": event.event_id, "job_id": job.job_id,
                                               "user_id": interaction.user.id})
                self.cards.entries_changed(event)
        finally:
            left = self._entering.get(key, 1) - 1
            if left:
                self._entering[key] = left
            else:
                self._entering.pop(key, None)

    async def _gather(self, admission: Admission, event: StyleEvent, picture: MessagePicture) -> JobInputs:
        if time.time() >= event.closes_at:  # its checks waited past the close
            raise closed_refusal(event)
        content = await self.gatherer.from_message(admission, picture, "your picture")
        if event.library_style is not None:
            style, label = await self.gatherer.style(admission, None, event.library_style, "style image", None)
            return JobInputs(content, style, label)
        style_png = await self.store.event_style(event.event_id)
        if style_png is None:
            raise UploadProblem("This event's style picture is missing, so it cannot take entries. Please tell its "
                                "host.")
        return JobInputs(content, style_png, event.style_label)

    @staticmethod
    def _entry(interaction: discord.Interaction, event: StyleEvent, job: Job) -> Entry:
        member = interaction.user
        return Entry(event_id=event.event_id, job_id=job.job_id, user_id=member.id,
                     author=clip(getattr(member, "display_name", None) or member.name, 40), entered_at=time.time())

    # ------------------------------------------------------------------ voting and deleting

    async def vote(self, interaction: discord.Interaction, job_id: str) -> None:
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
            entry = await self.store.entry(job_id)
            event = await self.store.event(entry.event_id) if entry is not None else None
            if entry is None or event is None or event.guild_id != interaction.guild_id:
                await interaction.followup.send(_NOT_HERE, ephemeral=True)
                return
            if entry.removed:
                await interaction.followup.send("That entry was removed from the event.", ephemeral=True)
                return
            if not event.is_open or time.time() >= event.closes_at:
                raise closed_refusal(event)
            voted, used = await self.store.toggle_vote(entry, interaction.user.id, VOTES_PER_MEMBER)
        except Refused as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        except Exception as exc:
            await answer_error(interaction, exc)
            return
        left = VOTES_PER_MEMBER - used
        if voted:
            text = f"⭐ Vote counted for {entry.author}'s entry. You have {left} of {VOTES_PER_MEMBER} votes left."
        else:
            text = f"Vote taken back from {entry.author}'s entry. You have {left} of {VOTES_PER_MEMBER} votes left."
        await interaction.followup.send(text + " The counts stay hidden until the close.", ephemeral=True)

    async def entry_deleted(self, job: Job) -> None:
        """Delete was pressed on a result (its author or a moderator of the channel): an entry
        leaves its event, its votes and its gallery."""
        if not await self.store.remove_entry(job.job_id):
            return
        self.book.forget(job.job_id)
        entry = await self.store.entry(job.job_id)
        event = await self.store.event(entry.event_id) if entry is not None else None
        if event is None:
            return
        log.info("event entry removed", extra={"event_id": event.event_id, "job_id": job.job_id})
        if event.is_open:
            self.cards.entries_changed(event)
        else:
            await self.closer.redraw(event)


@dataclass(frozen=True)
class StyleEvents:
    """The parts of style events the client holds: ``starter`` gives ``/stylebot`` its ``event``
    group, ``host`` answers the buttons and the message command, ``closer`` runs as a background loop."""

    starter: EventStarter
    host: EventHost
    closer: EventCloser


def style_events(client: discord.Client, config: Config, *, store: JobStore, book: EventBook, starter: JobStarter,
                 gatherer: PictureGatherer, settings: ServerSettings, checker: UploadChecker,
                 scheduler: Scheduler) -> StyleEvents:
    """Make and join the parts of style events."""
    cards = EventCards(client, store)
    closer = EventCloser(store, book, cards, scheduler)
    return StyleEvents(starter=EventStarter(config, store=store, gatherer=gatherer, settings=settings,
                                            checker=checker, cards=cards, closer=closer),
                       host=EventHost(config, store=store, book=book, starter=starter, gatherer=gatherer,
                                      cards=cards, closer=closer),
                       closer=closer)
