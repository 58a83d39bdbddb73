"""A server's rules for ``/stylize``: what its admins chose, within the operator's ceilings.

A server's admins choose the channels where ``/stylize`` may be used, the largest preset
members may use and how many jobs a member may start in 24 hours; the operator's
``[limits]`` give the defaults and the ceilings. :func:`effective_rules` clamps one to the
other when they are read, so an operator who lowers a ceiling lowers it for every server at
once. No Discord, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nst_core.schedule import PRESETS

if TYPE_CHECKING:
    from bot.config import LimitsConfig

__all__ = ["GuildSettings", "Rules", "SettingRefused", "effective_rules", "PRESET_ORDER", "QUOTA_WINDOW_S",
           "MAX_CHANNELS", "preset_rank"]

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


def preset_rank(preset: str) -> int:
    return PRESET_ORDER.index(preset)


def effective_rules(settings: GuildSettings, limits: "LimitsConfig") -> Rules:
    ceiling = limits.max_preset
    max_preset = ceiling
    if settings.max_preset in PRESET_ORDER and preset_rank(settings.max_preset) < preset_rank(ceiling):
        max_preset = settings.max_preset
    operator_daily = limits.daily_jobs_per_member
    daily = operator_daily if settings.daily_jobs is None else settings.daily_jobs
    if operator_daily and (daily == 0 or daily > operator_daily):
        daily = operator_daily
    return Rules(channels=settings.channels, max_preset=max_preset, daily_jobs=daily)


class SettingRefused(Exception):
    """An admin's change that the operator's ceilings do not allow; ``str()`` says why."""
