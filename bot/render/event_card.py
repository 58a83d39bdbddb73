"""What a style event looks like on Discord: its card (an embed with the style's thumbnail, the
host, the closing time as a Discord timestamp, the entries so far, the winners once closed)
and its buttons. Each button carries its state in its custom id (``nstbot:event-<action>:<event
id>``, ``nstbot:vote:<job id>``), so it keeps working after a restart; a press goes to the
client's ``event_host`` (:class:`EventHandlers`, :class:`bot.ui.events.EventHost` in the bot)."""

from __future__ import annotations

import re
from typing import Protocol, Sequence

import discord

from bot.core.event import VOTES_PER_MEMBER, EventState, Standing, StyleEvent, discord_time
from bot.render.views import ResultButton
from bot.render.words import clip

__all__ = ["EventHandlers", "EventButton", "VoteButton", "card_embed", "card_view", "entry_view", "STYLE_THUMB",
           "EVENT_ACTIONS"]

STYLE_THUMB = "event-style.png"  # the card's thumbnail, attached with the card
EVENT_ACTIONS = ("join", "close", "cancel")
_STARTING = "The bot is starting up; please try again in a moment."
_COLOURS = {EventState.OPEN: 0x2E86C1, EventState.CLOSED: 0xD4AC0D, EventState.CANCELLED: 0x7F8C8D}
_MEDALS = ("🥇", "🥈", "🥉")


class EventHandlers(Protocol):
    async def event_button(self, interaction: discord.Interaction, action: str, event_id: str) -> None: ...
    async def vote(self, interaction: discord.Interaction, job_id: str) -> None: ...


def _handlers(interaction: discord.Interaction) -> EventHandlers | None:
    # The client wires its event host once its parts are made; before that a press is told to retry.
    return getattr(interaction.client, "event_host", None)


class EventButton(discord.ui.DynamicItem[discord.ui.Button],
                  template=rf"nstbot:event-(?P<action>{'|'.join(EVENT_ACTIONS)}):(?P<event_id>[0-9a-f]{{4,32}})"):
    """Join, Close or Cancel under an event's card."""

    _LOOKS = {"join": ("Join", "🎨", discord.ButtonStyle.success), "close": ("Close now", "🏁",
                                                                          discord.ButtonStyle.secondary),
              "cancel": ("Cancel event", "✖️", discord.ButtonStyle.danger)}

    def __init__(self, action: str, event_id: str) -> None:
        label, emoji, style = self._LOOKS[action]
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style,
                                           custom_id=f"nstbot:event-{action}:{event_id}"))
        self.action, self.event_id = action, event_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> "EventButton":
        return cls(match["action"], match["event_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        handlers = _handlers(interaction)
        if handlers is None:
            await interaction.response.send_message(_STARTING, ephemeral=True)
            return
        await handlers.event_button(interaction, self.action, self.event_id)


class VoteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"nstbot:vote:(?P<job_id>[0-9a-f]{4,32})"):
    """Vote for one entry (a second press takes the vote back)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Vote", emoji="⭐", style=discord.ButtonStyle.primary,
                                           custom_id=f"nstbot:vote:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> "VoteButton":
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        handlers = _handlers(interaction)
        if handlers is None:
            await interaction.response.send_message(_STARTING, ephemeral=True)
            return
        await handlers.vote(interaction, self.job_id)


def card_view(event: StyleEvent) -> discord.ui.View | None:
    """Join (and the host's Close and Cancel) while the event is open; none after."""
    if not event.is_open:
        return None
    view = discord.ui.View(timeout=None)
    for action in EVENT_ACTIONS:
        view.add_item(EventButton(action, event.event_id))
    return view


def entry_view(job_id: str) -> discord.ui.View:
    """Under an entry: Vote, and Delete (its author, or a moderator of the channel)."""
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(job_id))
    view.add_item(ResultButton("delete", job_id))
    return view


def card_embed(event: StyleEvent, *, entries: int, standings: Sequence[Standing] = (),
               gallery_url: str | None = None, thumbnail: bool = True) -> discord.Embed:
    """The event's card. Open: how to take part and when it closes; closed: the winners."""
    embed = discord.Embed(title=clip(f"🎨 {event.title}", 256), colour=_COLOURS[event.state])
    style = clip(event.style_label, 200)
    if event.is_open:
        embed.description = (f"Paint a picture of yours in the style of **{style}**. Press **Join** to enter (or, "
                             "on a message with a picture, Apps → **Enter in event**). Entries appear in the thread "
                             f"below, each with a ⭐ Vote button: {VOTES_PER_MEMBER} votes each, not for your own "
                             "entry; the counts stay hidden until the close.")
        embed.add_field(name="Closes", value=f"{discord_time(event.closes_at, 'R')} ({discord_time(event.closes_at)})")
    elif event.state is EventState.CANCELLED:
        embed.description = f"Style: **{style}**. This event was cancelled by its host."
    else:
        embed.description = f"Style: **{style}**. Closed {discord_time(event.closes_at)}."
        if standings:
            winners = [s for s in standings if s.place <= 3][:10]
            embed.add_field(name="Winners", value=clip("\n".join(
                f"{_MEDALS[s.place - 1]} <@{s.entry.user_id}> · {s.votes} vote{'' if s.votes == 1 else 's'}"
                for s in winners), 1024), inline=False)
        else:
            embed.add_field(name="Winners", value="No entries were finished in time.", inline=False)
        if gallery_url:
            embed.add_field(name="Gallery", value=f"[Every entry with its votes]({gallery_url})", inline=False)
    embed.add_field(name="Host", value=f"<@{event.host_id}>")
    embed.add_field(name="Entries", value=str(entries))
    if event.per_member > 1:
        embed.add_field(name="Entries each", value=str(event.per_member))
    embed.add_field(name="Preset", value=event.preset)
    if thumbnail:
        embed.set_thumbnail(url=f"attachment://{STYLE_THUMB}")
    embed.set_footer(text=f"Event {event.event_id}")
    return embed
