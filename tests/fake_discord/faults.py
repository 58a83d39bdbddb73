"""Failure injection: faulty routes, refused channels, blocked DMs, expired interaction tokens.

``inject_fault`` registers a :class:`~.models.Fault` that the HTTP middleware (``server.py``)
checks before routing; the other switches are read by the message and webhook handlers.
"""

from __future__ import annotations

import re
import time
from typing import Any, Dict, Optional

from .common import MISSING_ACCESS
from .models import Fault, InteractionRecord, as_id


class FaultsMixin:
    """``FakeDiscord``'s failure switches (state: ``faults``, ``_refused_channels``, ``_blocked_dm_users``)."""

    def inject_fault(self, path: str, *, method: Optional[str] = None, status: Optional[int] = 500,
                     times: Optional[int] = 1, delay: float = 0.0, body: Any = None,
                     retry_after: float = 0.1) -> Fault:
        """The next *times* requests whose path matches regex *path* (``re.search``) get *status*.

        The path is relative to the API base for API routes (``/channels/123/messages``,
        ``/webhooks/<app>/<token>``, ``/interactions/<id>/<token>/callback``) and the raw
        path otherwise (``/attachments/x.png``). ``method=None`` matches any method.
        ``delay`` sleeps first; ``status=None`` with a delay only delays, then serves normally.
        ``times=None`` = forever. ``status=429`` answers a proper rate-limit (``Via`` header,
        ``retry_after`` body, ``X-RateLimit-Scope: shared``) that discord.py retries; it is
        recorded in ``fake.rate_limited`` with scope ``shared``.
        """
        headers: Dict[str, str] = {}
        if status == 429:
            headers["Via"] = "1.1 google"
            headers["Retry-After"] = str(retry_after)
            headers["X-RateLimit-Scope"] = "shared"  # a resource's limit, not the bot's (fake.rate_limited)
            if body is None:
                body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False,
                        "code": 0}
        fault = Fault(method=method, pattern=re.compile(path), status=status, times=times, delay=delay,
                      body=body, headers=headers)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def refuse_channel(self, channel: Any, *, status: int = 403, code: int = MISSING_ACCESS,
                       message: str = "Missing Access") -> None:
        """Make message POST/PATCH in *channel* answer ``status`` with Discord error ``code``."""
        self._refused_channels[as_id(channel)] = (status, code, message)

    def allow_channel(self, channel: Any) -> None:
        self._refused_channels.pop(as_id(channel), None)

    def block_dms(self, user: Any) -> None:
        """Messages to this user's DM channel answer 403 / 50007 ("Cannot send messages to this user")."""
        self._blocked_dm_users.add(self.user(user).id)

    def unblock_dms(self, user: Any) -> None:
        self._blocked_dm_users.discard(self.user(user).id)

    def expire_token(self, interaction: InteractionRecord) -> None:
        """Expire an interaction's token now (webhook routes then answer 401 / 50027)."""
        interaction.expires_t = time.monotonic() - 0.001
