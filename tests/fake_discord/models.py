"""Records and entities used by :mod:`fake_discord.server`.

Everything here is plain data: the fake server creates and mutates these
objects, tests read them.  See the package docstring for the overview.
"""

from __future__ import annotations

import datetime as _dt
import io
import mimetypes
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .server import FakeDiscord

DISCORD_EPOCH_MS = 1420070400000

# --------------------------------------------------------------------------
# permissions / intents / flags
# --------------------------------------------------------------------------


class Permissions:
    """Permission bit constants (same values as Discord / ``discord.Permissions``)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    MANAGE_NICKNAMES = 1 << 27
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    USE_APPLICATION_COMMANDS = 1 << 31
    MANAGE_EVENTS = 1 << 33
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    SEND_MESSAGES_IN_THREADS = 1 << 38
    MODERATE_MEMBERS = 1 << 40

    ALL = (1 << 53) - 1

    #: what @everyone gets in a default fake guild
    DEFAULT_EVERYONE = (
        CREATE_INSTANT_INVITE
        | ADD_REACTIONS
        | VIEW_CHANNEL
        | SEND_MESSAGES
        | EMBED_LINKS
        | ATTACH_FILES
        | READ_MESSAGE_HISTORY
        | USE_EXTERNAL_EMOJIS
        | CHANGE_NICKNAME
        | USE_APPLICATION_COMMANDS
        | CREATE_PUBLIC_THREADS
        | SEND_MESSAGES_IN_THREADS
    )
    #: what the bot's managed role gets by default
    DEFAULT_BOT = DEFAULT_EVERYONE | MANAGE_MESSAGES


class Intents:
    """Gateway intent bits."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1  # privileged
    GUILD_MODERATION = 1 << 2
    GUILD_PRESENCES = 1 << 8  # privileged
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15  # privileged

    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class MessageFlags:
    CROSSPOSTED = 1 << 0
    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


class ApplicationFlags:
    """Application flag bits (``FakeDiscord(app_flags=...)``). Either message-content bit lets the
    bot read members' message content over REST (GET message / history); the gateway additionally
    needs the ``MESSAGE_CONTENT`` intent in IDENTIFY."""

    GATEWAY_PRESENCE = 1 << 12
    GATEWAY_PRESENCE_LIMITED = 1 << 13
    GATEWAY_GUILD_MEMBERS = 1 << 14
    GATEWAY_GUILD_MEMBERS_LIMITED = 1 << 15
    GATEWAY_MESSAGE_CONTENT = 1 << 18
    GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19

    MESSAGE_CONTENT = GATEWAY_MESSAGE_CONTENT | GATEWAY_MESSAGE_CONTENT_LIMITED


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

_sf_lock = threading.Lock()
_sf_last = 0


def snowflake() -> int:
    """A fresh, time-based, strictly increasing snowflake."""
    global _sf_last
    with _sf_lock:
        value = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        if value <= _sf_last:
            value = _sf_last + 1
        _sf_last = value
        return value


def spread_snowflake() -> int:
    """A fresh snowflake whose timestamp part is at least 1 ms past the previous one's.

    Guild ids come from here: Discord puts a guild on shard ``(guild_id >> 22) % shard_count``,
    so guilds created in one burst must not share a millisecond or they would all land on one
    shard. (1,000 guilds made at once run ~1 s ahead of the clock, which nothing minds.)
    """
    global _sf_last
    with _sf_lock:
        ms = max(int(time.time() * 1000) - DISCORD_EPOCH_MS, (_sf_last >> 22) + 1)
        _sf_last = ms << 22
        return _sf_last


def iso_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def as_id(obj: Any) -> Optional[int]:
    """Turn a record / dict / int / numeric str into an int id (None stays None)."""
    if obj is None:
        return None
    if isinstance(obj, bool):
        raise TypeError(f"not an id: {obj!r}")
    if isinstance(obj, int):
        return obj
    if isinstance(obj, str):
        return int(obj)
    if isinstance(obj, dict):
        return int(obj["id"])
    ident = getattr(obj, "id", None)
    if ident is None:
        raise TypeError(f"cannot get an id from {obj!r}")
    return int(ident)


def sniff_content_type(filename: str, data: bytes) -> Optional[str]:
    """Best-effort content type: filename extension, then image magic bytes."""
    guess, _ = mimetypes.guess_type(filename)
    if guess:
        return guess
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(data: bytes) -> tuple[Optional[int], Optional[int]]:
    """(width, height) if Pillow can read *data* as an image, else (None, None)."""
    try:
        from PIL import Image  # type: ignore
    except Exception:  # pragma: no cover - Pillow missing
        return None, None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:
        return None, None


