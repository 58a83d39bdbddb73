"""The two message commands (a message's Apps menu).

* "Stylize this image": a private menu of styles, then a job (through
  :class:`~bot.ui.job_start.JobStarter`) with that message's picture as the content.
* "Use as my style": the picture becomes the member's style in this server for
  :data:`SAVED_STYLE_S`; ``/stylize`` without a style uses it.

Pictures are taken from a message by :class:`~bot.ui.gather.PictureGatherer`: from
Discord's own media hosts only, with the same limits and checks as uploads.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.core.refusals import Refused, UploadProblem
from bot.intake.uploads import Admission, UploadChecker
from bot.render import words
from bot.render.views import SAVED_STYLE_VALUE, StylePicker
from bot.store.job_store import JobStore
from bot.store.errors import ServerSpoolFull, SpoolFull, StoreError
from bot.ui.access import servers_only
from bot.ui.errors import answer_error
from bot.ui.gather import JobInputs, MessagePicture, PictureGatherer, message_picture
from bot.ui.job_start import JobRequest, JobStarter

__all__ = ["MessageCommands", "SAVED_STYLE_S"]

log = logging.getLogger(__name__)

SAVED_STYLE_S = 24 * 3600.0


class MessageCommands:
    """"Stylize this image" and "Use as my style"; registers them on a command tree."""

    def __init__(self, starter: JobStarter, gatherer: PictureGatherer, *, checker: UploadChecker, store: JobStore,
                 api_base: str = "") -> None:
        self.starter = starter
        self.gatherer = gatherer
        self.checker = checker
        self.store = store
        self.api_base = api_base  # Discord's REST base when pointed elsewhere (its media hosts follow it)

    def register(self, tree: app_commands.CommandTree) -> None:
        for name, callback in (("Stylize this image", self.stylize_this), ("Use as my style", self.use_as_style)):
            menu = app_commands.ContextMenu(name=name, callback=callback)
            menu.guild_only = True
            menu.error(self._error)
            tree.add_command(servers_only(menu))

    async def _error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await answer_error(interaction, error)

    def _picture(self, message: discord.Message) -> MessagePicture | None:
        return message_picture(message, self.api_base)

    async def stylize_this(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = self._picture(message)
        if picture is None:
            await _no_picture(interaction)
            return
        options = [(entry.name, entry.label, "") for entry in self.gatherer.library.entries()][:24]
        saved = await self.store.saved_style_label(interaction.guild_id, interaction.user.id) \
            if interaction.guild_id is not None else None
        if saved is not None:
            options.insert(0, (SAVED_STYLE_VALUE, "My saved style", words.clip(saved, 100)))
        if not options:
            await interaction.response.send_message(
                "There are no styles to pick from: the bot's library is empty and you have no saved style. Save "
                "one with Apps → \"Use as my style\" on a message with a picture.", ephemeral=True)
            return

        async def picked(choice: discord.Interaction, value: str) -> None:
            try:  # the menu goes at once: one pick, one job
                await choice.response.edit_message(content=f"Starting `{words.clip(picture.filename, 60)}`…", view=None)
                await self.starter.start(choice, JobRequest(None), lambda admission: self._gather(
                    choice, admission, picture, value))
            except Exception as exc:
                await answer_error(choice, exc)

        picker = StylePicker(options, picked)
        await interaction.response.send_message(f"Pick a style for `{words.clip(picture.filename, 60)}`:", view=picker,
                                                ephemeral=True)
        picker.opened_by = interaction

    async def _gather(self, interaction: discord.Interaction, admission: Admission, picture: MessagePicture,
                      style_value: str) -> JobInputs:
        gatherer = self.gatherer
        content = await gatherer.from_message(admission, picture, "content image")
        saved = None
        if style_value == SAVED_STYLE_VALUE:
            saved = await gatherer.saved_style(interaction.guild_id, interaction.user.id)
            if saved is None:
                raise UploadProblem("Your saved style has expired. Save one again with Apps → \"Use as my style\".")
        style, label = await gatherer.style(admission, None, None if saved else style_value, "style image", saved)
        return JobInputs(content, style, label)

    async def use_as_style(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = self._picture(message)
        if picture is None:
            await _no_picture(interaction)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            async with self.checker.admit(interaction.user.id, interaction.guild_id) as admission:
                data = await self.gatherer.from_message(admission, picture, "style image")
            if interaction.guild_id is None:
                raise StoreError("no server")
            await self.store.save_style(interaction.guild_id, interaction.user.id, picture.filename, data, SAVED_STYLE_S)
        except Refused as exc:
            await interaction.followup.send(str(exc), ephemeral=True)
            return
        except ServerSpoolFull as exc:
            text = ("That picture is too large to keep as a style in this server. Please use a smaller one."
                    if exc.needed > exc.share else
                    "This server's share of the bot's storage is full right now, so the style was not saved. "
                    "Please try again later.")
            await interaction.followup.send(text, ephemeral=True)
            return
        except SpoolFull:
            await interaction.followup.send("The bot's storage is full right now, so the style was not saved. "
                                            "Please try again later.", ephemeral=True)
            return
        except StoreError:
            log.exception("saved style not written")
            await interaction.followup.send("The bot cannot save styles right now. Please try again later.",
                                            ephemeral=True)
            return
        log.info("style saved", extra={"user_id": interaction.user.id, "guild_id": interaction.guild_id})
        await interaction.followup.send(
            f"🎨 Saved `{words.clip(picture.filename, 60)}` as your style here for {SAVED_STYLE_S / 3600:g} hours. "
            "/stylize without a style (and without library_style) uses it, and \"Stylize this image\" offers it.",
            ephemeral=True)


async def _no_picture(interaction: discord.Interaction) -> None:
    await interaction.response.send_message(
        "That message has no picture the bot can use (an attached PNG, JPEG, WebP, GIF or BMP, or an embedded "
        "image on Discord).", ephemeral=True)
