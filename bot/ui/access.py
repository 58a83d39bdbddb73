"""Who may do what, and where: the bot's commands are for servers, a job is its requester's
(or a moderator's of its own channel), and a thread counts as its parent channel."""

from __future__ import annotations

from typing import TypeVar

import discord
from discord import app_commands

from bot.core.job import Job

__all__ = ["servers_only", "may_cancel", "channel_ids"]

CommandT = TypeVar("CommandT", app_commands.Command, app_commands.Group, app_commands.ContextMenu)


def servers_only(command: CommandT) -> CommandT:
    """Installable to servers and usable in them only: in a DM or through a member's own
    install no server's rules or quota would apply."""
    command.allowed_contexts = app_commands.AppCommandContext(guild=True, dm_channel=False, private_channel=False)
    command.allowed_installs = app_commands.AppInstallationType(guild=True, user=False)
    return command


def may_cancel(interaction: discord.Interaction, job: Job) -> bool:
    """The requester, or a member with Manage Messages in the job's own channel of its own server."""
    if interaction.user.id == job.user_id:
        return True
    if job.guild_id is None or interaction.guild_id != job.guild_id:
        return False
    if interaction.channel_id == job.channel_id:
        permissions = interaction.permissions  # Discord computed them for this channel, overwrites included
    else:
        guild = interaction.guild
        channel = guild.get_channel_or_thread(job.channel_id) if guild is not None else None
        member = interaction.user
        if channel is None or not isinstance(member, discord.Member):
            return False  # cannot tell: refuse rather than guess
        permissions = channel.permissions_for(member)
    return bool(permissions and permissions.manage_messages)


def channel_ids(interaction: discord.Interaction) -> tuple[int, ...]:
    """Where a command runs, for the channel rule: a thread counts as its parent channel too."""
    ids = [interaction.channel_id or 0]
    parent = getattr(interaction.channel, "parent_id", None)
    if parent:
        ids.append(parent)
    return tuple(ids)