# --------------------------------------------------------------------------
# entities (guilds, channels, users, roles)
# --------------------------------------------------------------------------


@dataclass(eq=False)
class User:
    id: int
    username: str
    global_name: Optional[str] = None
    bot: bool = False
    locale: str = "en-US"

    def to_json(self) -> Dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
        }

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False
    bot_id: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass(eq=False)
class Member:
    user: User
    guild_id: int
    roles: List[int] = field(default_factory=list)
    nick: Optional[str] = None
    joined_at: str = field(default_factory=iso_now)

    @property
    def id(self) -> int:
        return self.user.id

    def to_json(self, *, with_user: bool = True, permissions: Optional[int] = None) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in self.roles],
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.to_json()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass(eq=False)
class Channel:
    id: int
    type: int  # 0 text, 1 DM, 2 voice, 4 category, 5 news ...
    name: Optional[str] = None
    guild_id: Optional[int] = None
    position: int = 0
    topic: Optional[str] = None
    parent_id: Optional[int] = None
    recipient: Optional[User] = None  # DM channels only
    # role or member id -> (type 0 role / 1 member, allow bits, deny bits)
    overwrites: Dict[int, Tuple[int, int, int]] = field(default_factory=dict)
    owner_id: Optional[int] = None  # threads only: who started it

    @property
    def is_dm(self) -> bool:
        return self.type == 1

    @property
    def is_thread(self) -> bool:
        return self.type in (10, 11, 12)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def to_json(self) -> Dict[str, Any]:
        if self.type == 1:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self.recipient.to_json()] if self.recipient else [],
            }
        data: Dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id) if self.guild_id else None,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [
                {"id": str(target), "type": kind, "allow": str(allow), "deny": str(deny)}
                for target, (kind, allow, deny) in self.overwrites.items()
            ],
            "nsfw": False,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "flags": 0,
        }
        if self.type in (0, 5):
            data.update(topic=self.topic, rate_limit_per_user=0, last_message_id=None)
        if self.is_thread:  # what discord.py's Thread needs
            data.pop("permission_overwrites")
            data.update(owner_id=str(self.owner_id) if self.owner_id else None, rate_limit_per_user=0,
                        last_message_id=None, member_count=1, message_count=0, total_message_sent=0,
                        thread_metadata={"archived": False, "auto_archive_duration": 10080, "locked": False,
                                         "archive_timestamp": iso_now(), "create_timestamp": iso_now()})
        if self.type == 2:
            data.update(bitrate=64000, user_limit=0, rtc_region=None, rate_limit_per_user=0, last_message_id=None)
        return data


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    channels: Dict[int, Channel] = field(default_factory=dict)
    members: Dict[int, Member] = field(default_factory=dict)
    roles: Dict[int, Role] = field(default_factory=dict)
    scheduled_events: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # id -> what Discord answered
    locale: str = "en-US"

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]

    def permissions_of(self, user_id: int) -> int:
        """Guild-level permissions of *user_id* (@everyone + roles; admin/owner = all)."""
        if user_id == self.owner_id:
            return Permissions.ALL
        perms = self.everyone.permissions
        member = self.members.get(user_id)
        if member is not None:
            for rid in member.roles:
                role = self.roles.get(rid)
                if role is not None:
                    perms |= role.permissions
        if perms & Permissions.ADMINISTRATOR:
            return Permissions.ALL
        return perms

    def permissions_in(self, user_id: int, channel: "Channel") -> int:
        """Permissions of *user_id* in *channel*: guild-level, then the channel's overwrites in
        Discord's order (@everyone, the member's roles together, the member)."""
        perms = self.permissions_of(user_id)
        if perms == Permissions.ALL:
            return perms
        if channel.is_thread and channel.parent_id in self.channels:  # a thread has its parent's permissions
            channel = self.channels[channel.parent_id]
        member = self.members.get(user_id)
        roles = set(member.roles) if member is not None else set()

        def apply(allow: int, deny: int) -> None:
            nonlocal perms
            perms = (perms & ~deny) | allow

        if self.id in channel.overwrites:
            apply(*channel.overwrites[self.id][1:])
        allow = deny = 0
        for target, (kind, a, d) in channel.overwrites.items():
            if kind == 0 and target in roles and target != self.id:
                allow, deny = allow | a, deny | d
        apply(allow, deny)
        if user_id in channel.overwrites and channel.overwrites[user_id][0] == 1:
            apply(*channel.overwrites[user_id][1:])
        return perms

    def to_json(self) -> Dict[str, Any]:
        """A full GUILD_CREATE-style guild object."""
        first_text = next((c.id for c in self.channels.values() if c.type == 0), None)
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "region": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.to_json() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": str(first_text) if first_text else None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "incidents_data": None,
            # GUILD_CREATE extras
            "joined_at": iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [m.to_json() for m in self.members.values()],
            "channels": [c.to_json() for c in self.channels.values() if not c.is_thread],
            "threads": [c.to_json() for c in self.channels.values() if c.is_thread],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": list(self.scheduled_events.values()),
            "soundboard_sounds": [],
        }


