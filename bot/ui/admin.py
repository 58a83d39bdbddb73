"""``/stylebot-settings``: a server's admins set its rules for ``/stylize``.

Shown to members with Manage Server by default (the command's default member permissions,
which a server may change) and checked again when run. The rules themselves, and the
operator's ceilings they stay within, are :mod:`bot.core.rules` and :mod:`bot.service.server_settings`.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Literal

import discord
from discord import app_commands

from nst_core.schedule import PRESETS

from bot.config import LimitsConfig
from bot.ui.errors import answer_error
from bot.core.rules import SettingRefused, MAX_CHANNELS
from bot.service.server_settings import ServerSettings
from bot.store.errors import StoreError

__all__ = ["SettingsGroup"]

log = logging.getLogger(__name__)

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


class SettingsGroup(app_commands.Group, name="stylebot-settings", description="This server's rules for /stylize",
                    guild_only=True, default_permissions=discord.Permissions(manage_guild=True)):
    def __init__(self, settings: ServerSettings, limits: LimitsConfig, guild_share: Callable[[], int]) -> None:
        super().__init__()
        self.settings = settings
        self.limits = limits
        self.guild_share = guild_share  # the scheduler's per-server share of the line

    @app_commands.command(name="show", description="Show this server's rules for /stylize")
    async def show(self, interaction: discord.Interaction) -> None:
        if await self._admin_only(interaction):
            await interaction.response.send_message(self.text(interaction.guild_id or 0), ephemeral=True)

    @app_commands.command(name="channels", description="Choose the channels where /stylize may be used")
    @app_commands.describe(action="allow: add the channel; remove: take it off; everywhere: no channel rule",
                           channel="The channel to allow or remove")
    async def channels(self, interaction: discord.Interaction, action: Literal["allow", "remove", "everywhere"],
                       channel: discord.TextChannel | discord.Thread | None = None) -> None:
        if not await self._admin_only(interaction):
            return
        if action == "everywhere":
            await self._change(interaction, self.settings.update, channels=())
        elif channel is None:
            await interaction.response.send_message(f"Please name the channel to {action}.", ephemeral=True)
        else:
            await self._change(interaction, self.settings.allow_channel, channel.id, action == "allow")

    @app_commands.command(name="max-preset", description="The largest preset members may use in this server")
    @app_commands.describe(preset="fast, balanced or best (within the bot operator's limit)")
    async def max_preset(self, interaction: discord.Interaction, preset: PresetName) -> None:  # type: ignore[valid-type]
        if await self._admin_only(interaction):
            await self._change(interaction, self.settings.update, max_preset=preset)

    @app_commands.command(name="daily-quota", description="Jobs one member may start in 24 hours here (0: no limit)")
    @app_commands.describe(jobs="Jobs per member per 24 hours; 0 for no limit (within the operator's limit)")
    async def daily_quota(self, interaction: discord.Interaction, jobs: app_commands.Range[int, 0, 10_000]) -> None:
        if await self._admin_only(interaction):
            await self._change(interaction, self.settings.update, daily_jobs=int(jobs))

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await answer_error(interaction, error)

    async def _admin_only(self, interaction: discord.Interaction) -> bool:
        # The command's default permissions only hide it; a server can show it to anyone.
        permissions = interaction.permissions
        if interaction.guild_id is not None and permissions is not None and permissions.manage_guild:
            return True
        await interaction.response.send_message("Only members with the Manage Server permission can change this "
                                                "server's rules for the bot.", ephemeral=True)
        return False

    async def _change(self, interaction: discord.Interaction, change: Callable[..., Awaitable[object]],
                      *args: object, **changes: object) -> None:
        guild_id = interaction.guild_id or 0
        try:
            await change(guild_id, interaction.user.id, *args, **changes)
        except SettingRefused as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        except StoreError:
            log.exception("server settings could not be saved", extra={"guild_id": guild_id})
            await interaction.response.send_message("The settings could not be saved right now. Please try again "
                                                    "later.", ephemeral=True)
            return
        await interaction.response.send_message("Saved.\n" + self.text(guild_id), ephemeral=True)

    def text(self, guild_id: int) -> str:
        """The rules in force in a server, with the operator's limits beside them."""
        rules = self.settings.rules(guild_id)
        limits = self.limits
        where = ", ".join(f"<#{c}>" for c in rules.channels) if rules.channels else "every channel"
        quota = f"{rules.daily_jobs} per member per 24 hours" if rules.daily_jobs else "no limit"
        ceiling = (f"at most {limits.daily_jobs_per_member}" if limits.daily_jobs_per_member else "no limit")
        return "\n".join([
            f"**/stylize may be used in:** {where} (at most {MAX_CHANNELS} channels)",
            f"**Largest preset:** {rules.max_preset} (the bot's operator allows up to {limits.max_preset})",
            f"**Jobs per member:** {quota} (the bot's operator allows {ceiling})",
            f"**Jobs waiting from this server:** at most {self.guild_share()}",
        ])
