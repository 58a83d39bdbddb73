"""The buttons under the bot's messages; each carries its state in its custom id, so it keeps
working after a restart (discord.py's dynamic items)."""

from __future__ import annotations

import re

import discord

__all__ = ["CancelButton", "cancel_view"]


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
        commands = getattr(interaction.client, "style_commands", None)  # bot.commands.StyleCommands
        if commands is None:
            await interaction.response.send_message("The bot is starting up; please try again in a moment.",
                                                    ephemeral=True)
            return
        await commands.cancel_job(interaction, self.job_id)


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view
