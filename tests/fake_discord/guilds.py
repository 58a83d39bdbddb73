"""Who and where: guilds, channels, roles, members, users, DMs, permissions, the application.

Test-facing builders (``add_guild``, ``add_guilds`` (many at once), ``add_channel``, ``add_user``,
``set_overwrite``...) and lookups (``user``, ``dm_channel``, ``permissions_of``), plus the REST reads
discord.py makes of them:
``/users/@me``, ``/users/{id}``, ``POST /users/@me/channels`` (DMs), ``/applications/@me``,
``/channels/{id}``, ``/guilds/{id}`` (+ ``/channels``, ``/roles``, ``/members/{user}``), and a
guild's scheduled events (``POST``/``GET /guilds/{id}/scheduled-events``, ``DELETE .../{event}``:
the bot needs Manage Events, else 403 ``50013``; kept in ``Guild.scheduled_events``, recorded as
``scheduled_event_create`` / ``scheduled_event_delete`` events).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Tuple

from aiohttp import web

from .common import (
    API_PREFIX,
    INVALID_RECIPIENTS,
    MISSING_PERMISSIONS,
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    UNKNOWN_MEMBER,
    UNKNOWN_USER,
    FakeDiscordError,
    _error,
    _form_error,
    _json,
    _no_content,
)
from .models import Channel, Guild, Member, Permissions, Role, User, as_id, snowflake, spread_snowflake


class GuildsMixin:
    """``FakeDiscord``'s entities (state: ``users``, ``guilds``, ``channels``, ``_dm_channels``,
    ``_bot_role_ids``, ``_bot_permissions``)."""

    def _add_guild_routes(self, r: web.UrlDispatcher) -> None:
        a = API_PREFIX
        r.add_get(a + "/users/@me", self._get_me)
        r.add_get(a + "/users/{user_id:\\d+}", self._get_user)
        r.add_post(a + "/users/@me/channels", self._create_dm)
        r.add_get(a + "/applications/@me", self._get_application)
        r.add_get(a + "/oauth2/applications/@me", self._get_application)
        r.add_get(a + "/channels/{channel_id}", self._get_channel)
        r.add_get(a + "/guilds/{guild_id}", self._get_guild)
        r.add_get(a + "/guilds/{guild_id}/channels", self._get_guild_channels)
        r.add_get(a + "/guilds/{guild_id}/roles", self._get_guild_roles)
        r.add_get(a + "/guilds/{guild_id}/members/{user_id}", self._get_member)
        r.add_post(a + "/guilds/{guild_id}/scheduled-events", self._create_scheduled_event)
        r.add_get(a + "/guilds/{guild_id}/scheduled-events", self._list_scheduled_events)
        r.add_delete(a + "/guilds/{guild_id}/scheduled-events/{event_id}", self._delete_scheduled_event)

    # -- building the world (test-facing) --------------------------------------
    def add_guild(self, name: str = "Guild", *, id: Optional[int] = None, owner: Any = None,
                  everyone_permissions: int = Permissions.DEFAULT_EVERYONE, shard: Optional[int] = None) -> Guild:
        """A guild with @everyone, the bot (with its managed role) and *owner* as members.

        Its id is a snowflake a millisecond apart from the previous guild's, so guilds spread over
        shards; ``shard`` picks an id on that shard (``(id >> 22) % shard_count``) instead."""
        gid = id or (self._snowflake_on_shard(shard) if shard is not None else spread_snowflake())
        owner_user = self.user(owner) if owner is not None else self.owner
        guild = Guild(id=gid, name=name, owner_id=owner_user.id)
        guild.roles[gid] = Role(id=gid, guild_id=gid, name="@everyone", permissions=everyone_permissions)
        bot_role = Role(id=snowflake(), guild_id=gid, name=self.bot_user.username, permissions=0,
                        position=1, managed=True, bot_id=self.bot_user.id)
        guild.roles[bot_role.id] = bot_role
        self._bot_role_ids[gid] = bot_role.id
        guild.members[self.bot_user.id] = Member(user=self.bot_user, guild_id=gid, roles=[bot_role.id])
        guild.members[owner_user.id] = Member(user=owner_user, guild_id=gid)
        self.guilds[gid] = guild
        if self.guild is None:
            self.guild = guild
        self._sync_bot_role(guild)
        return guild

    def add_guilds(self, count: int, *, members: int = 3, name: str = "Guild",
                   shard: Optional[int] = None) -> List[Guild]:
        """*count* guilds named ``"<name> <k>"``, each with a "general" text channel and *members*
        new users (``<name>-<k>-member<j>``, lower-case) besides the owner and the bot: a world of
        many servers for load tests (1,000 guilds with 3 members take a fraction of a second).
        ``shard`` puts them all on that shard; by default they spread evenly over the shards."""
        slug = name.lower().replace(" ", "-")
        made: List[Guild] = []
        for k in range(len(self.guilds), len(self.guilds) + count):
            guild = self.add_guild(f"{name} {k}", shard=shard)
            self.add_channel("general", guild=guild)
            for j in range(members):
                self.add_user(f"{slug}-{k}-member{j}", guild=guild)
            made.append(guild)
        return made

    def _sync_bot_role(self, guild: Guild) -> None:
        rid = self._bot_role_ids.get(guild.id)
        if rid is not None:
            guild.roles[rid].permissions = self._bot_permissions

    @property
    def bot_permissions(self) -> int:
        """Permission bits of the bot's managed role (→ ``app_permissions``); settable."""
        return self._bot_permissions

    @bot_permissions.setter
    def bot_permissions(self, value: int) -> None:
        self._bot_permissions = int(value)
        for guild in self.guilds.values():
            self._sync_bot_role(guild)

    def add_channel(self, name: str = "channel", *, guild: Any = None, type: int = 0,
                    id: Optional[int] = None, topic: Optional[str] = None) -> Channel:
        g = self._guild(guild)
        cid = id or snowflake()
        channel = Channel(id=cid, type=type, name=name, guild_id=g.id, position=len(g.channels), topic=topic)
        g.channels[cid] = channel
        self.channels[cid] = channel
        return channel

    def add_role(self, name: str, permissions: int = 0, *, guild: Any = None) -> Role:
        g = self._guild(guild)
        role = Role(id=snowflake(), guild_id=g.id, name=name, permissions=int(permissions), position=len(g.roles))
        g.roles[role.id] = role
        return role

    def add_user(self, username: str, *, id: Optional[int] = None, guild: Any = None, join: bool = True,
                 permissions: int = 0, roles: Iterable[Any] = (), global_name: Optional[str] = None,
                 bot: bool = False, nick: Optional[str] = None, locale: str = "en-US") -> User:
        """Create a user; by default it joins the default guild (``join=False`` to skip).

        ``permissions`` creates a role "<username>-perms" with those bits and assigns it.
        """
        user = User(id=id or snowflake(), username=username, global_name=global_name or username.title(),
                    bot=bot, locale=locale)
        self.users[user.id] = user
        self._users_by_name.setdefault(username, user)  # the first user of a name wins, as lookups did
        if join and (guild is not None or self.guild is not None):
            self.add_member(user, guild=guild, permissions=permissions, roles=roles, nick=nick)
        return user

    def add_member(self, user: Any, *, guild: Any = None, permissions: int = 0, roles: Iterable[Any] = (),
                   nick: Optional[str] = None) -> Member:
        u = self.user(user)
        g = self._guild(guild)
        role_ids = [as_id(r) for r in roles]
        if permissions:
            role_ids.append(self.add_role(f"{u.username}-perms", permissions, guild=g).id)
        member = Member(user=u, guild_id=g.id, roles=role_ids, nick=nick)
        g.members[u.id] = member
        return member

    # -- lookups ---------------------------------------------------------------
    def user(self, ref: Any) -> User:
        """Look a user up by record, id or username."""
        if isinstance(ref, User):
            return ref
        if isinstance(ref, str) and not ref.isdigit():
            found = self._users_by_name.get(ref)
            if found is None:
                raise FakeDiscordError(f"no user named {ref!r}")
            return found
        uid = as_id(ref)
        if uid not in self.users:
            raise FakeDiscordError(f"no user with id {uid}")
        return self.users[uid]

    def default_user(self) -> User:
        g = self.guild
        if g is not None:
            for m in g.members.values():
                if not m.user.bot and m.user.id != g.owner_id:
                    return m.user
        for u in self.users.values():
            if not u.bot:
                return u
        raise FakeDiscordError("no users")

    def _guild(self, ref: Any) -> Guild:
        if ref is None:
            if self.guild is None:
                raise FakeDiscordError("no default guild")
            return self.guild
        if isinstance(ref, Guild):
            return ref
        gid = as_id(ref)
        if gid not in self.guilds:
            raise FakeDiscordError(f"no guild {gid}")
        return self.guilds[gid]

    def _channel(self, ref: Any) -> Channel:
        if ref is None:
            if self.channel is None:
                raise FakeDiscordError("no default channel")
            return self.channel
        if isinstance(ref, Channel):
            return ref
        cid = as_id(ref)
        if cid not in self.channels:
            raise FakeDiscordError(f"no channel {cid}")
        return self.channels[cid]

    def dm_channel(self, user: Any) -> Channel:
        """The DM channel between the bot and *user* (created on demand)."""
        u = self.user(user)
        ch = self._dm_channels.get(u.id)
        if ch is None:
            ch = Channel(id=snowflake(), type=1, recipient=u)
            self._dm_channels[u.id] = ch
            self.channels[ch.id] = ch
        return ch

    def set_overwrite(self, channel: Any, target: Any, *, allow: int = 0, deny: int = 0) -> None:
        """A permission overwrite on *channel* for a role (a ``Role``) or a member (a user ref);
        sent with the channel in GUILD_CREATE and applied to interactions' permissions there.
        Set it before the bot connects (no CHANNEL_UPDATE is dispatched)."""
        ch = self._channel(channel)
        if isinstance(target, Role):
            ch.overwrites[target.id] = (0, int(allow), int(deny))
        else:
            ch.overwrites[self.user(target).id] = (1, int(allow), int(deny))

    def permissions_of(self, user: Any, guild: Any = None) -> int:
        return self._guild(guild).permissions_of(self.user(user).id)

    # -- REST: the bot and its application -------------------------------------
    def _me_json(self) -> Dict[str, Any]:
        data = self.bot_user.to_json()
        data.update(verified=True, mfa_enabled=False, locale="en-US", email=None, bio="")
        return data

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json(self._me_json())

    async def _get_user(self, request: web.Request) -> web.Response:
        uid = int(request.match_info["user_id"])
        user = self.users.get(uid)
        if user is None:
            return _error(404, UNKNOWN_USER, "Unknown User")
        return _json(user.to_json())

    async def _get_application(self, request: web.Request) -> web.Response:
        return _json({
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "bot": self.bot_user.to_json(),
            "owner": self.owner.to_json(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": self.app_flags,
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "redirect_uris": [],
            "tags": [],
            "approximate_guild_count": len(self.guilds),
            "integration_types_config": {"0": {}},
        })

    # -- REST: scheduled events ------------------------------------------------
    def _events_guild(self, request: web.Request) -> Tuple[Optional[Guild], Optional[web.Response]]:
        g = self.guilds.get(int(request.match_info["guild_id"]))
        if g is None:
            return None, _error(404, UNKNOWN_GUILD, "Unknown Guild")
        if not g.permissions_of(self.bot_user.id) & Permissions.MANAGE_EVENTS:
            return None, _error(403, MISSING_PERMISSIONS, "Missing Permissions")
        return g, None

    async def _create_scheduled_event(self, request: web.Request) -> web.Response:
        """An external event (entity type 3), as Discord validates it: a name of 1-100, guild-only
        privacy (2), a location, a start in the future and an end after it."""
        g, err = self._events_guild(request)
        if err:
            return err
        assert g is not None
        p = (await self._body(request)).json or {}
        name = str(p.get("name") or "")
        if not 1 <= len(name) <= 100:
            return _form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if p.get("privacy_level") != 2:
            return _form_error("privacy_level", "BASE_TYPE_CHOICES", "Value must be one of {2}.")
        if p.get("entity_type") != 3:
            return _form_error("entity_type", "BASE_TYPE_CHOICES", "The fake only implements external events (3).")
        location = str((p.get("entity_metadata") or {}).get("location") or "")
        if not 1 <= len(location) <= 100:
            return _form_error("entity_metadata.location", "BASE_TYPE_BAD_LENGTH",
                               "Must be between 1 and 100 in length.")
        try:
            start = datetime.fromisoformat(str(p["scheduled_start_time"]))
            end = datetime.fromisoformat(str(p["scheduled_end_time"]))
        except (KeyError, ValueError):
            return _form_error("scheduled_start_time", "DATE_TIME_TYPE_PARSE", "Could not parse the date.")
        if start <= datetime.now(timezone.utc):
            return _form_error("scheduled_start_time", "GUILD_SCHEDULED_EVENT_SCHEDULE_PAST",
                               "Cannot schedule event in the past.")
        if end <= start:
            return _form_error("scheduled_end_time", "GUILD_SCHEDULED_EVENT_END_BEFORE_START",
                               "Cannot schedule event to end before starting.")
        eid = snowflake()
        data = {"id": str(eid), "guild_id": str(g.id), "channel_id": None, "creator_id": str(self.bot_user.id),
                "creator": self.bot_user.to_json(), "name": name, "description": p.get("description"),
                "scheduled_start_time": start.isoformat(), "scheduled_end_time": end.isoformat(),
                "privacy_level": 2, "status": 1, "entity_type": 3, "entity_id": None,
                "entity_metadata": {"location": location}, "user_count": 0, "image": None, "recurrence_rule": None}
        g.scheduled_events[eid] = data
        self._record("scheduled_event_create", data)
        return _json(data)

    async def _list_scheduled_events(self, request: web.Request) -> web.Response:
        g = self.guilds.get(int(request.match_info["guild_id"]))
        if g is None:
            return _error(404, UNKNOWN_GUILD, "Unknown Guild")
        return _json(list(g.scheduled_events.values()))

    async def _delete_scheduled_event(self, request: web.Request) -> web.Response:
        g, err = self._events_guild(request)
        if err:
            return err
        assert g is not None
        data = g.scheduled_events.pop(int(request.match_info["event_id"]), None)
        if data is None:
            return _error(404, 10070, "Unknown Guild Scheduled Event")
        self._record("scheduled_event_delete", data)
        return _no_content()

    # -- REST: guilds, channels, DMs -------------------------------------------
    async def _get_guild(self, request: web.Request) -> web.Response:
        g = self.guilds.get(int(request.match_info["guild_id"]))
        if g is None:
            return _error(404, UNKNOWN_GUILD, "Unknown Guild")
        data = g.to_json()
        for key in ("members", "channels", "threads", "presences", "voice_states", "joined_at", "large",
                    "member_count", "stage_instances", "guild_scheduled_events", "soundboard_sounds"):
            data.pop(key, None)
        return _json(data)

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        g = self.guilds.get(int(request.match_info["guild_id"]))
        if g is None:
            return _error(404, UNKNOWN_GUILD, "Unknown Guild")
        return _json([c.to_json() for c in g.channels.values()])

    async def _get_guild_roles(self, request: web.Request) -> web.Response:
        g = self.guilds.get(int(request.match_info["guild_id"]))
        if g is None:
            return _error(404, UNKNOWN_GUILD, "Unknown Guild")
        return _json([r.to_json() for r in g.roles.values()])

    async def _get_member(self, request: web.Request) -> web.Response:
        g = self.guilds.get(int(request.match_info["guild_id"]))
        if g is None:
            return _error(404, UNKNOWN_GUILD, "Unknown Guild")
        m = g.members.get(int(request.match_info["user_id"]))
        if m is None:
            return _error(404, UNKNOWN_MEMBER, "Unknown Member")
        return _json(m.to_json())

    def _channel_or_error(self, request: web.Request) -> Tuple[Optional[Channel], Optional[web.Response]]:
        try:
            cid = int(request.match_info["channel_id"])
        except ValueError:
            return None, _error(404, UNKNOWN_CHANNEL, "Unknown Channel")
        ch = self.channels.get(cid)
        if ch is None:
            return None, _error(404, UNKNOWN_CHANNEL, "Unknown Channel")
        return ch, None

    async def _get_channel(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        return err or _json(ch.to_json())  # type: ignore[union-attr]

    async def _create_dm(self, request: web.Request) -> web.Response:
        payload = (await self._body(request)).json or {}
        try:
            uid = int(payload.get("recipient_id"))
        except (TypeError, ValueError):
            return _form_error("recipient_id", "BASE_TYPE_REQUIRED", "This field is required")
        if uid not in self.users or uid == self.bot_user.id:
            return _error(400, INVALID_RECIPIENTS, "Invalid Recipient(s)")
        ch = self.dm_channel(uid)
        self._record("dm_channel", ch)
        return _json(ch.to_json())