# --------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------


@dataclass(eq=False)
class StoredFile:
    """An uploaded multipart file part."""

    field: str
    filename: str
    data: bytes
    content_type: Optional[str] = None


@dataclass(eq=False)
class AttachmentRecord:
    """An attachment (registered by a test or uploaded by the bot); bytes in ``data``."""

    id: int
    filename: str
    data: bytes
    content_type: Optional[str]
    url: str
    proxy_url: str
    description: Optional[str] = None
    ephemeral: bool = False
    width: Optional[int] = None
    height: Optional[int] = None

    @property
    def size(self) -> int:
        return len(self.data)

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "ephemeral": self.ephemeral,
            "flags": 0,
        }
        if self.description is not None:
            data["description"] = self.description
        return data


def _walk_components(components: List[Dict[str, Any]]):
    for comp in components or []:
        yield comp
        for key in ("components",):
            if isinstance(comp.get(key), list):
                yield from _walk_components(comp[key])
        if isinstance(comp.get("component"), dict):
            yield from _walk_components([comp["component"]])
        if isinstance(comp.get("accessory"), dict):
            yield from _walk_components([comp["accessory"]])


@dataclass(eq=False)
class MessageRecord:
    """A message as the fake stores it (channel message, interaction response, followup)."""

    id: int
    channel_id: int
    guild_id: Optional[int]
    author: User
    content: str = ""
    embeds: List[Dict[str, Any]] = field(default_factory=list)
    components: List[Dict[str, Any]] = field(default_factory=list)
    attachments: List[AttachmentRecord] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: Optional[str] = None
    webhook_id: Optional[int] = None
    application_id: Optional[int] = None
    interaction_id: Optional[int] = None
    #: set for interaction responses / followups (``interaction_metadata`` object)
    interaction_metadata: Optional[Dict[str, Any]] = None
    #: "channel", "original" or "followup"
    kind: str = "channel"
    deleted: bool = False
    created_t: float = field(default_factory=time.monotonic)
    edited_t: Optional[float] = None
    #: previous states (dict snapshots taken before each edit)
    history: List[Dict[str, Any]] = field(default_factory=list)
    reactions: List[str] = field(default_factory=list)
    tts: bool = False
    #: ``message_reference`` as Discord returns it (``type``, ``message_id``, ``channel_id``,
    #: ``guild_id``) for replies, else None
    message_reference: Optional[Dict[str, Any]] = None
    #: the replied-to message (its current state goes into ``referenced_message``)
    referenced: Optional["MessageRecord"] = None
    #: users mentioned in ``content`` (``<@id>``), filled for members' messages
    mentions: List[User] = field(default_factory=list)

    # -- convenience ---------------------------------------------------
    @property
    def from_bot(self) -> bool:
        """True when a bot (the fake's bot user or another bot user) wrote it."""
        return bool(self.author.bot)

    @property
    def reference_id(self) -> Optional[int]:
        """Id of the message this one replies to (None when it is not a reply)."""
        ref = self.message_reference
        if not ref or ref.get("message_id") is None:
            return None
        return int(ref["message_id"])

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlags.EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & MessageFlags.LOADING)

    @property
    def files(self) -> List[AttachmentRecord]:
        return list(self.attachments)

    def custom_ids(self) -> List[str]:
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def find_component(self, custom_id: str) -> Optional[Dict[str, Any]]:
        for comp in _walk_components(self.components):
            if comp.get("custom_id") == custom_id:
                return comp
        return None

    def buttons(self) -> List[Dict[str, Any]]:
        return [c for c in _walk_components(self.components) if c.get("type") == 2]

    def embed_texts(self) -> List[str]:
        out = []
        for e in self.embeds:
            for key in ("title", "description"):
                if e.get(key):
                    out.append(e[key])
            for f in e.get("fields", []) or []:
                out.append(f"{f.get('name', '')}: {f.get('value', '')}")
        return out

    def text(self) -> str:
        """content + embed titles/descriptions/fields, newline-joined (for substring asserts)."""
        return "\n".join([self.content or "", *self.embed_texts()]).strip()

    def snapshot(self) -> Dict[str, Any]:
        return {
            "content": self.content,
            "embeds": list(self.embeds),
            "components": list(self.components),
            "attachments": [a.id for a in self.attachments],
            "flags": self.flags,
            "t": self.edited_t or self.created_t,
        }

    def to_json(self, *, redact: Optional[Callable[["MessageRecord"], bool]] = None,
                with_referenced: bool = True) -> Dict[str, Any]:
        """The message object as Discord serves it.

        ``redact(msg)`` true empties content, embeds, attachments and components (of this message
        and of the replied-to one, each asked separately) the way Discord does for an app without
        the message-content intent. ``with_referenced`` adds ``referenced_message`` for replies
        (one level deep; null once that message is deleted).
        """
        data: Dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "channel_id": str(self.channel_id),
            "author": self.author.to_json(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [u.to_json() for u in self.mentions],
            "mention_roles": [],
            "mention_channels": [],
            "attachments": [a.to_json() for a in self.attachments],
            "embeds": self.embeds,
            "reactions": [],
            "pinned": False,
            "flags": self.flags,
            "components": self.components,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = dict(self.message_reference)
            if with_referenced:
                ref = self.referenced
                data["referenced_message"] = None if ref is None or ref.deleted else ref.to_json(
                    redact=redact, with_referenced=False)
        if redact is not None and redact(self):
            data.update(content="", embeds=[], attachments=[], components=[])
        return data

    def __repr__(self) -> str:
        return (
            f"<MessageRecord id={self.id} channel={self.channel_id} kind={self.kind} "
            f"{'' if self.from_bot else f'author={self.author.username} '}"
            f"{'' if self.reference_id is None else f'reply_to={self.reference_id} '}"
            f"flags={self.flags} content={self.content!r} files={[a.filename for a in self.attachments]}"
            f"{' deleted' if self.deleted else ''}>"
        )


@dataclass(eq=False)
class CallbackRecord:
    """One POST /interactions/{id}/{token}/callback."""

    type: int
    data: Dict[str, Any]
    files: List[StoredFile]
    #: seconds since the INTERACTION_CREATE was sent
    at: float
    #: HTTP status the fake answered
    status: int
    query: Dict[str, str] = field(default_factory=dict)

    @property
    def ephemeral(self) -> bool:
        return bool(int(self.data.get("flags") or 0) & MessageFlags.EPHEMERAL)


@dataclass(eq=False)
class RequestRecord:
    method: str
    #: path relative to the API base for API routes (``/channels/1/messages``), raw path otherwise
    path: str
    query: Dict[str, str]
    t: float
    json: Any = None
    files: List[StoredFile] = field(default_factory=list)
    status: Optional[int] = None
    response: Any = None
    fault: bool = False
    authorized: Optional[bool] = None
    #: False for the attachment CDN (not an API call, never rate limited)
    api: bool = True

    def __repr__(self) -> str:
        return f"<RequestRecord {self.method} {self.path} -> {self.status}{' (fault)' if self.fault else ''}>"


@dataclass(eq=False)
class Event:
    """One entry of ``FakeDiscord.events``."""

    kind: str
    t: float
    data: Any = None

    def __repr__(self) -> str:
        return f"<Event {self.kind} t={self.t:.3f} {self.data!r}>"


@dataclass(eq=False)
class Fault:
    """A fault-injection rule (see ``FakeDiscord.inject_fault``)."""

    method: Optional[str]
    pattern: "re.Pattern[str]"
    status: Optional[int]
    times: Optional[int]
    delay: float = 0.0
    body: Any = None
    headers: Dict[str, str] = field(default_factory=dict)
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, method: str, path: str) -> bool:
        if self.exhausted:
            return False
        if self.method not in (None, "*") and self.method.upper() != method.upper():
            return False
        return self.pattern.search(path) is not None


