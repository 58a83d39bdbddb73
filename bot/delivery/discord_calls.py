"""Every REST call the bot sends to Discord passes here: it waits for its slot in the
:class:`~bot.service.call_budget.CallBudget` when it must, and a 429 answer is logged and counted.

It hooks into aiohttp's request tracing on the client's one HTTP session, which discord.py
also uses for webhooks and interaction responses, so no call can go around the budget.

Which calls wait for a slot follows Discord's global limit, which counts the requests made
with the bot's token:

* a call with the bot token (channel messages, commands, ...) always takes a slot;
* an *interaction endpoint*, which Discord leaves out of the global limit, takes a slot only
  when it is a background call (a progress or place-in-line edit through the interaction's
  webhook): the edits that grow with the line stay paced whatever their route, while the
  answers a member is waiting for (the "accepted" reply, the status message, the result,
  a refusal) go at once;
* an interaction callback (``POST /interactions/{id}/{token}/callback``: the deferral, the
  first answer) never waits: the 3-second deadline must not depend on a backlog of edits.

The gateway's websocket and downloads from Discord's CDN are not REST calls and pass untouched.
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

import aiohttp

from bot.service.call_budget import CallBudget, Priority, current_caller

if TYPE_CHECKING:
    from bot.health import Metrics

__all__ = ["CallTracer", "route_of", "is_interaction_callback"]

log = logging.getLogger(__name__)

_ID = re.compile(r"^\d{5,}$")
_TOKEN_AFTER = ("webhooks", "interactions")  # /webhooks/{id}/{token}, /interactions/{id}/{token}


def route_of(path: str) -> str:
    """A REST path with its ids and tokens taken out (``/channels/{id}/messages``): safe to log
    (interaction and webhook tokens are secrets) and few enough to be a metric label."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    out: list[str] = []
    for i, part in enumerate(parts):
        if i >= 2 and parts[i - 2] in _TOKEN_AFTER and _ID.match(parts[i - 1]):
            out.append("{token}")
        elif _ID.match(part):
            out.append("{id}")
        else:
            out.append(part)
    return "/" + "/".join(out)


def is_interaction_callback(method: str, route: str) -> bool:
    return method == "POST" and route == "/interactions/{id}/{token}/callback"


class CallTracer:
    """aiohttp request hooks that put each Discord REST call through the budget."""

    def __init__(self, budget: CallBudget, *, api_base: Callable[[], str], metrics: "Metrics | None" = None) -> None:
        self.budget = budget
        self._api_base = api_base  # read at each call: the base can be pointed elsewhere after start
        self.metrics = metrics
        self.rate_limited = 0

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._on_start)
        config.on_request_end.append(self._on_end)
        return config

    def _route(self, params: aiohttp.TraceRequestStartParams | aiohttp.TraceRequestEndParams) -> str | None:
        """The call's route, or None when it is not a Discord REST call."""
        base = self._api_base().rstrip("/")
        url = str(params.url)
        if not url.startswith(base + "/") or params.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return route_of(url[len(base):])

    async def _on_start(self, session: aiohttp.ClientSession, ctx: SimpleNamespace,
                        params: aiohttp.TraceRequestStartParams) -> None:
        route = self._route(params)
        if route is None:
            return
        caller = current_caller()
        if is_interaction_callback(params.method, route):
            kind = "callback"
        elif "Authorization" in params.headers or caller.priority is Priority.BACKGROUND:
            await self.budget.take(caller)
            kind = caller.priority.name.lower()
        else:
            kind = "interaction"  # an answer through the interaction's webhook: not in the global limit
        if self.metrics is not None:
            self.metrics.discord_call(kind)

    async def _on_end(self, session: aiohttp.ClientSession, ctx: SimpleNamespace,
                      params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.status != 429:
            return
        route = self._route(params)
        if route is None:
            return
        headers = params.response.headers
        scope = headers.get("X-RateLimit-Scope") or ("global" if headers.get("X-RateLimit-Global") else "user")
        self.rate_limited += 1
        # never the URL itself: it may hold an interaction's token
        log.warning("Discord answered 429 (rate limited)",
                    extra={"method": params.method, "route": route, "scope": scope,
                           "retry_after": headers.get("Retry-After"), "bucket": headers.get("X-RateLimit-Bucket"),
                           "guild_id": current_caller().guild_id or None})
        if self.metrics is not None:
            self.metrics.discord_rate_limited(f"{params.method} {route}", scope)
