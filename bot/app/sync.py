"""Syncing the command definitions with Discord: to the development guilds every time,
globally only when the definitions changed (Discord limits how many commands an application
may create per day) or ``--sync`` asks."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import discord
from discord import app_commands

from bot.config import Config

__all__ = ["commands_digest", "sync_commands", "SYNC_STATE_FILE"]

log = logging.getLogger("bot")

SYNC_STATE_FILE = "command_sync.json"


def commands_digest(tree: app_commands.CommandTree) -> str:
    """A hash of the global command definitions as Discord would receive them."""
    payload = [cmd.to_dict(tree) for cmd in sorted(tree.get_commands(), key=lambda c: c.name)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


async def sync_commands(client: discord.Client, tree: app_commands.CommandTree, config: Config, *,
                        force: bool = False) -> bool:
    """Sync to the development guilds, and globally only when needed; True if it synced globally.

    Discord limits how many commands an application may create per day, so the global
    definitions are only sent again when their hash differs from the one recorded after
    the last successful sync (kept in a small file beside the storage path).
    """
    digest = commands_digest(tree)  # before copying to guilds: the global set only
    for guild_id in config.discord.dev_guild_ids:
        guild = discord.Object(guild_id)
        tree.copy_global_to(guild=guild)
        try:
            await tree.sync(guild=guild)
            log.info("commands synced to development guild", extra={"guild_id": guild_id})
        except discord.HTTPException as exc:
            log.warning("command sync to a development guild failed",
                        extra={"guild_id": guild_id, "status": exc.status, "code": exc.code})
    state_path = config.storage.state_dir / SYNC_STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    key = str(client.application_id)
    if not force and state.get(key) == digest:
        log.info("global commands unchanged; not syncing", extra={"digest": digest[:12]})
        return False
    try:
        await tree.sync()
    except discord.HTTPException as exc:
        log.error("global command sync failed", extra={"status": exc.status, "code": exc.code})
        return False
    state[key] = digest
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, state_path)
    except OSError as exc:
        log.warning("could not record the command hash", extra={"path": str(state_path), "error": str(exc)})
    log.info("commands synced globally", extra={"digest": digest[:12], "forced": force})
    return True