class InteractionRecord:
    """Everything that happened to one interaction the fake dispatched.

    Attributes: ``id``, ``token``, ``type`` (2 command, 3 component, 4 autocomplete,
    5 modal submit), ``name`` (command name / custom_id), ``user``, ``guild_id``,
    ``channel_id``, ``payload`` (the INTERACTION_CREATE ``d``), ``dispatched_t``
    (monotonic), ``expires_t``, ``callbacks`` (list of :class:`CallbackRecord`),
    ``followup_messages``, ``original_edits`` (list of ``(seconds_since_dispatch,
    json_payload)``), ``rejected`` (requests the fake refused for this token, as
    :class:`RequestRecord`), ``message_id`` (component/modal: the message clicked).
    """

    def __init__(self, fake: "FakeDiscord", *, id: int, token: str, type: int, name: str, user: User,
                 guild_id: Optional[int], channel_id: int, payload: Dict[str, Any], ttl: float,
                 message_id: Optional[int] = None) -> None:
        self._fake = fake
        self.id = id
        self.token = token
        self.type = type
        self.name = name
        self.user = user
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.payload = payload
        self.message_id = message_id
        self.dispatched_t = time.monotonic()
        self.expires_t = self.dispatched_t + ttl
        self.callbacks: List[CallbackRecord] = []
        self.original_id: Optional[int] = None
        self.followup_ids: List[int] = []
        self.original_edits: List[tuple] = []
        self.rejected: List[RequestRecord] = []
        self.autocomplete_choices: Optional[List[Dict[str, Any]]] = None
        self.modal: Optional[Dict[str, Any]] = None

    # -- state -----------------------------------------------------------
    @property
    def acknowledged(self) -> bool:
        return any(200 <= c.status < 300 for c in self.callbacks)

    @property
    def ack(self) -> Optional[CallbackRecord]:
        """The accepted initial response (first 2xx callback) or None."""
        return next((c for c in self.callbacks if 200 <= c.status < 300), None)

    @property
    def ack_latency(self) -> Optional[float]:
        ack = self.ack
        return None if ack is None else ack.at

    @property
    def deferred(self) -> bool:
        ack = self.ack
        return ack is not None and ack.type in (5, 6)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires_t

    @property
    def original(self) -> Optional[MessageRecord]:
        """Current state of @original (None before a message-producing response or after delete)."""
        if self.original_id is None:
            return None
        msg = self._fake.messages.get(self.original_id)
        if msg is None or msg.deleted:
            return None
        return msg

    @property
    def followups(self) -> List[MessageRecord]:
        """Followup messages (deleted ones excluded), oldest first."""
        return [m for m in (self._fake.messages[i] for i in self.followup_ids) if not m.deleted]

    @property
    def all_messages(self) -> List[MessageRecord]:
        """@original (if any) then followups, without duplicates (a followup may *be* @original)."""
        out: List[MessageRecord] = []
        for m in ([self.original] if self.original is not None else []) + self.followups:
            if all(m is not o for o in out):
                out.append(m)
        return out

    def since(self, t: float) -> float:
        """Seconds between the dispatch and monotonic time *t*."""
        return t - self.dispatched_t

    def texts(self) -> List[str]:
        return [m.text() for m in self.all_messages if not m.loading]

    def ephemeral_texts(self) -> List[str]:
        return [m.text() for m in self.all_messages if m.ephemeral and not m.loading]

    def public_texts(self) -> List[str]:
        return [m.text() for m in self.all_messages if not m.ephemeral and not m.loading]

    def files(self) -> List[AttachmentRecord]:
        return [a for m in self.all_messages for a in m.attachments]

    # -- waiting ---------------------------------------------------------
    async def wait_until(self, predicate: Callable[["InteractionRecord"], Any], timeout: float = 10.0) -> Any:
        return await self._fake.wait_for(lambda: predicate(self), timeout=timeout,
                                         what=f"condition on interaction {self.name!r}")

    async def wait_for_callback(self, timeout: float = 5.0) -> CallbackRecord:
        """Wait for the first callback request (accepted or not)."""
        return await self._fake.wait_for(lambda: self.callbacks[0] if self.callbacks else None,
                                         timeout=timeout, what=f"callback for {self.name!r}")

    async def wait_for_followups(self, n: int = 1, timeout: float = 10.0) -> List[MessageRecord]:
        return await self._fake.wait_for(lambda: self.followups if len(self.followups) >= n else None,
                                         timeout=timeout, what=f"{n} followup(s) for {self.name!r}")

    async def wait_for_followup(self, timeout: float = 10.0) -> MessageRecord:
        return (await self.wait_for_followups(1, timeout))[0]

    async def wait_for_reply(self, timeout: float = 10.0) -> MessageRecord:
        """Wait until there is a visible answer: a non-loading @original or a followup; returns the newest."""
        def check():
            msgs = [m for m in self.all_messages if not m.loading]
            return msgs[-1] if msgs else None
        return await self._fake.wait_for(check, timeout=timeout, what=f"reply to {self.name!r}")

    def __repr__(self) -> str:
        return (f"<InteractionRecord id={self.id} type={self.type} name={self.name!r} "
                f"callbacks={[c.type for c in self.callbacks]} followups={len(self.followup_ids)}>")

