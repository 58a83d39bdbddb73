"""Interactions sent to the bot: slash commands, autocomplete, context menus, components, modals.

Each sender builds the INTERACTION_CREATE payload Discord would (member and permissions, resolved
options, the clicked message...), records an :class:`~.models.InteractionRecord` and dispatches it
on the gateway. What the bot answers (callbacks, followups) is handled in ``webhooks.py``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .common import FakeDiscordError
from .models import (
    AttachmentRecord,
    Channel,
    Guild,
    InteractionRecord,
    Member,
    MessageRecord,
    Permissions,
    Role,
    User,
    as_id,
    snowflake,
)

_OPTION_VALUE_TYPES = {3: str, 4: int, 5: bool, 10: float}


class InteractionsMixin:
    """``FakeDiscord``'s interaction senders (state: ``interactions``, ``_interactions_by_id``,
    ``_interactions_by_token``)."""

    # -- building and sending the payload --------------------------------------
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

    def _upload(self, value: Any) -> Dict[str, Any]:
        """An uploaded file's attachment object: an ``add_attachment`` dict, record or name."""
        if isinstance(value, str) and value in self._attachments_by_name:
            return self._attachments_by_name[value].to_json()
        if isinstance(value, AttachmentRecord):
            return value.to_json()
        if isinstance(value, dict):
            return value
        raise FakeDiscordError(f"an upload needs an add_attachment() dict, got {value!r}")

    def _resolve_value(self, opt_type: int, value: Any, resolved: Dict[str, Dict[str, Any]],
                       guild: Optional[Guild]) -> Any:
        if opt_type in _OPTION_VALUE_TYPES:
            return _OPTION_VALUE_TYPES[opt_type](value)
        if opt_type == 11:  # attachment
            att = self._upload(value)
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
        session = await self._wait_session_for(guild)  # the guild's shard (DMs: shard 0)
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

    # -- application commands --------------------------------------------------
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

    # -- components and modals -------------------------------------------------
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

        *values* maps text-input custom_id → string (select custom_id → list of strings; file
        upload custom_id → list of ``add_attachment`` dicts or their names, sent as Discord does:
        the component's ``values`` are attachment ids, the attachments in ``data.resolved``).
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
            if t == 19:  # a file upload: the attachments go to data.resolved, the values name them
                files = [self._upload(a) for a in values.get(cid, [])]
                lo, hi = int(comp.get("min_values") or 1), int(comp.get("max_values") or 1)
                if comp.get("required", True) and not lo <= len(files) <= hi:
                    raise FakeDiscordError(f"file upload {cid!r} takes {lo}..{hi} files, got {len(files)}")
                uploads.update((str(f["id"]), f) for f in files)
                return {"type": 19, "id": comp.get("id", 0), "custom_id": cid, "values": [str(f["id"]) for f in files]}
            return {"type": t, "id": comp.get("id", 0), "custom_id": cid, "values": list(values.get(cid, []))}

        uploads: Dict[str, Dict[str, Any]] = {}
        comps = [c for c in map(convert, modal.get("components", [])) if c]
        u = self.user(user) if user is not None else interaction.user
        ch = self.channels[interaction.channel_id]
        g = self.guilds.get(interaction.guild_id) if interaction.guild_id else None
        data: Dict[str, Any] = {"custom_id": modal["custom_id"], "components": comps}
        if uploads:
            data["resolved"] = {"attachments": uploads}
        payload = self._base_interaction(5, data, u, ch, g)
        if interaction.message_id is not None and interaction.message_id in self.messages:
            payload["message"] = self._msg_json(self.messages[interaction.message_id])
        return await self._send_interaction(payload, name=modal["custom_id"], user=u, guild=g, channel=ch,
                                            message_id=interaction.message_id)
