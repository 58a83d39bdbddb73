"""Messages: the bot's channel messages (create/read/edit/delete, replies, reactions, typing) and
members' messages (``post_user_message``), with what both kinds of message share.

``_new_message`` / ``_edit`` are also how interaction responses and followups are stored
(``webhooks.py``). Content is hidden from an app without the message-content intent, over REST
(``app_flags``) and on the gateway (IDENTIFY intents), as Discord does.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from aiohttp import web

from .common import (
    API_PREFIX,
    INVALID_FORM_BODY,
    CANNOT_EDIT_OTHERS_MESSAGE,
    CANNOT_EXECUTE_ON_DM,
    CANNOT_SEND_EMPTY_MESSAGE,
    CANNOT_SEND_TO_USER,
    MISSING_PERMISSIONS,
    REQUEST_TOO_LARGE,
    UNKNOWN_MESSAGE,
    FakeDiscordError,
    _error,
    _form_error,
    _json,
    _no_content,
)
from .models import (
    ApplicationFlags,
    Channel,
    Intents,
    InteractionRecord,
    MessageFlags,
    MessageRecord,
    Permissions,
    StoredFile,
    as_id,
    iso_now,
    snowflake,
)

_MENTION_RE = re.compile(r"<@!?(\d+)>")


class MessagesMixin:
    """``FakeDiscord``'s messages (state: ``messages`` id → record, ``_channel_messages`` channel → ids)."""

    def _add_message_routes(self, r: web.UrlDispatcher) -> None:
        a = API_PREFIX + "/channels/{channel_id}"
        r.add_get(a + "/messages", self._list_messages)
        r.add_post(a + "/messages", self._create_message)
        r.add_get(a + "/messages/{message_id}", self._get_message)
        r.add_patch(a + "/messages/{message_id}", self._edit_message)
        r.add_delete(a + "/messages/{message_id}", self._delete_message)
        r.add_post(a + "/typing", self._typing)
        r.add_post(a + "/messages/{message_id}/threads", self._start_thread)
        r.add_put(a + "/messages/{message_id}/reactions/{emoji}/@me", self._add_reaction)
        r.add_delete(a + "/messages/{message_id}/reactions/{emoji}/@me", self._remove_reaction)

    # -- message views (test-facing) -------------------------------------------
    def messages_in(self, channel: Any, *, include_ephemeral: bool = False,
                    include_deleted: bool = False, author: Any = None) -> List[MessageRecord]:
        """Messages in *channel*, oldest first: the bot's (channel posts, interaction responses,
        followups) and members' (``post_user_message``). ``author`` (a user ref, e.g.
        ``fake.bot_user`` or ``"alice"``) keeps only that author's."""
        cid = as_id(channel)
        author_id = None if author is None else self.user(author).id
        out = []
        for mid in self._channel_messages.get(cid, []):
            msg = self.messages[mid]
            if msg.deleted and not include_deleted:
                continue
            if msg.ephemeral and not include_ephemeral:
                continue
            if author_id is not None and msg.author.id != author_id:
                continue
            out.append(msg)
        return out

    def dms_to(self, user: Any) -> List[MessageRecord]:
        """The bot's messages in its DM channel with *user*."""
        u = self.user(user)
        ch = self._dm_channels.get(u.id)
        return [] if ch is None else self.messages_in(ch, author=self.bot_user)

    async def wait_for_message(self, channel: Any = None, predicate: Optional[Callable[[MessageRecord], Any]] = None,
                               timeout: float = 10.0, *, dm_to: Any = None, from_bot: bool = True) -> MessageRecord:
        """Wait for a (non-ephemeral) message in *channel* (or DM to *dm_to*) matching *predicate*;
        only the bot's unless ``from_bot=False``."""
        def find():
            if dm_to is not None:
                msgs = self.dms_to(dm_to)
            else:
                msgs = self.messages_in(self._channel(channel), author=self.bot_user if from_bot else None)
            for m in msgs:
                if predicate is None or predicate(m):
                    return m
            return None
        return await self.wait_for(find, timeout, what="message")

    # -- members' messages -----------------------------------------------------
    async def post_user_message(self, channel: Any = None, *, user: Any = None, content: str = "",
                                attachments: Iterable[Any] = (), embeds: Iterable[Dict[str, Any]] = (),
                                reply_to: Any = None, dispatch: bool = True) -> MessageRecord:
        """A member (not the bot) posts a message in *channel* (default ``fake.channel``; a DM channel
        from ``fake.dm_channel(user)`` works too) and it is stored like the bot's messages.

        ``attachments``: ``add_attachment`` dicts (or registered names); their bytes stay served at
        their URL. ``embeds``: embed dicts, e.g. ``{"type": "image", "url": u, "thumbnail": {"url":
        u}}`` or ``{"image": {"url": u}}``; for URLs of the fake, ``proxy_url``/``width``/``height``/
        ``content_type`` are filled in as Discord does. ``reply_to``: a message (record or id) in the
        same channel → a reply (type 19). ``<@id>`` in ``content`` fills ``mentions``.

        MESSAGE_CREATE is dispatched when a session is ready and its intents include
        GUILD_MESSAGES (DIRECT_MESSAGES in DMs), emptied of content/embeds/attachments/components
        without the MESSAGE_CONTENT intent (unless a DM or the bot is mentioned), as Discord does.
        REST reads (GET message / history) are emptied likewise unless ``app_flags`` has a
        message-content bit (``ApplicationFlags.MESSAGE_CONTENT``); message-command interactions
        always carry the full message.
        """
        u = self.user(user) if user is not None else self.default_user()
        ch = self._channel(channel)
        if ch.is_dm:
            if ch.recipient is None or ch.recipient.id != u.id:
                raise FakeDiscordError(f"{u.username} is not the recipient of DM channel {ch.id}")
        else:
            g = self.guilds[ch.guild_id]
            if u.id not in g.members:
                raise FakeDiscordError(f"user {u.username} is not a member of guild {g.name}")
        atts = [self._message_attachment(a) for a in attachments]
        embeds = [self._complete_embed(e) for e in embeds]
        if not content and not atts and not embeds:
            raise FakeDiscordError("a message needs content, attachments or embeds")
        if len(content) > 2000 or len(atts) > 10 or len(embeds) > 10:
            raise FakeDiscordError("content over 2000 characters, or over 10 attachments/embeds")
        msg = MessageRecord(id=snowflake(), channel_id=ch.id, guild_id=ch.guild_id, author=u, content=content,
                            embeds=embeds, attachments=atts, kind="channel")
        msg.mentions = [self.users[int(x)] for x in dict.fromkeys(_MENTION_RE.findall(content))
                        if int(x) in self.users]
        if reply_to is not None:
            target = self.messages.get(as_id(reply_to))
            if target is None or target.channel_id != ch.id or target.deleted or target.ephemeral:
                raise FakeDiscordError(f"cannot reply to message {as_id(reply_to)} in channel {ch.id}")
            msg.type = 19
            msg.message_reference = self._reference_json(target)
            msg.referenced = target
        self._add_message(msg)
        session = self._session_for_guild(ch.guild_id)  # the guild's shard (DMs: shard 0)
        if dispatch and session is not None and session.ready.is_set():
            intents = session.intents or 0
            if intents & (Intents.DIRECT_MESSAGES if ch.is_dm else Intents.GUILD_MESSAGES):
                def gateway_redact(m: MessageRecord) -> bool:
                    return not intents & Intents.MESSAGE_CONTENT and self._content_hidden(m)
                data = msg.to_json(redact=gateway_redact)
                if not ch.is_dm:
                    data["member"] = self.guilds[ch.guild_id].members[u.id].to_json(with_user=False)
                await session.dispatch("MESSAGE_CREATE", data)
        return msg

    def _content_hidden(self, msg: MessageRecord) -> bool:
        """Whether Discord hides *msg*'s content from an app without the message-content intent:
        not the app's own message, not in a DM, the app not mentioned."""
        if msg.author.id == self.bot_user.id:
            return False
        ch = self.channels.get(msg.channel_id)
        if ch is not None and ch.is_dm:
            return False
        return all(u.id != self.bot_user.id for u in msg.mentions)

    def _rest_redact(self, msg: MessageRecord) -> bool:
        return not self.app_flags & ApplicationFlags.MESSAGE_CONTENT and self._content_hidden(msg)

    def _msg_json(self, msg: MessageRecord) -> Dict[str, Any]:
        """A message as the REST API shows it to the bot."""
        return msg.to_json(redact=self._rest_redact)

    @staticmethod
    def _reference_json(target: MessageRecord) -> Dict[str, Any]:
        ref: Dict[str, Any] = {"type": 0, "channel_id": str(target.channel_id), "message_id": str(target.id)}
        if target.guild_id is not None:
            ref["guild_id"] = str(target.guild_id)
        return ref

    # -- storing the bot's messages (channel posts, interaction responses) -----
    def _validate_message_payload(self, payload: Dict[str, Any], files: List[StoredFile], *, creating: bool,
                                  existing_attachments: int = 0) -> Optional[web.Response]:
        content = payload.get("content")
        if content is not None and not isinstance(content, str):
            return _form_error("content", "BASE_TYPE_STRING", "Must be a string.")
        if content and len(content) > 2000:
            return _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        embeds = payload.get("embeds") or []
        if len(embeds) > 10:
            return _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        for i, emb in enumerate(embeds):
            if len(emb.get("description") or "") > 4096:
                return _form_error(f"embeds.{i}.description", "BASE_TYPE_MAX_LENGTH",
                                   "Must be 4096 or fewer in length.")
            if len(emb.get("title") or "") > 256:
                return _form_error(f"embeds.{i}.title", "BASE_TYPE_MAX_LENGTH", "Must be 256 or fewer in length.")
        comps = payload.get("components") or []
        flags = int(payload.get("flags") or 0)
        if not flags & MessageFlags.IS_COMPONENTS_V2 and len(comps) > 5:
            return _form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        if len(files) > 10:
            return _form_error("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if sum(len(f.data) for f in files) > self.attachment_size_limit:
            return _error(413, REQUEST_TOO_LARGE, "Request entity too large")
        if creating and not content and not embeds and not files and not comps and not payload.get("sticker_ids") \
                and not payload.get("poll") and not existing_attachments:
            return _error(400, CANNOT_SEND_EMPTY_MESSAGE, "Cannot send an empty message")
        return None

    def _add_message(self, msg: MessageRecord) -> MessageRecord:
        self.messages[msg.id] = msg
        self._channel_messages.setdefault(msg.channel_id, []).append(msg.id)
        self._record("message_create", msg)
        return msg

    @staticmethod
    def _apply_fields(msg: MessageRecord, payload: Dict[str, Any]) -> None:
        if "content" in payload:
            msg.content = payload["content"] or ""
        if "embeds" in payload:
            msg.embeds = list(payload["embeds"] or [])
        elif "embed" in payload:
            msg.embeds = [payload["embed"]] if payload["embed"] else []
        if "components" in payload:
            msg.components = list(payload["components"] or [])
        if payload.get("flags") is not None:
            settable = MessageFlags.SUPPRESS_EMBEDS | MessageFlags.IS_COMPONENTS_V2
            msg.flags = (msg.flags & ~settable) | (int(payload["flags"]) & settable)

    def _edit(self, msg: MessageRecord, payload: Dict[str, Any], files: List[StoredFile]) -> MessageRecord:
        msg.history.append(msg.snapshot())
        self._apply_fields(msg, payload)
        if "attachments" in payload or files:
            msg.attachments = self._resolve_attachments(msg.channel_id, payload, files, msg.attachments,
                                                        editing=True)
        msg.flags &= ~MessageFlags.LOADING
        msg.edited_timestamp = iso_now()
        msg.edited_t = time.monotonic()
        self._record("message_edit", msg)
        return msg

    def _new_message(self, channel: Channel, payload: Dict[str, Any], files: List[StoredFile], *,
                     kind: str = "channel", interaction: Optional[InteractionRecord] = None,
                     flags: int = 0, mtype: int = 0, reference: Optional[MessageRecord] = None) -> MessageRecord:
        msg = MessageRecord(id=snowflake(), channel_id=channel.id, guild_id=channel.guild_id, author=self.bot_user,
                            kind=kind, type=mtype, tts=bool(payload.get("tts", False)))
        if reference is not None:
            msg.message_reference = self._reference_json(reference)
            msg.referenced = reference
        self._apply_fields(msg, payload)
        keep = MessageFlags.SUPPRESS_EMBEDS | MessageFlags.SUPPRESS_NOTIFICATIONS | MessageFlags.IS_COMPONENTS_V2
        msg.flags = (int(payload.get("flags") or 0) & keep) | flags
        msg.attachments = self._resolve_attachments(channel.id, payload, files, [], editing=False)
        if msg.ephemeral:
            for a in msg.attachments:
                a.ephemeral = True
        if interaction is not None:
            msg.webhook_id = self.application_id
            msg.application_id = self.application_id
            msg.interaction_id = interaction.id
            meta: Dict[str, Any] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.to_json(),
                "authorizing_integration_owners": interaction.payload.get("authorizing_integration_owners", {}),
            }
            if interaction.type == 2:
                data = interaction.payload.get("data") or {}
                meta["name"] = interaction.name
                meta["command_type"] = int(data.get("type", 1))
                if data.get("type") == 3:
                    meta["target_message_id"] = str(data["target_id"])
                elif data.get("type") == 2:
                    meta["target_user"] = data["resolved"]["users"][str(data["target_id"])]
            if interaction.message_id is not None:
                meta["interacted_message_id"] = str(interaction.message_id)
            if kind == "followup" and interaction.original_id is not None:
                meta["original_response_message_id"] = str(interaction.original_id)
            msg.interaction_metadata = meta
        return self._add_message(msg)

    # -- REST: channel messages ------------------------------------------------
    def _refusal(self, ch: Channel) -> Optional[web.Response]:
        refused = self._refused_channels.get(ch.id)
        if refused is not None:
            status, code, message = refused
            return _error(status, code, message)
        if ch.is_dm and ch.recipient is not None and ch.recipient.id in self._blocked_dm_users:
            return _error(403, CANNOT_SEND_TO_USER, "Cannot send messages to this user")
        return None

    def _channel_message(self, ch: Channel, request: web.Request) -> Tuple[Optional[MessageRecord], Optional[web.Response]]:
        try:
            mid = int(request.match_info["message_id"])
        except ValueError:
            return None, _error(404, UNKNOWN_MESSAGE, "Unknown Message")
        msg = self.messages.get(mid)
        if msg is None or msg.channel_id != ch.id or msg.deleted or msg.ephemeral:
            return None, _error(404, UNKNOWN_MESSAGE, "Unknown Message")
        return msg, None

    async def _list_messages(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        try:
            limit = int(request.query.get("limit", "50"))
            before, after, around = (int(request.query[k]) if k in request.query else None
                                     for k in ("before", "after", "around"))
        except ValueError:
            return _form_error("limit", "NUMBER_TYPE_COERCE", "Value is not int.")
        if not 1 <= limit <= 100:
            return _form_error("limit", "NUMBER_TYPE_MAX" if limit > 100 else "NUMBER_TYPE_MIN",
                               "int value should be between 1 and 100.")
        msgs = self.messages_in(ch)  # oldest first; Discord answers newest first
        if around is not None:
            pos = next((i for i, m in enumerate(msgs) if m.id >= around), len(msgs))
            start = max(0, pos - limit // 2)
            out = list(reversed(msgs[start:start + limit]))
        elif after is not None:
            out = list(reversed([m for m in msgs if m.id > after][:limit]))
        else:
            if before is not None:
                msgs = [m for m in msgs if m.id < before]
            out = list(reversed(msgs))[:limit]
        return _json([self._msg_json(m) for m in out])

    async def _create_message(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        assert ch is not None
        refused = self._refusal(ch)
        if refused is not None:
            return refused
        body = await self._body(request)
        payload = body.json or {}
        bad = self._validate_message_payload(payload, body.files, creating=True)
        if bad is not None:
            return bad
        target: Optional[MessageRecord] = None
        ref = payload.get("message_reference")
        if ref:
            if not isinstance(ref, dict):
                return _form_error("message_reference", "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
            if int(ref.get("type") or 0) != 0:
                return _form_error("message_reference.type", "BASE_TYPE_CHOICES",
                                   "The fake only implements replies (type 0), not forwards.")
            try:
                target = self.messages.get(int(ref.get("message_id")))
            except (TypeError, ValueError):
                target = None
            if target is not None and (target.deleted or target.ephemeral or target.channel_id != ch.id
                                       or str(ref.get("channel_id") or ch.id) != str(ch.id)):
                target = None
            if target is None and ref.get("fail_if_not_exists", True) is not False:
                return _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
        # a reply to a message that is gone, with fail_if_not_exists false, is sent as a plain message
        msg = self._new_message(ch, payload, body.files, kind="channel", mtype=19 if target is not None else 0,
                                reference=target)
        data = self._msg_json(msg)
        if payload.get("nonce") is not None:
            data["nonce"] = payload["nonce"]
        return _json(data)

    async def _get_message(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        msg, err = self._channel_message(ch, request)  # type: ignore[arg-type]
        return err or _json(self._msg_json(msg))  # type: ignore[arg-type]

    async def _edit_message(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        assert ch is not None
        refused = self._refusal(ch)
        if refused is not None:
            return refused
        msg, err = self._channel_message(ch, request)
        if err:
            return err
        assert msg is not None
        if msg.author.id != self.bot_user.id:
            return _error(403, CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user")
        body = await self._body(request)
        payload = body.json or {}
        bad = self._validate_message_payload(payload, body.files, creating=False)
        if bad is not None:
            return bad
        return _json(self._msg_json(self._edit(msg, payload, body.files)))

    async def _delete_message(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        msg, err = self._channel_message(ch, request)  # type: ignore[arg-type]
        if err:
            return err
        assert ch is not None and msg is not None
        if msg.author.id != self.bot_user.id:
            # others' messages: never in DMs, else MANAGE_MESSAGES in that channel
            if ch.is_dm:
                return _error(403, CANNOT_EXECUTE_ON_DM, "Cannot execute action on a DM channel")
            perms = self.guilds[ch.guild_id].permissions_in(self.bot_user.id, ch)
            if not perms & Permissions.MANAGE_MESSAGES:
                return _error(403, MISSING_PERMISSIONS, "Missing Permissions")
        msg.deleted = True
        self._record("message_delete", msg)
        return _no_content()

    async def _start_thread(self, request: web.Request) -> web.Response:
        """``POST /channels/{id}/messages/{mid}/threads``: a public thread under a message, as
        Discord makes it (its id is the message's; one per message; the bot needs Create Public
        Threads in the channel). Recorded as a ``thread_create`` event."""
        ch, err = self._channel_or_error(request)
        if err:
            return err
        msg, err = self._channel_message(ch, request)  # type: ignore[arg-type]
        if err:
            return err
        assert ch is not None and msg is not None
        if ch.is_dm or ch.is_thread:
            return _error(400, INVALID_FORM_BODY, "Cannot start a thread here")
        refused = self._refusal(ch)
        if refused is not None:
            return refused
        if not self.guilds[ch.guild_id].permissions_in(self.bot_user.id, ch) & Permissions.CREATE_PUBLIC_THREADS:
            return _error(403, MISSING_PERMISSIONS, "Missing Permissions")
        payload = (await self._body(request)).json or {}
        name = str(payload.get("name") or "")
        if not 1 <= len(name) <= 100:
            return _form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if msg.id in self.channels:
            return _error(400, 160004, "A thread has already been created for this message")
        thread = Channel(id=msg.id, type=11, name=name, guild_id=ch.guild_id, parent_id=ch.id,
                         owner_id=self.bot_user.id)
        self.guilds[ch.guild_id].channels[thread.id] = thread
        self.channels[thread.id] = thread
        self._record("thread_create", thread)
        return _json(thread.to_json(), status=201)

    async def _typing(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        self._record("typing", {"channel_id": ch.id})  # type: ignore[union-attr]
        return _no_content()

    async def _add_reaction(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        msg, err = self._channel_message(ch, request)  # type: ignore[arg-type]
        if err:
            return err
        emoji = urllib.parse.unquote(request.match_info["emoji"])
        msg.reactions.append(emoji)  # type: ignore[union-attr]
        self._record("reaction_add", {"message": msg, "emoji": emoji})
        return _no_content()

    async def _remove_reaction(self, request: web.Request) -> web.Response:
        ch, err = self._channel_or_error(request)
        if err:
            return err
        msg, err = self._channel_message(ch, request)  # type: ignore[arg-type]
        if err:
            return err
        emoji = urllib.parse.unquote(request.match_info["emoji"])
        if emoji in msg.reactions:  # type: ignore[union-attr]
            msg.reactions.remove(emoji)  # type: ignore[union-attr]
        return _no_content()
