"""Every way the bot says no to a request, written once.

A :class:`Refused` is answered privately with ``str(exc)``, a polite sentence that says what
to do next; its class's :attr:`~Refused.reason` is the label it is counted under in the
``requests_refused_total`` metric (:data:`REASONS` lists them all, for the metrics). No
Discord here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from bot.core.rules import Rules

__all__ = [
    "Refused", "UserLimitReached", "ServerLimitReached", "LineFull", "NotAccepting", "WorkersUnavailable",
    "StorageUnavailable", "NotInServer", "ChannelNotAllowed", "PresetNotAllowed", "QuotaReached", "ChecksBusy",
    "UploadProblem", "PicturesExpired", "EventRefused", "REASONS", "SHUTTING_DOWN",
]

SHUTTING_DOWN = "The bot is shutting down and is not taking new jobs. Please try again in a few minutes."


class Refused(Exception):
    """A request the bot will not take; ``str()`` is a polite sentence for the member."""

    reason: ClassVar[str]  # the metric's ``reason`` label


# --------------------------------------------------------------------------- the line


class UserLimitReached(Refused):
    reason = "user_limit"

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        jobs = "job" if waiting == 1 else "jobs"
        super().__init__(f"You already have {waiting} {jobs} waiting (or being checked). Please wait until one of "
                         "them starts (or cancel one) before adding another.")


class ServerLimitReached(Refused):
    reason = "server_limit"

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        super().__init__(f"This server already has {waiting} jobs waiting, its share of the line. Please try again "
                         "when one of them has started.")


class LineFull(Refused):
    reason = "line_full"

    def __init__(self, waiting: int, eta_s: float | None) -> None:
        self.waiting, self.eta_s = waiting, eta_s
        minutes = max(1, math.ceil(eta_s / 60)) if eta_s is not None else 0
        work = f", about {minutes} minute{'s' if minutes > 1 else ''} of work" if eta_s is not None else ""
        super().__init__(f"The queue is full ({waiting} jobs waiting{work}). Please try again in a little while.")


class NotAccepting(Refused):
    """The bot is stopping (or its checks were shut down under a request)."""

    reason = "not_accepting"

    def __init__(self) -> None:
        super().__init__(SHUTTING_DOWN)


class WorkersUnavailable(Refused):
    reason = "workers_down"

    def __init__(self) -> None:
        super().__init__("The bot cannot run jobs right now: its workers could not start. The operator can see why "
                         "in the bot's logs. Please try again later.")


class StorageUnavailable(Refused):
    """The job could not be recorded (the spool is full, or the disk cannot be written)."""

    reason = "storage"


class NotInServer(Refused):
    """A request from outside a server (a DM, a user install): the bot works in servers only."""

    reason = "not_in_server"

    def __init__(self) -> None:
        super().__init__("The style bot works in servers only: please use it in a server that has added it.")


# --------------------------------------------------------------------------- a server's rules


class ChannelNotAllowed(Refused):
    reason = "channel"

    def __init__(self, channels: tuple[int, ...]) -> None:
        where = ", ".join(f"<#{c}>" for c in channels[:10]) + (" …" if len(channels) > 10 else "")
        super().__init__(f"In this server, /stylize can be used only in {where}. Please try there.")


class PresetNotAllowed(Refused):
    reason = "preset"

    def __init__(self, preset: str, rules: "Rules") -> None:
        allowed = " or ".join(rules.allowed_presets())
        super().__init__(f"This server allows presets up to **{rules.max_preset}**, so `{preset}` cannot be used "
                         f"here. Please pick {allowed}.")


class QuotaReached(Refused):
    reason = "quota"

    def __init__(self, limit: int, retry_at: float) -> None:
        self.limit, self.retry_at = limit, retry_at
        jobs = "job" if limit == 1 else "jobs"
        # Discord shows <t:…:R> in the reader's own time zone, as "in 3 hours".
        super().__init__(f"You have used your {limit} {jobs} for the last 24 hours in this server (a rule of "
                         f"this server). You can start another <t:{int(retry_at) + 1}:R>.")


# --------------------------------------------------------------------------- checking pictures


class ChecksBusy(Refused):
    """Too many uploads are being checked right now, or this server used its share of check time."""

    reason = "busy"

    @classmethod
    def everyone(cls) -> "ChecksBusy":
        return cls("The bot is checking a lot of pictures right now. Please try again in a minute.")

    @classmethod
    def member(cls, queued: int) -> "ChecksBusy":
        return cls(f"You already have {queued} requests being checked. Please wait for their answers before "
                   "sending another.")

    @classmethod
    def server_share_used(cls, wait_s: float) -> "ChecksBusy":
        minutes = max(1, round(wait_s / 60))
        return cls(f"This server's members have sent a lot of pictures to check in the last few minutes, and the "
                   f"bot shares its time between servers. Please try again in about {minutes} "
                   f"minute{'s' if minutes > 1 else ''}.")


class UploadProblem(Refused):
    """Something the requester has to fix in what they sent; ``str()`` says what, exactly."""

    reason = "invalid_upload"


class PicturesExpired(UploadProblem):
    """A remix of a result whose pictures are no longer kept."""

    reason = "expired"

    def __init__(self, reuse_s: float) -> None:
        super().__init__(
            f"The pictures of this result have expired (they are kept for {reuse_s / 3600:g} hours after delivery, "
            "or until the result is deleted), so this button no longer works. Run /stylize again with them.")


class EventRefused(Refused):
    """A style event's rule (:mod:`bot.core.event`): closed, entries or votes used up, not the host..."""

    reason = "event"


def _all(kind: type[Refused]) -> list[type[Refused]]:
    return [kind, *(sub for child in kind.__subclasses__() for sub in _all(child))]


# Every label the metric may carry, so each is shown (at 0) from the start.
REASONS: tuple[str, ...] = tuple(dict.fromkeys(k.reason for k in _all(Refused) if "reason" in vars(k)))
