"""The fake Discord server: ``FakeDiscord`` assembled from one mixin per concern, its state and
lifecycle, and the HTTP core (routing, auth, request recording, fault injection, body parsing).

See the package docstring (``tests/fake_discord/__init__.py``) for the test-facing API. Layout:

* ``common.py``: error codes, JSON/error responses, the parsed request body
* ``recording.py``: the event log, ``wait_for`` and friends (``RecordingMixin``)
* ``faults.py``: ``inject_fault``, refused channels, blocked DMs, expired tokens (``FaultsMixin``)
* ``guilds.py``: guilds, channels, roles, members, users, DMs, their REST reads (``GuildsMixin``)
* ``attachments.py``: the attachment CDN and stored uploads (``AttachmentsMixin``)
* ``messages.py``: channel messages, members' messages, message storage (``MessagesMixin``)
* ``commands.py``: the application-command registry the bot syncs (``CommandsMixin``)
* ``interactions.py``: interactions sent to the bot (``InteractionsMixin``)
* ``webhooks.py``: the bot's callbacks, followups, webhook edits (``InteractionWebhooksMixin``)
* ``gateway.py``: the websocket, sessions, READY, RESUME (``GatewayMixin``, ``GatewaySession``)
* ``shards.py``: which shard serves which guild, shard sessions, shards taken down (``ShardsMixin``)
* ``ratelimits.py``: the global limit and per-route buckets (``RateLimiter``, asked by the middleware)

Each mixin keeps its state on the one ``FakeDiscord`` instance (created in ``__init__`` below) and
registers its own routes (``_add_*_routes``, called from ``_setup_routes``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from aiohttp import web

from .attachments import AttachmentsMixin
from .commands import CommandsMixin
from .common import API_PREFIX, _BODY_KEY, _RECORD_KEY, FakeDiscordError, _Body, _error, _json, log
from .faults import FaultsMixin
from .gateway import GatewayMixin, GatewaySession, _GatewayConnection
from .guilds import GuildsMixin
from .interactions import InteractionsMixin
from .messages import MessagesMixin
from .models import (
    AttachmentRecord,
    Channel,
    Event,
    Fault,
    Guild,
    InteractionRecord,
    MessageRecord,
    Permissions,
    RequestRecord,
    StoredFile,
    User,
    snowflake,
)
from .ratelimits import RateLimiter, RateLimitHit, RateLimits, counts_toward_global, route_of
from .recording import RecordingMixin
from .shards import ShardIdentify, ShardsMixin
from .webhooks import InteractionWebhooksMixin

__all__ = ["FakeDiscord", "FakeDiscordError", "GatewaySession"]


class FakeDiscord(RecordingMixin, FaultsMixin, GatewayMixin, ShardsMixin, GuildsMixin, AttachmentsMixin,
                  MessagesMixin, CommandsMixin, InteractionsMixin, InteractionWebhooksMixin):
    """A Discord API + gateway double for discord.py. See the package docstring."""

    def __init__(
        self,
        *,
        token_ttl: float = 900.0,
        interaction_deadline: Optional[float] = 3.0,
        bot_token: Optional[str] = None,
        bot_name: str = "StyleBot",
        heartbeat_interval: float = 41.25,
        attachment_size_limit: int = 10 * 1024 * 1024,
        app_flags: int = 0,
        allowed_privileged_intents: Optional[int] = None,
        with_defaults: bool = True,
        host: str = "127.0.0.1",
        shards: int = 1,
        max_concurrency: int = 1,
        rate_limits: Optional[RateLimits] = None,
    ) -> None:
        if shards < 1 or max_concurrency < 1:
            raise ValueError("shards and max_concurrency must be at least 1")
        self.token_ttl = float(token_ttl)
        self.interaction_deadline = interaction_deadline
        self.application_id = snowflake()
        self.bot_token = bot_token or f"{self.application_id}.fake.{secrets.token_urlsafe(24)}"
        self.heartbeat_interval = heartbeat_interval
        self.attachment_size_limit = attachment_size_limit
        self.app_flags = app_flags
        self.allowed_privileged_intents = allowed_privileged_intents
        self.host = host
        self.port: Optional[int] = None
        self.shard_count = int(shards)
        self.max_concurrency = int(max_concurrency)
        self.rate_limiter: Optional[RateLimiter] = RateLimiter(rate_limits) if rate_limits is not None else None

        # entities
        self.guild: Optional[Guild] = None
        self.channel: Optional[Channel] = None
        self._bot_role_ids: Dict[int, int] = {}
        self._bot_permissions = Permissions.DEFAULT_BOT
        self.users: Dict[int, User] = {}
        self._users_by_name: Dict[str, User] = {}
        self.guilds: Dict[int, Guild] = {}
        self.channels: Dict[int, Channel] = {}
        self._dm_channels: Dict[int, Channel] = {}
        self.bot_user = User(id=self.application_id, username=bot_name, bot=True)
        self.users[self.bot_user.id] = self.bot_user
        self._users_by_name[bot_name] = self.bot_user
        self.owner = self.add_user("owner", join=False)
        self.bot_permissions = Permissions.DEFAULT_BOT

        # records
        self.messages: Dict[int, MessageRecord] = {}
        self._channel_messages: Dict[int, List[int]] = {}
        self.interactions: List[InteractionRecord] = []
        self._interactions_by_id: Dict[int, InteractionRecord] = {}
        self._interactions_by_token: Dict[str, InteractionRecord] = {}
        self.requests: List[RequestRecord] = []
        self.rate_limited: List[RateLimitHit] = []
        self.events: List[Event] = []
        self.unhandled: List[RequestRecord] = []
        self._files: Dict[str, Tuple[bytes, Optional[str]]] = {}
        self._attachments_by_name: Dict[str, AttachmentRecord] = {}

        # commands: scope None = global, else guild id -> {(name, type): command json}
        self._commands: Dict[Optional[int], Dict[Tuple[str, int], Dict[str, Any]]] = {None: {}}
        self.command_puts: List[Tuple[Optional[int], List[Dict[str, Any]], float]] = []

        # failure injection
        self.faults: List[Fault] = []
        self._refused_channels: Dict[int, Tuple[int, int, str]] = {}
        self._blocked_dm_users: set = set()

        # gateway
        self.sessions: Dict[str, GatewaySession] = {}
        self.session: Optional[GatewaySession] = None
        self.connections: List[_GatewayConnection] = []
        self.identify_payloads: List[Dict[str, Any]] = []
        self.resume_payloads: List[Dict[str, Any]] = []
        self.presence_updates: List[Dict[str, Any]] = []
        self.gateway_received: List[Dict[str, Any]] = []
        # shards: the current session of each shard id, every IDENTIFY's shard, shards kept down
        self._shard_sessions: Dict[int, GatewaySession] = {}
        self.shard_identifies: List[ShardIdentify] = []
        self.shards_down: set = set()

        self._waiters: List[asyncio.Future] = []
        self._runner: Optional[web.AppRunner] = None
        self._ws_tasks: set = set()

        # defaults
        if with_defaults:
            self.guild = self.add_guild("Fake Guild", owner=self.owner)
            self.channel = self.add_channel("general")
            self.add_user("alice")
            self.add_user("bob")
            self.add_user("mod", permissions=Permissions.MANAGE_MESSAGES)

    # ======================================================================
    # lifecycle
    # ======================================================================
    async def start(self) -> "FakeDiscord":
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        self._setup_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, shutdown_timeout=1.0)
        await site.start()
        self._record("server_started", {"port": self.port})
        return self

    async def stop(self) -> None:
        for conn in list(self.connections):
            await conn.close(1001, b"fake shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    async def __aenter__(self) -> "FakeDiscord":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- addresses ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """Value for ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (wrap in ``yarl.URL``)."""
        return f"ws://{self.host}:{self.port}/gateway"

    def env(self, prefix: str = "DISCORD_") -> Dict[str, str]:
        """Environment variables a bot subprocess can use to find the fake."""
        return {
            f"{prefix}TOKEN": self.bot_token,
            f"{prefix}API_BASE": self.api_base,
            f"{prefix}GATEWAY_URL": self.gateway_url,
            f"{prefix}APPLICATION_ID": str(self.application_id),
            f"{prefix}GUILD_ID": str(self.guild.id) if self.guild else "",
        }

    # ======================================================================
    # HTTP core: routes, auth, recording, faults, bodies
    # ======================================================================
    def _setup_routes(self, app: web.Application) -> None:
        r = app.router
        self._add_gateway_routes(r)
        self._add_attachment_routes(r)
        self._add_guild_routes(r)
        self._add_command_routes(r)
        self._add_interaction_webhook_routes(r)
        self._add_message_routes(r)
        r.add_route("*", "/{tail:.*}", self._unhandled)  # last: anything else is recorded as unhandled

    @staticmethod
    def _rel_path(request: web.Request) -> str:
        path = request.path
        if path.startswith(API_PREFIX + "/"):
            return path[len(API_PREFIX):]
        return path

    def _needs_auth(self, method: str, rel: str, raw: str) -> bool:
        if not raw.startswith(API_PREFIX + "/"):
            return False
        if rel.startswith("/webhooks/") and rel.count("/") >= 3:
            return False
        if rel.startswith("/interactions/"):
            return False
        if rel == "/gateway":
            return False
        return True

    async def _body(self, request: web.Request) -> _Body:
        cached = request.get(_BODY_KEY)
        if cached is not None:
            return cached
        js: Any = None
        files: List[StoredFile] = []
        raw = b""
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                data = await part.read(decode=False)
                if part.name == "payload_json":
                    js = json.loads(data.decode() or "null")
                else:
                    files.append(StoredFile(field=part.name or "", filename=part.filename or "file",
                                            data=bytes(data), content_type=part.headers.get("Content-Type")))
        elif request.body_exists:
            raw = await request.read()
            if raw:
                try:
                    js = json.loads(raw)
                except ValueError:
                    js = None
        body = _Body(js, files, raw)
        request[_BODY_KEY] = body
        return body

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        rel = self._rel_path(request)
        if request.path == "/gateway" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await handler(request)
        rec = RequestRecord(method=request.method, path=rel, query=dict(request.query), t=time.monotonic(),
                            api=request.path.startswith(API_PREFIX + "/"))
        request[_RECORD_KEY] = rec
        self.requests.append(rec)
        response: Optional[web.StreamResponse] = None
        try:
            response = await self._handle(request, handler, rec, rel)
            return response
        except web.HTTPException as exc:
            response = exc
            raise
        finally:
            rec.status = response.status if response is not None else 500
            if isinstance(response, web.Response) and isinstance(response.body, bytes) \
                    and response.content_type == "application/json":
                try:
                    rec.response = json.loads(response.body)
                except ValueError:
                    pass
            self._record("request", rec)

    async def _handle(self, request: web.Request, handler: Callable, rec: RequestRecord, rel: str
                      ) -> web.StreamResponse:
        for fault in self.faults:
            if fault.matches(request.method, rel):
                fault.hits += 1
                rec.fault = True
                self._record("fault", {"request": rec, "fault": fault})
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    body = await self._body(request)
                    rec.json, rec.files = body.json, body.files
                    payload = fault.body if fault.body is not None else {
                        "message": f"{fault.status}: injected fault", "code": 0}
                    if fault.status == 429 and isinstance(payload, dict):
                        self._note_rate_limited(RateLimitHit(
                            t=rec.t, method=rec.method, path=rel, route=route_of(rec.method, rel)[0], bucket=None,
                            is_global=bool(payload.get("global")), retry_after=float(payload.get("retry_after", 0)),
                            scope="shared"))
                    return _json(payload, status=fault.status, headers=fault.headers)
                break
        if self._needs_auth(request.method, rel, request.path):
            rec.authorized = request.headers.get("Authorization", "") == f"Bot {self.bot_token}"
            if not rec.authorized:
                return _error(401, 0, "401: Unauthorized")
        if request.body_exists and request.method in ("POST", "PUT", "PATCH"):
            body = await self._body(request)
            rec.json, rec.files = body.json, body.files
        limiter = self.rate_limiter
        if limiter is None or not rec.api:
            return await handler(request)
        admission = limiter.admit(request.method, rel, now=rec.t, counts_global=counts_toward_global(
            request.method, rel, rec.authorized, interaction_webhooks=limiter.config.interaction_webhooks_global))
        if admission.refused is not None:
            self._note_rate_limited(admission.refused)
            return _json(admission.refusal_body(), status=429, headers=admission.headers)
        response = await handler(request)
        if admission.headers and not response.prepared:
            response.headers.update(admission.headers)
        return response

    def _note_rate_limited(self, hit: RateLimitHit) -> None:
        self.rate_limited.append(hit)
        self._record("rate_limited", hit)

    async def _unhandled(self, request: web.Request) -> web.Response:
        rec = request.get(_RECORD_KEY)
        if rec is not None:
            self.unhandled.append(rec)
        log.warning("fake discord: unhandled %s %s", request.method, request.path)
        return _error(404, 0, "404: Not Found")
