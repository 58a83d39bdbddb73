"""How a command that failed unexpectedly is answered: logged with its traceback, and the
member told privately, whether or not the interaction was answered already."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

__all__ = ["answer_error"]

log = logging.getLogger("bot")

_SORRY = "Something went wrong while handling that command. It has been logged; please try again."


async def answer_error(interaction: discord.Interaction, error: app_commands.AppCommandError | Exception) -> None:
    original = getattr(error, "original", error)
    log.error("command failed", exc_info=(type(original), original, original.__traceback__),
              extra={"command": interaction.command.qualified_name if interaction.command else None})
    try:
        if interaction.response.is_done():
            await interaction.followup.send(_SORRY, ephemeral=True)
        else:
            await interaction.response.send_message(_SORRY, ephemeral=True)
    except discord.HTTPException:
        pass
