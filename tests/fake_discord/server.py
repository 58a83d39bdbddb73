"""The fake Discord server (REST + gateway + attachment files) on aiohttp.

See the package docstring (``tests/fake_discord/__init__.py``) for the test-facing API.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from aiohttp import web

from .models import (
    ApplicationFlags,
    AttachmentRecord,
    CallbackRecord,
    Channel,
    Event,
    Fault,
    Guild,
    Intents,
    InteractionRecord,
    Member,
    MessageFlags,
    MessageRecord,
    Permissions,
    RequestRecord,
    Role,
    StoredFile,
    User,
    as_id,
    image_size,
    iso_now,
    snowflake,
    sniff_content_type,
)

from .common import (
    API_PREFIX,
    CANNOT_EDIT_OTHERS_MESSAGE,
    CANNOT_EXECUTE_ON_DM,
    CANNOT_SEND_EMPTY_MESSAGE,
    CANNOT_SEND_TO_USER,
    INTERACTION_ALREADY_ACKNOWLEDGED,
    INVALID_FORM_BODY,
    INVALID_RECIPIENTS,
    INVALID_WEBHOOK_TOKEN,
    MISSING_ACCESS,
    MISSING_PERMISSIONS,
    REQUEST_TOO_LARGE,
    UNKNOWN_CHANNEL,
    UNKNOWN_COMMAND,
    UNKNOWN_GUILD,
    UNKNOWN_INTERACTION,
    UNKNOWN_MEMBER,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    UNKNOWN_WEBHOOK,
    FakeDiscordError,
    _BODY_KEY,
    _RECORD_KEY,
    _Body,
    _error,
    _form_error,
    _json,
    _no_content,
    log,
)
from .attachments import AttachmentsMixin
from .commands import CommandsMixin
from .faults import FaultsMixin
from .gateway import GatewayMixin, GatewaySession, _GatewayConnection
from .guilds import GuildsMixin
from .messages import MessagesMixin
from .recording import RecordingMixin

_ALLOWED_CALLBACKS = {
    2: {4, 5, 9},  # application command
    3: {4, 5, 6, 7, 9},  # message component
    4: {8},  # autocomplete
    5: {4, 5, 6, 7},  # modal submit
}

_OPTION_VALUE_TYPES = {3: str, 4: int, 5: bool, 10: float}


#: message type of an interaction's response, by application command type
#: (1 chat input → 20 CHAT_INPUT_COMMAND; 2 user / 3 message → 23 CONTEXT_MENU_COMMAND)
_COMMAND_MESSAGE_TYPE = {1: 20, 2: 23, 3: 23}


class FakeDiscord(RecordingMixin, FaultsMixin, GatewayMixin, GuildsMixin, AttachmentsMixin, MessagesMixin,
                  CommandsMixin):
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
    ) -> None:
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

        # entities
        self.guild: Optional[Guild] = None
        self.channel: Optional[Channel] = None
        self._bot_role_ids: Dict[int, int] = {}
        self._bot_permissions = Permissions.DEFAULT_BOT
        self.users: Dict[int, User] = {}
        self.guilds: Dict[int, Guild] = {}
        self.channels: Dict[int, Channel] = {}
        self._dm_channels: Dict[int, Channel] = {}
        self.bot_user = User(id=self.application_id, username=bot_name, bot=True)
        self.users[self.bot_user.id] = self.bot_user
        self.owner = self.add_user("owner", join=False)
        self.bot_permissions = Permissions.DEFAULT_BOT

        # records
        self.messages: Dict[int, MessageRecord] = {}
        self._channel_messages: Dict[int, List[int]] = {}
        self.interactions: List[InteractionRecord] = []
        self._interactions_by_id: Dict[int, InteractionRecord] = {}
        self._interactions_by_token: Dict[str, InteractionRecord] = {}
        self.requests: List[RequestRecord] = []
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
    # interactions (test -> bot)
    # ======================================================================

    def _base_interaction(self, itype: int, data: Dict[str, Any], user: User, channel: Channel,
                          guild: Optional[Guild], locale: Optional[str] = None) -> Dict[str, Any]:
        iid = snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        payload: Dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "token": token,
            "version": 1,
            "locale": locale or user.locale,
            "entitlements": [],
            "attachment_size_limit": self.attachment_size_limit,
            "channel": channel.to_json(),
            "channel_id": str(channel.id),
        }
        if guild is not None:
            perms = guild.permissions_in(user.id, channel)  # Discord sends the channel's, overwrites applied
            member = guild.members.get(user.id) or Member(user=user, guild_id=guild.id)
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                guild_locale=guild.locale,
                member=member.to_json(permissions=perms),
                app_permissions=str(guild.permissions_in(self.bot_user.id, channel)),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
            payload["channel"]["permissions"] = str(perms)
        else:
            payload.update(
                user=user.to_json(),
                app_permissions=str(self.bot_permissions),
                authorizing_integration_owners={"0": "0"},
                context=1,
            )
        return payload

    def _where(self, user: Any, guild: Any, channel: Any, dm: bool) -> Tuple[User, Optional[Guild], Channel]:
        u = self.user(user) if user is not None else self.default_user()
        if dm:
            return u, None, self.dm_channel(u)
        ch = self._channel(channel)
        if ch.is_dm:
            return u, None, ch
        g = self.guilds[ch.guild_id] if guild is None else self._guild(guild)
        if u.id not in g.members:
            raise FakeDiscordError(f"user {u.username} is not a member of guild {g.name}")
        return u, g, ch

    def _resolve_value(self, opt_type: int, value: Any, resolved: Dict[str, Dict[str, Any]],
                       guild: Optional[Guild]) -> Any:
        if opt_type in _OPTION_VALUE_TYPES:
            return _OPTION_VALUE_TYPES[opt_type](value)
        if opt_type == 11:  # attachment
            if isinstance(value, str) and value in self._attachments_by_name:
                att = self._attachments_by_name[value].to_json()
            elif isinstance(value, AttachmentRecord):
                att = value.to_json()
            elif isinstance(value, dict):
                att = value
            else:
                raise FakeDiscordError(f"attachment option needs an add_attachment() dict, got {value!r}")
            resolved.setdefault("attachments", {})[str(att["id"])] = att
            return str(att["id"])
        if opt_type in (6, 9) and not isinstance(value, Role):
            try:
                u = self.user(value)
            except FakeDiscordError:
                if opt_type == 9:
                    u = None
                else:
                    raise
            if u is not None:
                resolved.setdefault("users", {})[str(u.id)] = u.to_json()
                if guild is not None and u.id in guild.members:
                    resolved.setdefault("members", {})[str(u.id)] = guild.members[u.id].to_json(
                        with_user=False, permissions=guild.permissions_of(u.id))
                return str(u.id)
        if opt_type in (8, 9):
            if guild is None:
                raise FakeDiscordError("role options need a guild")
            role = value if isinstance(value, Role) else guild.roles.get(as_id(value))
            if role is None:
                raise FakeDiscordError(f"no role {value!r}")
            resolved.setdefault("roles", {})[str(role.id)] = role.to_json()
            return str(role.id)
        if opt_type == 7:
            ch = self._channel(value)
            resolved.setdefault("channels", {})[str(ch.id)] = {
                "id": str(ch.id), "name": ch.name, "type": ch.type, "permissions": str(Permissions.ALL),
                "parent_id": None, "flags": 0}
            return str(ch.id)
        return value

    def _build_options(self, cmd: Dict[str, Any], options: Dict[str, Any], attachments: List[Any],
                       subcommand: Optional[str], guild: Optional[Guild], focused: Optional[str] = None,
                       ) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
        resolved: Dict[str, Dict[str, Any]] = {}
        defs = cmd.get("options") or []
        path = subcommand.split() if subcommand else []
        wrappers: List[Dict[str, Any]] = []
        for part in path:
            sub = next((o for o in defs if o.get("name") == part and o.get("type") in (1, 2)), None)
            if sub is None:
                raise FakeDiscordError(f"no subcommand/group {part!r} in {cmd['name']!r}")
            wrappers.append({"type": sub["type"], "name": part})
            defs = sub.get("options") or []
        if any(o.get("type") in (1, 2) for o in defs):
            raise FakeDiscordError(f"command {cmd['name']!r} needs subcommand=... "
                                   f"(one of {[o['name'] for o in defs]})")
        pending_atts = list(attachments)
        leaf: List[Dict[str, Any]] = []
        given = dict(options)
        for d in defs:
            name = d["name"]
            if name not in given and d.get("type") == 11 and pending_atts:
                given[name] = pending_atts.pop(0)
            if name not in given:
                if d.get("required") and focused is None:
                    raise FakeDiscordError(f"required option {name!r} of {cmd['name']!r} missing")
                continue
            value = given.pop(name)
            entry: Dict[str, Any] = {"name": name, "type": d["type"]}
            if focused == name:
                entry["value"] = str(value)
                entry["focused"] = True
            else:
                entry["value"] = self._resolve_value(d["type"], value, resolved, guild)
                choices = d.get("choices")
                if choices and entry["value"] not in [c["value"] for c in choices]:
                    raise FakeDiscordError(f"{entry['value']!r} is not a choice of option {name!r}: "
                                           f"{[c['value'] for c in choices]}")
            leaf.append(entry)
        if given:
            raise FakeDiscordError(f"unknown option(s) {sorted(given)} for {cmd['name']!r}; "
                                   f"defined: {[d['name'] for d in defs]}")
        out = leaf
        for w in reversed(wrappers):
            w["options"] = out
            out = [w]
        return out, resolved

    async def _send_interaction(self, payload: Dict[str, Any], *, name: str, user: User, guild: Optional[Guild],
                                channel: Channel, message_id: Optional[int] = None,
                                token_ttl: Optional[float] = None) -> InteractionRecord:
        session = await self.wait_ready()
        rec = InteractionRecord(self, id=int(payload["id"]), token=payload["token"], type=payload["type"],
                                name=name, user=user, guild_id=guild.id if guild else None, channel_id=channel.id,
                                payload=payload, ttl=self.token_ttl if token_ttl is None else token_ttl,
                                message_id=message_id)
        self.interactions.append(rec)
        self._interactions_by_id[rec.id] = rec
        self._interactions_by_token[rec.token] = rec
        self._record("interaction_create", rec)
        rec.dispatched_t = time.monotonic()
        rec.expires_t = rec.dispatched_t + (self.token_ttl if token_ttl is None else token_ttl)
        await session.dispatch("INTERACTION_CREATE", payload)
        return rec

    async def send_slash_command(self, name: str, *, user: Any = None, options: Optional[Dict[str, Any]] = None,
                                 attachments: Iterable[Any] = (), subcommand: Optional[str] = None,
                                 guild: Any = None, channel: Any = None, dm: bool = False,
                                 locale: Optional[str] = None, token_ttl: Optional[float] = None,
                                 ) -> InteractionRecord:
        """Dispatch INTERACTION_CREATE (type 2) for a synced chat-input command.

        ``options`` maps option name → value (attachment options take ``add_attachment`` dicts,
        user options a user/username/id, channel/role options records or ids). ``attachments``
        fills attachment options not given in ``options``, in definition order.
        ``subcommand`` is ``"sub"`` or ``"group sub"``. ``dm=True`` sends it from the user's DM.
        """
        u, g, ch = self._where(user, guild, channel, dm)
        cmd, is_guild_cmd = self._find_command(name, g.id if g else None)
        opts, resolved = self._build_options(cmd, options or {}, list(attachments), subcommand, g)
        data: Dict[str, Any] = {"id": cmd["id"], "name": name, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        if is_guild_cmd:
            data["guild_id"] = cmd["guild_id"]
        payload = self._base_interaction(2, data, u, ch, g, locale)
        full = " ".join([name, *(subcommand.split() if subcommand else [])])
        return await self._send_interaction(payload, name=full, user=u, guild=g, channel=ch, token_ttl=token_ttl)

    async def send_autocomplete(self, name: str, focused: str, value: str = "", *, user: Any = None,
                                options: Optional[Dict[str, Any]] = None, subcommand: Optional[str] = None,
                                guild: Any = None, channel: Any = None, dm: bool = False) -> InteractionRecord:
        """Dispatch an autocomplete interaction (type 4); read ``rec.autocomplete_choices`` afterwards."""
        u, g, ch = self._where(user, guild, channel, dm)
        cmd, is_guild_cmd = self._find_command(name, g.id if g else None)
        opts = dict(options or {})
        opts[focused] = value
        built, resolved = self._build_options(cmd, opts, [], subcommand, g, focused=focused)
        data: Dict[str, Any] = {"id": cmd["id"], "name": name, "type": 1, "options": built}
        if resolved:
            data["resolved"] = resolved
        if is_guild_cmd:
            data["guild_id"] = cmd["guild_id"]
        payload = self._base_interaction(4, data, u, ch, g)
        return await self._send_interaction(payload, name=name, user=u, guild=g, channel=ch)

    async def send_message_command(self, name: str, message: Any, *, user: Any = None, guild: Any = None,
                                   channel: Any = None, locale: Optional[str] = None,
                                   token_ttl: Optional[float] = None) -> InteractionRecord:
        """Dispatch INTERACTION_CREATE (type 2) for a synced *message* context-menu command
        (type 3, "Apps" menu on *message*: a ``MessageRecord`` or message id, the bot's or a member's).

        ``data`` is ``{"id", "name", "type": 3, "target_id", "resolved": {"messages": {id: message}}}``
        (plus ``guild_id`` for guild commands); the resolved message is complete (author,
        content, attachments, embeds) whatever the bot's intents, as Discord sends it. The
        interaction happens in the message's channel unless *channel* is given.
        """
        msg = message if isinstance(message, MessageRecord) else self.messages.get(as_id(message))
        if msg is None or msg.deleted:
            raise FakeDiscordError(f"no message {as_id(message)} (or it was deleted)")
        if msg.ephemeral:
            raise FakeDiscordError("the Apps menu is not offered on ephemeral messages")
        ch = self._channel(channel if channel is not None else msg.channel_id)
        if ch.id != msg.channel_id:
            raise FakeDiscordError(f"message {msg.id} is not in channel {ch.id}")
        u, g, ch = self._where(user, guild, ch, False)
        cmd, is_guild_cmd = self._find_command(name, g.id if g else None, ctype=3)
        data: Dict[str, Any] = {"id": cmd["id"], "name": name, "type": 3, "target_id": str(msg.id),
                                "resolved": {"messages": {str(msg.id): msg.to_json()}}}
        if is_guild_cmd:
            data["guild_id"] = cmd["guild_id"]
        payload = self._base_interaction(2, data, u, ch, g, locale)
        return await self._send_interaction(payload, name=name, user=u, guild=g, channel=ch, token_ttl=token_ttl)

    async def send_user_command(self, name: str, target: Any, *, user: Any = None, guild: Any = None,
                                channel: Any = None, dm: bool = False, locale: Optional[str] = None,
                                token_ttl: Optional[float] = None) -> InteractionRecord:
        """Dispatch INTERACTION_CREATE (type 2) for a synced *user* context-menu command (type 2) on
        *target* (a user ref): ``data`` has ``target_id`` and ``resolved.users`` (+ ``members`` in a guild)."""
        u, g, ch = self._where(user, guild, channel, dm)
        cmd, is_guild_cmd = self._find_command(name, g.id if g else None, ctype=2)
        resolved: Dict[str, Dict[str, Any]] = {}
        target_id = self._resolve_value(6, target, resolved, g)
        data: Dict[str, Any] = {"id": cmd["id"], "name": name, "type": 2, "target_id": target_id,
                                "resolved": resolved}
        if is_guild_cmd:
            data["guild_id"] = cmd["guild_id"]
        payload = self._base_interaction(2, data, u, ch, g, locale)
        return await self._send_interaction(payload, name=name, user=u, guild=g, channel=ch, token_ttl=token_ttl)

    def _message_with_component(self, target: Any, custom_id: str) -> MessageRecord:
        if isinstance(target, InteractionRecord):
            candidates = list(reversed(target.all_messages))
        elif isinstance(target, MessageRecord):
            candidates = [target]
        else:
            candidates = [self.messages[as_id(target)]]
        for msg in candidates:
            msg = self.messages.get(msg.id, msg)
            if msg.deleted:
                continue
            if msg.find_component(custom_id) is not None:
                return msg
        have = [cid for m in candidates for cid in m.custom_ids()]
        raise FakeDiscordError(f"no component with custom_id {custom_id!r} (available: {have})")

    async def click_button(self, target: Any, custom_id: str, *, user: Any = None,
                           values: Optional[List[str]] = None) -> InteractionRecord:
        """Dispatch a component interaction (type 3) for *custom_id* on a bot message.

        *target* is a :class:`MessageRecord`, a message id, or an :class:`InteractionRecord`
        (its @original/followups, ephemeral ones included, are searched, newest first).
        ``values`` is for select menus (string selects: checked against the options and
        ``min_values``/``max_values``). The default user is the one the message answered
        (interaction responses) or ``default_user()`` (plain channel posts, clickable by any
        member); an ephemeral message can only be used by the user it was shown to.
        ``payload["message"]`` is the clicked message (with its flags, 64 when ephemeral).
        """
        msg = self._message_with_component(target, custom_id)
        comp = msg.find_component(custom_id)
        assert comp is not None
        if comp.get("disabled"):
            raise FakeDiscordError(f"component {custom_id!r} is disabled")
        if comp.get("type") == 2 and comp.get("style") == 5:
            raise FakeDiscordError(f"component {custom_id!r} is a link button")
        shown_to = int(msg.interaction_metadata["user"]["id"]) if msg.interaction_metadata is not None else None
        if user is None:
            user = shown_to
        if msg.ephemeral and shown_to is not None and self.user(user).id != shown_to:
            raise FakeDiscordError(f"message {msg.id} is ephemeral: only user {shown_to} sees it")
        ch = self.channels[msg.channel_id]
        u, g, ch = self._where(user, None if ch.is_dm else ch.guild_id, ch, ch.is_dm)
        data: Dict[str, Any] = {"custom_id": custom_id, "component_type": comp.get("type", 2)}
        if comp.get("type") in (3, 5, 6, 7, 8):
            picked = list(values or [])
            if comp.get("type") == 3:
                allowed = [o.get("value") for o in comp.get("options") or []]
                bad = [v for v in picked if v not in allowed]
                if bad:
                    raise FakeDiscordError(f"{bad} are not options of select {custom_id!r}: {allowed}")
                lo, hi = int(comp.get("min_values", 1)), int(comp.get("max_values", 1))
                if not lo <= len(picked) <= hi:
                    raise FakeDiscordError(f"select {custom_id!r} takes {lo}..{hi} values, got {picked}")
            data["values"] = picked
        elif values is not None:
            raise FakeDiscordError("values= only applies to select menus")
        payload = self._base_interaction(3, data, u, ch, g)
        payload["message"] = self._msg_json(msg)
        return await self._send_interaction(payload, name=custom_id, user=u, guild=g, channel=ch, message_id=msg.id)

    select = click_button

    async def submit_modal(self, interaction: InteractionRecord, values: Dict[str, Any], *,
                           user: Any = None) -> InteractionRecord:
        """Submit the modal the bot opened (callback type 9) on *interaction*.

        *values* maps text-input custom_id → string (select custom_id → list of strings).
        """
        modal = interaction.modal
        if modal is None:
            raise FakeDiscordError("the bot did not answer this interaction with a modal")

        def convert(comp: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            t = comp.get("type")
            if t == 1:
                return {"type": 1, "components": [c for c in map(convert, comp.get("components", [])) if c]}
            if t == 18:
                inner = convert(comp["component"])
                return {"type": 18, "id": comp.get("id", 0), "component": inner} if inner else None
            cid = comp.get("custom_id")
            if cid is None:
                return None
            if t == 4:
                return {"type": 4, "id": comp.get("id", 0), "custom_id": cid, "value": str(values.get(cid, ""))}
            return {"type": t, "id": comp.get("id", 0), "custom_id": cid, "values": list(values.get(cid, []))}

        comps = [c for c in map(convert, modal.get("components", [])) if c]
        u = self.user(user) if user is not None else interaction.user
        ch = self.channels[interaction.channel_id]
        g = self.guilds.get(interaction.guild_id) if interaction.guild_id else None
        payload = self._base_interaction(5, {"custom_id": modal["custom_id"], "components": comps}, u, ch, g)
        if interaction.message_id is not None and interaction.message_id in self.messages:
            payload["message"] = self._msg_json(self.messages[interaction.message_id])
        return await self._send_interaction(payload, name=modal["custom_id"], user=u, guild=g, channel=ch,
                                            message_id=interaction.message_id)

    # ======================================================================
    # HTTP plumbing
    # ======================================================================
    def _setup_routes(self, app: web.Application) -> None:
        r = app.router
        a = API_PREFIX
        self._add_gateway_routes(r)
        self._add_attachment_routes(r)
        self._add_guild_routes(r)
        self._add_command_routes(r)
        r.add_post(a + "/interactions/{interaction_id}/{token}/callback", self._interaction_callback)
        r.add_post(a + "/webhooks/{webhook_id}/{token}", self._webhook_execute)
        r.add_get(a + "/webhooks/{webhook_id}/{token}/messages/{message_id}", self._webhook_get_message)
        r.add_patch(a + "/webhooks/{webhook_id}/{token}/messages/{message_id}", self._webhook_edit_message)
        r.add_delete(a + "/webhooks/{webhook_id}/{token}/messages/{message_id}", self._webhook_delete_message)
        self._add_message_routes(r)
        r.add_route("*", "/{tail:.*}", self._unhandled)

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
        rec = RequestRecord(method=request.method, path=rel, query=dict(request.query), t=time.monotonic())
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
                    return _json(payload, status=fault.status, headers=fault.headers)
                break
        if self._needs_auth(request.method, rel, request.path):
            rec.authorized = request.headers.get("Authorization", "") == f"Bot {self.bot_token}"
            if not rec.authorized:
                return _error(401, 0, "401: Unauthorized")
        if request.body_exists and request.method in ("POST", "PUT", "PATCH"):
            body = await self._body(request)
            rec.json, rec.files = body.json, body.files
        return await handler(request)

    async def _unhandled(self, request: web.Request) -> web.Response:
        rec = request.get(_RECORD_KEY)
        if rec is not None:
            self.unhandled.append(rec)
        log.warning("fake discord: unhandled %s %s", request.method, request.path)
        return _error(404, 0, "404: Not Found")


    # ======================================================================
    # REST handlers: interactions
    # ======================================================================
    async def _interaction_callback(self, request: web.Request) -> web.Response:
        rec = request[_RECORD_KEY]
        try:
            iid = int(request.match_info["interaction_id"])
        except ValueError:
            return _error(404, UNKNOWN_INTERACTION, "Unknown interaction")
        inter = self._interactions_by_id.get(iid)
        if inter is None or inter.token != request.match_info["token"]:
            return _error(404, UNKNOWN_INTERACTION, "Unknown interaction")
        now = time.monotonic()
        body = await self._body(request)
        payload = body.json or {}
        ctype = int(payload.get("type", 0))
        data = payload.get("data") or {}
        cb = CallbackRecord(type=ctype, data=data, files=body.files, at=now - inter.dispatched_t, status=0,
                            query=dict(request.query))
        inter.callbacks.append(cb)

        def fail(resp: web.Response) -> web.Response:
            cb.status = resp.status
            inter.rejected.append(rec)
            self._record("callback", {"interaction": inter, "callback": cb})
            return resp

        if inter.acknowledged:
            return fail(_error(400, INTERACTION_ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged."))
        if self.interaction_deadline is not None and cb.at > self.interaction_deadline:
            return fail(_error(404, UNKNOWN_INTERACTION, "Unknown interaction"))
        if ctype not in _ALLOWED_CALLBACKS.get(inter.type, set()):
            return fail(_form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                                    f"Interaction response type {ctype} is not valid for interaction type {inter.type}"))
        channel = self.channels[inter.channel_id]
        msg: Optional[MessageRecord] = None
        if ctype in (4, 7):
            bad = self._validate_message_payload(data, body.files, creating=(ctype == 4))
            if bad is not None:
                return fail(bad)
        if ctype == 4:
            flags = int(data.get("flags") or 0) & MessageFlags.EPHEMERAL
            msg = self._new_message(channel, data, body.files, kind="original", interaction=inter, flags=flags,
                                    mtype=self._response_type(inter))
            inter.original_id = msg.id
        elif ctype == 5:
            flags = MessageFlags.LOADING | (int(data.get("flags") or 0) & MessageFlags.EPHEMERAL)
            msg = self._new_message(channel, {}, [], kind="original", interaction=inter, flags=flags,
                                    mtype=self._response_type(inter))
            inter.original_id = msg.id
        elif ctype == 6:
            if inter.message_id is not None:
                inter.original_id = inter.message_id
        elif ctype == 7:
            if inter.message_id is None or inter.message_id not in self.messages:
                return fail(_error(400, INVALID_FORM_BODY, "Invalid Form Body"))
            msg = self._edit(self.messages[inter.message_id], data, body.files)
            inter.original_id = msg.id
        elif ctype == 8:
            inter.autocomplete_choices = list(data.get("choices") or [])
        elif ctype == 9:
            inter.modal = data
        cb.status = 200
        self._record("callback", {"interaction": inter, "callback": cb})

        with_response = request.query.get("with_response", "").lower() in ("1", "true")
        if not with_response:
            cb.status = 204
            return _no_content()
        out: Dict[str, Any] = {"interaction": {"id": str(inter.id), "type": inter.type}}
        if msg is not None:
            out["interaction"].update(response_message_id=str(msg.id), response_message_loading=msg.loading,
                                      response_message_ephemeral=msg.ephemeral)
            out["resource"] = {"type": ctype, "message": self._msg_json(msg)}
        return _json(out)

    @staticmethod
    def _response_type(inter: InteractionRecord) -> int:
        """Message type of a response to *inter* (20 slash command, 23 context menu, else 0)."""
        if inter.type != 2:
            return 0
        return _COMMAND_MESSAGE_TYPE.get(int((inter.payload.get("data") or {}).get("type", 1)), 20)

    def _webhook_interaction(self, request: web.Request) -> Tuple[Optional[InteractionRecord], Optional[web.Response]]:
        rec = request[_RECORD_KEY]
        inter = self._interactions_by_token.get(request.match_info["token"])
        if request.match_info["webhook_id"] != str(self.application_id):
            if inter is not None:
                inter.rejected.append(rec)
            return None, _error(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        if inter is None or inter.expired:
            if inter is not None:
                inter.rejected.append(rec)
                self._record("token_rejected", {"interaction": inter, "request": rec})
            return None, _error(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        return inter, None

    def _webhook_message(self, inter: InteractionRecord, request: web.Request
                         ) -> Tuple[Optional[MessageRecord], Optional[web.Response]]:
        ref = request.match_info["message_id"]
        if ref == "@original":
            mid = inter.original_id
        else:
            try:
                mid = int(ref)
            except ValueError:
                mid = None
            if mid not in (inter.original_id, *inter.followup_ids):
                mid = None
        msg = self.messages.get(mid) if mid is not None else None
        if msg is None or msg.deleted:
            inter.rejected.append(request[_RECORD_KEY])
            return None, _error(404, UNKNOWN_MESSAGE, "Unknown Message")
        return msg, None

    async def _webhook_execute(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        assert inter is not None
        if not inter.acknowledged:
            inter.rejected.append(request[_RECORD_KEY])
            return _error(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        body = await self._body(request)
        payload = body.json or {}
        bad = self._validate_message_payload(payload, body.files, creating=True)
        if bad is not None:
            inter.rejected.append(request[_RECORD_KEY])
            return bad
        original = self.messages.get(inter.original_id) if inter.original_id else None
        ack = inter.ack
        if (original is not None and original.loading and not inter.followup_ids and ack is not None
                and ack.type == 5):
            # Discord: the first followup after a "thinking" defer replaces the loading
            # message (keeping the defer's ephemerality) instead of creating a new one.
            msg = self._edit(original, payload, body.files)
            msg.edited_timestamp = None
        else:
            flags = int(payload.get("flags") or 0) & MessageFlags.EPHEMERAL
            msg = self._new_message(self.channels[inter.channel_id], payload, body.files, kind="followup",
                                    interaction=inter, flags=flags)
        inter.followup_ids.append(msg.id)
        self._record("followup", {"interaction": inter, "message": msg})
        if request.query.get("wait", "").lower() in ("1", "true"):
            return _json(self._msg_json(msg))
        return _no_content()

    async def _webhook_get_message(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        msg, err = self._webhook_message(inter, request)  # type: ignore[arg-type]
        return err or _json(self._msg_json(msg))  # type: ignore[arg-type]

    async def _webhook_edit_message(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        assert inter is not None
        msg, err = self._webhook_message(inter, request)
        if err:
            return err
        assert msg is not None
        body = await self._body(request)
        payload = body.json or {}
        bad = self._validate_message_payload(payload, body.files, creating=False)
        if bad is not None:
            inter.rejected.append(request[_RECORD_KEY])
            return bad
        self._edit(msg, payload, body.files)
        if msg.id == inter.original_id:
            inter.original_edits.append((time.monotonic() - inter.dispatched_t, payload))
        self._record("webhook_edit", {"interaction": inter, "message": msg})
        return _json(self._msg_json(msg))

    async def _webhook_delete_message(self, request: web.Request) -> web.Response:
        inter, err = self._webhook_interaction(request)
        if err:
            return err
        msg, err = self._webhook_message(inter, request)  # type: ignore[arg-type]
        if err:
            return err
        msg.deleted = True  # type: ignore[union-attr]
        self._record("message_delete", msg)
        return _no_content()
