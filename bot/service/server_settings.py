"""The owner of every server's settings for ``/stylize`` (the rules are :mod:`bot.core.rules`).

No Discord here. :class:`ServerSettings` keeps each server's settings in memory and in the
job store (nothing else writes them), lets admins change them (``/stylebot-settings``)
within the operator's ceilings, and checks a request against them: the refusals
(:mod:`bot.core.refusals`) say which rule applies and where or when the member may try again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from bot.config import LimitsConfig
from bot.core.refusals import ChannelNotAllowed, PresetNotAllowed, QuotaReached
from bot.core.rules import (
    MAX_CHANNELS, PRESET_ORDER, QUOTA_WINDOW_S, GuildSettings, Rules, SettingRefused, effective_rules, preset_rank,
)

if TYPE_CHECKING:
    from bot.store.job_store import JobStore

__all__ = ["ServerSettings"]

log = logging.getLogger(__name__)

class ServerSettings:
    """Every server's settings, cached in memory, persisted in the job store."""

    def __init__(self, limits: LimitsConfig, store: "JobStore | None" = None) -> None:
        self.limits = limits
        self.store = store
        self._settings: dict[int, GuildSettings] = {}
        self._lock = asyncio.Lock()  # one change at a time, each from the settings the last one left

    async def load(self) -> None:
        if self.store is not None:
            self._settings = {s.guild_id: s for s in await self.store.load_settings()}

    def get(self, guild_id: int) -> GuildSettings:
        return self._settings.get(guild_id) or GuildSettings(guild_id)

    def rules(self, guild_id: int | None) -> Rules:
        if guild_id is None:
            return effective_rules(GuildSettings(0), self.limits)
        return effective_rules(self.get(guild_id), self.limits)

    # -- checks at /stylize

    def check_channel(self, guild_id: int | None, channel_ids: tuple[int, ...]) -> None:
        """``channel_ids``: where the command runs (a thread also counts its parent channel)."""
        rules = self.rules(guild_id)
        if rules.channels and not any(c in rules.channels for c in channel_ids):
            raise ChannelNotAllowed(rules.channels)

    def check_preset(self, guild_id: int | None, preset: str) -> None:
        rules = self.rules(guild_id)
        if preset_rank(preset) > preset_rank(rules.max_preset):
            raise PresetNotAllowed(preset, rules)

    def daily_limit(self, guild_id: int | None) -> int:
        return self.rules(guild_id).daily_jobs

    async def check_quota(self, guild_id: int | None, user_id: int) -> None:
        """Refuse early (before any download); the store checks again, atomically, at accept."""
        limit = self.daily_limit(guild_id)
        if not limit or self.store is None or guild_id is None:
            return
        _, leaves = await self.store.usage(guild_id, user_id, time.time() - QUOTA_WINDOW_S, limit)
        if leaves is not None:
            raise QuotaReached(limit, leaves + QUOTA_WINDOW_S)

    # -- changes by a server's admins

    async def allow_channel(self, guild_id: int, by_user: int, channel_id: int, allowed: bool) -> GuildSettings:
        """Add ``channel_id`` to the channels where /stylize may be used, or take it off."""
        async with self._lock:
            current = self.get(guild_id).channels
            chosen = ((*current, channel_id) if channel_id not in current else current) if allowed else tuple(
                c for c in current if c != channel_id)
            return await self._update(guild_id, by_user, channels=chosen)

    async def update(self, guild_id: int, by_user: int, **changes: object) -> GuildSettings:
        """Apply ``changes`` (fields of :class:`GuildSettings`) after checking them against the
        operator's ceilings; raises :class:`SettingRefused`."""
        async with self._lock:
            return await self._update(guild_id, by_user, **changes)

    async def _update(self, guild_id: int, by_user: int, **changes: object) -> GuildSettings:
        if "max_preset" in changes:
            preset = changes["max_preset"]
            if preset is not None and (preset not in PRESET_ORDER or preset_rank(preset) > preset_rank(self.limits.max_preset)):
                allowed = " or ".join(PRESET_ORDER[: preset_rank(self.limits.max_preset) + 1])
                raise SettingRefused(f"The bot's operator allows presets up to **{self.limits.max_preset}**, so "
                                     f"this server can choose {allowed}.")
        if "daily_jobs" in changes:
            daily = changes["daily_jobs"]
            ceiling = self.limits.daily_jobs_per_member
            if daily is not None and (daily < 0 or (ceiling and (daily == 0 or daily > ceiling))):
                raise SettingRefused(f"The bot's operator allows at most {ceiling} jobs per member per day, so "
                                     f"please choose a number from 1 to {ceiling}.")
        if "channels" in changes and len(changes["channels"]) > MAX_CHANNELS:  # type: ignore[arg-type]
            raise SettingRefused(f"At most {MAX_CHANNELS} channels can be listed; to allow every channel, "
                                 "choose 'everywhere'.")
        new = dataclasses.replace(self.get(guild_id), **changes)  # type: ignore[arg-type]
        if self.store is not None:
            await self.store.save_settings(new, by_user)
        self._settings[guild_id] = new
        log.info("server settings changed", extra={"guild_id": guild_id, "by": by_user,
                                                   "changes": {k: str(v) for k, v in changes.items()}})
        return new
