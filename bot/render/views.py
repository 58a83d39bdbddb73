"""The buttons under the bot's messages; each carries its state in its custom id, so it keeps
working after a restart (discord.py's dynamic items). A press goes to the client's
``buttons`` (:class:`ButtonHandlers`, :class:`bot.ui.buttons.ResultButtons` in the bot)."""

from __future__ import annotations

import re
from typing import Awaitable, Callable, Protocol, Sequence

import discord

from bot.core.remix import ACTIONS

__all__ = ["ButtonHandlers", "ButtonClient", "CancelButton", "cancel_view", "ResultButton", "result_view",
           "StylePicker", "SAVED_STYLE_VALUE"]

_STARTING = "The bot is starting up; please try again in a moment."


class ButtonHandlers(Protocol):
    async def cancel(self, interaction: discord.Interaction, job_id: str) -> None: ...
    async def press(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...


class ButtonClient(discord.AutoShardedClient):
    """A client whose buttons' presses go to :attr:`buttons` (None until it is wired)."""

    buttons: ButtonHandlers | None = None


def _handlers(interaction: discord.Interaction) -> ButtonHandlers | None:
    client = interaction.client
    return client.buttons if isinstance(client, ButtonClient) else None


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"nstbot:cancel:(?P<job_id>[0-9a-f]{4,32})"):
    """Cancel for one job; the job id lives in the custom id, so it works after a restart."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger,
                                           custom_id=f"nstbot:cancel:{job_id}", emoji="🛑"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> "CancelButton":
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        handlers = _handlers(interaction)
        if handlers is None:
            await interaction.response.send_message(_STARTING, ephemeral=True)
            return
        await handlers.cancel(interaction, self.job_id)


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


# --------------------------------------------------------------------------- the buttons under a result

# How each of bot.core.remix.ACTIONS looks: (label, emoji, row).
_RESULT_BUTTONS = {
    "again": ("Again", "🎲", 0), "more": ("More style", "➕", 0), "less": ("Less style", "➖", 0),
    "colours": ("Colours", "🎨", 0), "sharper": ("Sharper", "⬆️", 0),
    "compare": ("Before | after", "🔍", 1), "delete": ("Delete", "🗑️", 1),
}
assert tuple(_RESULT_BUTTONS) == ACTIONS, "every action has one button, in order"


class ResultButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=rf"nstbot:(?P<action>{'|'.join(ACTIONS)}):(?P<job_id>[0-9a-f]{{4,32}})"):
    """One button under a result; the action and the result's job id live in the custom id."""

    def __init__(self, action: str, job_id: str) -> None:
        label, emoji, row = _RESULT_BUTTONS[action]
        style = discord.ButtonStyle.secondary if action == "delete" else discord.ButtonStyle.primary
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, row=row,
                                           custom_id=f"nstbot:{action}:{job_id}"))
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> "ResultButton":
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        handlers = _handlers(interaction)
        if handlers is None:
            await interaction.response.send_message(_STARTING, ephemeral=True)
            return
        await handlers.press(interaction, self.action, self.job_id)


def result_view(job_id: str, *, hide: Sequence[str] = ()) -> discord.ui.View:
    """The buttons under ``job_id``'s result, less those in ``hide``."""
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        if action not in hide:
            view.add_item(ResultButton(action, job_id))
    return view


# --------------------------------------------------------------------------- "Stylize this image"

SAVED_STYLE_VALUE = "nstbot:saved"  # the picker's option for the member's saved style


class StylePicker(discord.ui.View):
    """An ephemeral menu of styles for a picture chosen with "Stylize this image"; the pick
    goes to ``on_pick(interaction, value)``. Only whoever opened it sees it (ephemeral)."""

    def __init__(self, options: Sequence[tuple[str, str, str]], on_pick: Callable[[discord.Interaction, str],
                 Awaitable[None]], *, timeout: float = 300.0) -> None:
        """``options``: (value, label, description) each, at most 25 (Discord's limit)."""
        super().__init__(timeout=timeout)
        self._on_pick = on_pick
        select = discord.ui.Select(custom_id="nstbot:pick-style", placeholder="Pick a style for this picture",
                                   min_values=1, max_values=1,
                                   options=[discord.SelectOption(value=v, label=label[:100],
                                                                 description=(d[:100] or None))
                                            for v, label, d in options[:25]])
        select.callback = self._picked  # type: ignore[method-assign]
        self.select = select
        self.add_item(select)
        self.opened_by: discord.Interaction | None = None  # set once sent, to take the menu away later

    async def on_timeout(self) -> None:
        if self.opened_by is not None:  # an unused menu would otherwise answer "interaction failed"
            try:
                await self.opened_by.edit_original_response(content="This menu expired; run the command again.",
                                                            view=None)
            except discord.HTTPException:
                pass  # the menu is gone already (dismissed, or its token expired)

    async def _picked(self, interaction: discord.Interaction) -> None:
        if self.is_finished():  # a second pick before the menu went away
            await interaction.response.send_message("That menu was used already.", ephemeral=True)
            return
        self.stop()  # one pick per menu
        await self._on_pick(interaction, self.select.values[0])
