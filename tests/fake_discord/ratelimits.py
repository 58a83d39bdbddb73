"""Discord's REST rate limits: a global limit per bot token and per-route buckets.

Off unless ``FakeDiscord(rate_limits=RateLimits(...))``. The HTTP middleware (``server.py``)
asks :meth:`RateLimiter.admit` about every API request before routing it:

* **Global**: at most ``global_per_s`` requests in any 1 s (a sliding window, so a bot pacing
  itself by the second never trips it) counted over requests authenticated with the bot token.
  Interaction endpoints are exempt, as on Discord: ``POST /interactions/{id}/{token}/callback``
  and, unless ``interaction_webhooks_global``, the interaction-token webhook routes
  (``/webhooks/{application_id}/{token}...``, which discord.py sends without the bot token).
* **Per route**: a fixed window of ``limit`` requests per ``per`` seconds, keyed like Discord by
  the bucket (the route, or a name several routes share) plus the route's *major parameters*
  (``channel_id``, ``guild_id``, ``webhook_id`` + token). The first request of a key opens its window.

Every admitted response of a bucketed route carries ``X-RateLimit-Limit``, ``-Remaining``,
``-Reset`` (epoch seconds), ``-Reset-After`` (seconds, rounded up to the millisecond) and
``-Bucket`` (a hash per bucket, shared by routes sharing it). A refused request answers 429 with
``{"message", "retry_after", "global"}``, ``Retry-After`` (whole seconds, rounded up),
``X-RateLimit-Scope`` (``user`` per route, ``global``) plus ``X-RateLimit-Global: true`` for the
global limit, and ``Via`` (discord.py treats a 429 without it as a Cloudflare ban). Refused
requests consume nothing. Each refusal is a :class:`RateLimitHit` in ``fake.rate_limited``.

discord.py (2.7, ``http.py``) reads ``X-Ratelimit-Remaining``/``-Reset-After``/``-Bucket`` after
each answer and sleeps *before* sending into an exhausted bucket, and retries a 429 after the
body's ``retry_after``; it does not pace itself against the global limit (it only stops all
requests for ``retry_after`` after a global 429). Its webhook adapter (interaction responses,
followups) delays per webhook token when ``X-Ratelimit-Remaining`` is ``0``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

# path segment after which a numeric id is a major parameter (own bucket per value)
_MAJOR_AFTER = {"channels": "channel_id", "guilds": "guild_id"}
# named placeholders for the ids that follow these segments (else "{<segment>_id}")
_ID_NAMES = {"messages": "message_id", "users": "user_id", "members": "user_id", "roles": "role_id",
             "commands": "command_id", "applications": "application_id", "reactions": "emoji"}


@dataclass(frozen=True)
class RouteLimit:
    """``limit`` requests per ``per`` seconds. Routes giving the same ``bucket`` name share one
    window per major parameter (Discord's shared bucket hash); ``None`` = the route's own."""

    limit: int
    per: float
    bucket: Optional[str] = None


def discord_route_limits() -> Dict[str, RouteLimit]:
    """The per-route limits Discord answers today for the routes a bot uses most (it publishes
    none; these are what its headers say). Keys are ``"METHOD /template"`` as :func:`route_of` makes."""
    return {
        "POST /channels/{channel_id}/messages": RouteLimit(5, 5.0),
        "PATCH /channels/{channel_id}/messages/{message_id}": RouteLimit(5, 5.0),
        "DELETE /channels/{channel_id}/messages/{message_id}": RouteLimit(5, 1.0),
        "POST /channels/{channel_id}/typing": RouteLimit(5, 5.0),
        "PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me": RouteLimit(1, 0.25),
        # a webhook's (an interaction token's) execute and message routes share one bucket
        "POST /webhooks/{webhook_id}/{webhook_token}": RouteLimit(5, 2.0, bucket="webhook"),
        "GET /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": RouteLimit(5, 2.0, bucket="webhook"),
        "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": RouteLimit(5, 2.0, bucket="webhook"),
        "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": RouteLimit(5, 2.0, bucket="webhook"),
    }


@dataclass
class RateLimits:
    """Configuration for ``FakeDiscord(rate_limits=...)``.

    ``global_per_s``: requests per second per bot token (``None``: no global limit).
    ``routes``: ``"METHOD /template"`` → :class:`RouteLimit` (default :func:`discord_route_limits`).
    ``default``: the limit of API routes not in ``routes`` (``None``: only the global one applies,
    and such answers carry no ``X-RateLimit-*`` headers).
    ``interaction_webhooks_global``: count interaction-token webhook routes toward the global limit.
    """

    global_per_s: Optional[int] = 50
    routes: Dict[str, RouteLimit] = field(default_factory=discord_route_limits)
    default: Optional[RouteLimit] = RouteLimit(50, 1.0)
    interaction_webhooks_global: bool = False


@dataclass(eq=False)
class RateLimitHit:
    """One 429 the fake answered."""

    t: float  #: monotonic time
    method: str
    path: str  #: relative to the API base
    route: str  #: ``"METHOD /template"``
    bucket: Optional[str]  #: the bucket hash (``None`` for a global 429)
    is_global: bool
    retry_after: float
    scope: str  #: ``user``, ``global`` or ``shared`` (injected 429s)


def route_of(method: str, path: str) -> Tuple[str, str]:
    """``("METHOD /template", major)`` for an API path relative to the base, e.g.
    ``("PATCH /channels/{channel_id}/messages/{message_id}", "123")``. ``major`` joins the major
    parameters (channel, guild, webhook id + token) the way discord.py keys its buckets."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    template: List[str] = []
    major: List[str] = []
    i = 0
    if len(parts) >= 3 and parts[0] in ("webhooks", "interactions"):
        ident = "webhook" if parts[0] == "webhooks" else "interaction"
        template += [parts[0], "{%s_id}" % ident, "{%s_token}" % ident]
        major += parts[1:3]
        i = 3
    while i < len(parts):
        part, prev = parts[i], parts[i - 1] if i else ""
        if prev in _MAJOR_AFTER and part.isdigit():
            template.append("{%s}" % _MAJOR_AFTER[prev])
            major.append(part)
        elif part.isdigit() or part == "@original" or prev == "reactions":
            template.append("{%s}" % _ID_NAMES.get(prev, prev.rstrip("s") + "_id"))
        else:
            template.append(part)
        i += 1
    return f"{method.upper()} /{'/'.join(template)}", "+".join(major)


def counts_toward_global(method: str, path: str, authorized: Optional[bool], *,
                         interaction_webhooks: bool = False) -> bool:
    """Whether Discord counts this API request toward the bot's global limit: it carries the bot
    token and is not an interaction endpoint. Callbacks are always exempt; webhook routes with a
    token (interaction followups, @original edits) are made without the bot token and count only
    with *interaction_webhooks*."""
    if path.startswith("/interactions/"):
        return False
    if path.startswith("/webhooks/") and path.count("/") >= 3:
        return interaction_webhooks or bool(authorized)
    return bool(authorized)


@dataclass
class _Window:
    opened: float
    per: float
    count: int = 0

    def expired(self, now: float) -> bool:
        return now >= self.opened + self.per


@dataclass
class Admission:
    """The limiter's answer: ``refused`` (a :class:`RateLimitHit`) or the headers to add."""

    headers: Dict[str, str] = field(default_factory=dict)
    refused: Optional[RateLimitHit] = None

    def refusal_body(self) -> Dict[str, object]:
        hit = self.refused
        assert hit is not None
        return {"message": "You are being rate limited.", "retry_after": hit.retry_after, "global": hit.is_global}


def _ceil_ms(seconds: float) -> float:
    # rounded up: a client waiting exactly this long must find the window reset
    return math.ceil(max(seconds, 0.0) * 1000) / 1000


class RateLimiter:
    """The state of the limits (global window, route windows) and the decision per request."""

    #: route windows are pruned when there are more keys than this (expired ones only)
    PRUNE_AT = 20_000

    def __init__(self, config: RateLimits) -> None:
        self.config = config
        self._global: Deque[float] = deque()
        self._windows: Dict[Tuple[str, str], _Window] = {}

    @staticmethod
    def bucket_hash(name: str) -> str:
        return hashlib.md5(name.encode()).hexdigest()

    def limit_of(self, route: str) -> Tuple[Optional[RouteLimit], str]:
        """The route's limit and its bucket name."""
        limit = self.config.routes.get(route, self.config.default)
        return limit, (limit.bucket if limit is not None and limit.bucket else route)

    def admit(self, method: str, path: str, *, counts_global: bool, now: Optional[float] = None) -> Admission:
        now = time.monotonic() if now is None else now
        route, major = route_of(method, path)
        limit, bucket = self.limit_of(route)
        per_s = self.config.global_per_s
        if counts_global and per_s is not None:
            while self._global and self._global[0] <= now - 1.0:
                self._global.popleft()
            if len(self._global) >= per_s:
                retry = _ceil_ms(self._global[0] + 1.0 - now)
                return Admission(
                    headers={"Retry-After": str(math.ceil(retry)), "X-RateLimit-Global": "true",
                             "X-RateLimit-Scope": "global", "Via": "1.1 google"},
                    refused=RateLimitHit(t=now, method=method, path=path, route=route, bucket=None,
                                         is_global=True, retry_after=retry, scope="global"))
        headers: Dict[str, str] = {}
        if limit is not None:
            window = self._window(bucket, major, limit, now)
            reset_after = _ceil_ms(window.opened + limit.per - now)
            bucket_hash = self.bucket_hash(bucket)
            headers = {"X-RateLimit-Limit": str(limit.limit), "X-RateLimit-Bucket": bucket_hash,
                       "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                       "X-RateLimit-Reset-After": f"{reset_after:.3f}"}
            if window.count >= limit.limit:
                headers.update({"X-RateLimit-Remaining": "0", "Retry-After": str(math.ceil(reset_after)),
                                "X-RateLimit-Scope": "user", "Via": "1.1 google"})
                return Admission(headers=headers, refused=RateLimitHit(
                    t=now, method=method, path=path, route=route, bucket=bucket_hash, is_global=False,
                    retry_after=reset_after, scope="user"))
            window.count += 1
            headers["X-RateLimit-Remaining"] = str(limit.limit - window.count)
        if counts_global and per_s is not None:
            self._global.append(now)
        return Admission(headers=headers)

    def _window(self, bucket: str, major: str, limit: RouteLimit, now: float) -> _Window:
        key = (bucket, major)
        window = self._windows.get(key)
        if window is None or window.expired(now):
            if window is None and len(self._windows) >= self.PRUNE_AT:
                self._windows = {k: w for k, w in self._windows.items() if not w.expired(now)}
            window = self._windows[key] = _Window(opened=now, per=limit.per)
        return window
