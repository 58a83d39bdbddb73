"""Each server's rules for ``/stylize``, set by its admins within the operator's ceilings.

No Discord here. A server's admins choose (with ``/stylebot-settings``) the channels where
``/stylize`` may be used, the largest preset members may use and how many jobs a member may
start in 24 hours. The operator's ``[limits]`` give the defaults and the ceilings: a server
can tighten them, never exceed them. Settings are clamped when they are read, so an operator
who lowers a ceiling later lowers it for every server at once.

:class:`ServerSettings` keeps every server's settings in memory and in the job store (one
owner: nothing else writes them); the refusals are :class:`~bot.scheduler.Refused`
sentences that say which rule applies and where or when the member may try again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nst_core.schedule import PRESETS

from bot.config import LimitsConfig
from bot.service.scheduler import Refused

if TYPE_CHECKING:
    from bot.store.job_store import JobStore

__all__ = ["GuildSettings", "Rules", "ServerSettings", "SettingRefused", "ChannelNotAllowed", "PresetNotAllowed",
           "QuotaReached", "PRESET_ORDER", "QUOTA_WINDOW_S", "MAX_CHANNELS", "effective_rules"]

log = logging.getLogger(__name__)

PRESET_ORDER: tuple[str, ...] = tuple(PRESETS)  # smallest first
QUOTA_WINDOW_S = 86400.0  # "jobs per day" is counted over the last 24 hours, not a calendar day
MAX_CHANNELS = 25  # channels one server may list (a Discord select menu's limit, a sane bound)


@dataclass(frozen=True)
class GuildSettings:
    """What one server's admins chose; None: the operator's value."""

    guild_id: int
    channels: tuple[int, ...] = ()  # where /stylize may be used; empty: everywhere
    max_preset: str | None = None
    daily_jobs: int | None = None  # 0: no limit (only where the operator sets none either)


@dataclass(frozen=True)
class Rules:
    """The rules in force in one server: its settings within the operator's ceilings."""

    channels: tuple[int, ...]
    max_preset: str
    daily_jobs: int  # 0: no limit

    def allowed_presets(self) -> tuple[str, ...]:
        return PRESET_ORDER[: PRESET_ORDER.index(self.max_preset) + 1]


def _rank(preset: str) -> int:
    return PRESET_ORDER.index(preset)


def effective_rules(settings: GuildSettings, limits: LimitsConfig) -> Rules:
    ceiling = limits.max_preset
    max_preset = ceiling
    if settings.max_preset in PRESET_ORDER and _rank(settings.max_preset) < _rank(ceiling):
        max_preset = settings.max_preset
    operator_daily = limits.daily_jobs_per_member
    daily = operator_daily if settings.daily_jobs is None else settings.daily_jobs
    if operator_daily and (daily == 0 or daily > operator_daily):
        daily = operator_daily
    return Rules(channels=settings.channels, max_preset=max_preset, daily_jobs=daily)


# --------------------------------------------------------------------------- refusals


class SettingRefused(Exception):
    """An admin's change that the operator's ceilings do not allow; ``str()`` says why."""


class ChannelNotAllowed(Refused):
    def __init__(self, channels: tuple[int, ...]) -> None:
        where = ", ".join(f"<#{c}>" for c in channels[:10]) + (" …" if len(channels) > 10 else "")
        super().__init__(f"In this server, /stylize can be used only in {where}. Please try there.")


class PresetNotAllowed(Refused):
    def __init__(self, preset: str, rules: Rules) -> None:
        allowed = " or ".join(rules.allowed_presets())
        super().__init__(f"This server allows presets up to **{rules.max_preset}**, so `{preset}` cannot be used "
                         f"here. Please pick {allowed}.")


class QuotaReached(Refused):
    def __init__(self, limit: int, retry_at: float) -> None:
        self.limit, self.retry_at = limit, retry_at
        jobs = "job" if limit == 1 else "jobs"
        # Discord shows <t:…:R> in the reader's own time zone, as "in 3 hours".
        super().__init__(f"You have used your {limit} {jobs} for the last 24 hours in this server (a rule of "
                         f"this server). You can start another <t:{int(retry_at) + 1}:R>.")


# --------------------------------------------------------------------------- the settings' owner


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
        if _rank(preset) > _rank(rules.max_preset):
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
            if preset is not None and (preset not in PRESET_ORDER or _rank(preset) > _rank(self.limits.max_preset)):
                allowed = " or ".join(PRESET_ORDER[: _rank(self.limits.max_preset) + 1])
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
