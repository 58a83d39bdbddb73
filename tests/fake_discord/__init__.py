"""A fake Discord (REST + gateway + attachment CDN) for testing discord.py bots.

The fake is an aiohttp server on 127.0.0.1 with an ephemeral port. An *unmodified*
discord.py 2.x ``Client`` (with an ``app_commands.CommandTree``) runs against it;
the bot may live in the test process or in a subprocess (``python -m bot``). All
traffic is recorded so tests can assert on it.

Pointing discord.py at the fake (in the bot process, before ``client.start``/``login``)::

    import discord, yarl
    discord.http.Route.BASE = fake.api_base                       # "http://127.0.0.1:PORT/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)  # "ws://127.0.0.1:PORT/gateway"
    await client.start(fake.bot_token)

A plain ``Client`` never calls ``GET /gateway``; it connects to ``DEFAULT_GATEWAY``
directly (``AutoShardedClient`` calls ``GET /gateway/bot``, also served: see Shards below).
``fake.env()`` returns ``DISCORD_TOKEN``, ``DISCORD_API_BASE``, ``DISCORD_GATEWAY_URL``,
``DISCORD_APPLICATION_ID``, ``DISCORD_GUILD_ID`` for a subprocess.

Quick start::

    async with FakeDiscord(token_ttl=900) as fake:       # starts the server
        proc = await start_bot_subprocess(env=fake.env())
        await fake.wait_ready()                           # IDENTIFY → READY → GUILD_CREATE done
        await fake.wait_for_commands(guild=fake.guild, names=["stylize"])
        img = fake.add_attachment("cat.png", png_bytes, "image/png")
        inter = await fake.send_slash_command("stylize", user="alice", options={"image": img})
        cb = await inter.wait_for_callback()
        assert cb.type == 5 and cb.at < 3.0               # deferred within 3 s
        msg = await inter.wait_for_followup(timeout=30)
        assert msg.attachments[0].data.startswith(b"\\x89PNG")
        click = await fake.click_button(inter, "retry", user="alice")
        ...

``wait_ready()`` returns once READY and every GUILD_CREATE were sent; discord.py itself
fires ``on_ready`` ``guild_ready_timeout`` (2 s by default) later, but interactions sent in
between are handled normally. If the bot syncs commands in ``on_ready`` rather than
``setup_hook``, wait with ``wait_for_commands`` before sending commands. Stop the bot
before leaving ``async with`` (the fake closes sockets with 1001, which discord.py would
try to reconnect from).

Construction: ``FakeDiscord(token_ttl=900.0, interaction_deadline=3.0, bot_token=None,
bot_name="StyleBot", heartbeat_interval=41.25, attachment_size_limit=10 MiB, app_flags=0,
allowed_privileged_intents=None, with_defaults=True, shards=1, max_concurrency=1,
rate_limits=None)``.

* ``token_ttl``: seconds an interaction token is valid for webhook routes (followups,
  @original); afterwards they answer 401 ``{"code": 50027, "message": "Invalid Webhook Token"}``.
  ``send_slash_command(..., token_ttl=...)`` overrides it per interaction;
  ``fake.expire_token(rec)`` expires one now.
* ``interaction_deadline``: the initial callback must arrive within this many seconds of
  the dispatch, else 404 ``10062 Unknown interaction`` (``None`` disables).
* ``allowed_privileged_intents``: ``None`` records intents only; an int enforces, closing
  the gateway with 4014 when other privileged intents are requested.
* ``shards`` / ``max_concurrency``: the shard count the gateway requires and the identify
  concurrency it announces (see Shards below).
* ``rate_limits``: a ``RateLimits(...)`` turns Discord's REST rate limits on (see Rate limits
  below); ``None`` (the default) never limits and sends no ``X-RateLimit-*`` headers.
* ``with_defaults``: one guild ``fake.guild`` ("Fake Guild"), one text channel
  ``fake.channel`` ("general"), users ``owner`` (guild owner; also the application owner),
  ``alice``, ``bob``, ``mod`` (has MANAGE_MESSAGES). The bot is a member with a managed role
  whose bits are ``fake.bot_permissions`` (settable; becomes ``app_permissions``).

Identity / addresses: ``fake.application_id`` (== bot user id), ``fake.bot_user``,
``fake.owner``, ``fake.bot_token``, ``fake.port``, ``fake.base_url``, ``fake.api_base``,
``fake.gateway_url``. Requests to authenticated routes without ``Authorization: Bot
<bot_token>`` answer 401 (discord.py raises ``LoginFailure``); a wrong IDENTIFY token closes
the gateway with 4004.

Entities (records in :mod:`fake_discord.models`; anywhere a user/channel/guild is expected
you may pass the record, its id, or for users the username):

* ``add_guild(name, id=None, owner=None, everyone_permissions=..., shard=None) -> Guild``: ids are
  snowflakes a millisecond apart so guilds spread over shards; ``shard`` picks an id on that shard.
* ``add_guilds(count, members=3, name="Guild", shard=None) -> [Guild]``: many guilds at once, each
  with a "general" text channel and *members* new users ``guild-<k>-member<j>`` (1,000 guilds with
  3 members take ~30 ms; usernames are indexed, so ``user("guild-7-member0")`` is O(1)).
* ``add_channel(name, guild=None, type=0, id=None, topic=None) -> Channel``
* ``add_user(username, id=None, guild=None, join=True, permissions=0, roles=(), global_name=None,
  bot=False, nick=None, locale="en-US") -> User`` (``permissions`` creates and assigns a role)
* ``add_role(name, permissions=0, guild=None) -> Role``; ``add_member(user, guild=None, ...)``
* ``user(ref) -> User``; ``dm_channel(user) -> Channel``; ``permissions_of(user, guild=None)``
* ``add_attachment(name, data, content_type=None, description=None) -> dict``: an attachment
  object (id, filename, size, url, proxy_url, content_type, width/height via Pillow or None)
  whose bytes are served at ``GET /attachments/<name>``.
* ``Permissions``, ``Intents``, ``MessageFlags``, ``ApplicationFlags``: bit constants.

Members' messages: ``await post_user_message(channel=None, *, user=None, content="", attachments=(),
embeds=(), reply_to=None, dispatch=True) -> MessageRecord`` stores a message written by a member
(``author`` = that user; ``channel`` may be ``fake.dm_channel(user)``) like the bot's: served by GET
message / GET channel messages (``limit``/``before``/``after``/``around``), pressable by nobody,
deletable by the bot with MANAGE_MESSAGES (else 403 ``50013``; in DMs 403 ``50003``), never editable
by it (403 ``50005``). ``attachments`` take ``add_attachment`` dicts (or names): the message gets
its own attachment ids, same bytes and URL. ``embeds`` are kept as given, with ``type`` "rich" by
default and, for image/thumbnail/video URLs served by the fake, ``proxy_url``/``width``/``height``/
``content_type`` filled in (e.g. ``{"type": "image", "url": u, "thumbnail": {"url": u}}`` or
``{"image": {"url": u}}``). ``reply_to`` makes it a reply (type 19). ``<@id>`` fills ``mentions``.
As Discord does, an app without the message-content intent gets such messages with content,
embeds, attachments and components emptied (the bot's own messages, DMs and messages mentioning
the bot excepted): over REST unless ``fake.app_flags`` has ``ApplicationFlags.MESSAGE_CONTENT``
bits; on the gateway (MESSAGE_CREATE, dispatched only when the session's intents include
GUILD_MESSAGES, or DIRECT_MESSAGES in DMs) unless IDENTIFY asked for ``MESSAGE_CONTENT``.
Message-command interactions always carry the complete message.

Interactions (each returns an :class:`InteractionRecord` once INTERACTION_CREATE was sent;
they first wait for a READY session):

* ``await send_slash_command(name, user=None, options={}, attachments=[], subcommand=None,
  guild=None, channel=None, dm=False, locale=None, token_ttl=None)``: the command must have been
  synced (PUT) to the fake (guild commands win over global, and set ``data.guild_id``). Option
  types are taken from the synced definition: attachment options take ``add_attachment`` dicts
  (or the registered name) and are put in ``data.resolved.attachments``; user/role/channel
  options are resolved too. ``subcommand="group sub"``. Misuse raises ``FakeDiscordError``.
* ``await send_autocomplete(name, focused, value="", options=..., ...)`` (type 4); the bot's
  choices land in ``rec.autocomplete_choices``.
* ``await send_message_command(name, message, user=None, guild=None, channel=None, locale=None,
  token_ttl=None)``: a message context-menu command (synced with ``"type": 3``) used on *message*
  (record or id; not deleted, not ephemeral): type-2 interaction with ``data`` = ``{"id", "name",
  "type": 3, "target_id", "resolved": {"messages": {id: <complete message>}}}`` (+ ``guild_id``).
  Responses to it are type 23 with ``interaction_metadata.target_message_id``.
* ``await send_user_command(name, target, user=None, ...)``: a user context-menu command (type 2):
  ``target_id`` + ``resolved.users``/``members``.
* ``await click_button(target, custom_id, user=None, values=None)`` (type 3; alias ``select``
  for select menus with ``values``): *target* is a ``MessageRecord``, message id, or an
  ``InteractionRecord`` (its messages, ephemeral ones included, are searched newest first). The
  default user is the one the message answered (the one who ran the command), or
  ``default_user()`` for plain channel posts (which any member may press). An ephemeral message
  only takes its own user; string-select ``values`` must be options, within ``min_values``..
  ``max_values`` (else ``FakeDiscordError``). ``payload["message"]`` is the clicked message, flags included.
* ``await submit_modal(rec, {custom_id: value}, user=None)`` (type 5) after the bot answered
  *rec* with a modal (callback 9). A text input takes a string, a select a list of values, a
  file upload (type 19, usually inside a label, type 18) a list of ``add_attachment`` dicts or
  names: as Discord sends them, its ``values`` are attachment ids and the attachments are in
  ``data.resolved.attachments`` (a count outside ``min_values``..``max_values`` raises
  ``FakeDiscordError``).

``InteractionRecord``: ``id``, ``token``, ``type``, ``name``, ``user``, ``guild_id``,
``channel_id``, ``payload`` (what was dispatched), ``message_id`` (component: clicked message),
``callbacks`` (list of ``CallbackRecord(type, data, files, at, status, query)``; ``at`` =
seconds since dispatch, ``status`` = what the fake answered), ``ack`` / ``ack_latency`` /
``acknowledged`` / ``deferred``, ``original`` (current ``MessageRecord`` of @original or None),
``followups`` (list of ``MessageRecord``), ``all_messages``, ``original_edits`` (list of
``(seconds_since_dispatch, payload)``), ``rejected`` (``RequestRecord`` s refused for this token:
expired, unknown message, double ack...), ``autocomplete_choices``, ``modal``,
``texts()``, ``ephemeral_texts()``, ``public_texts()``, ``files()``, ``since(t)``,
``await wait_for_callback()``, ``await wait_for_followup()``, ``await wait_for_followups(n)``,
``await wait_for_reply()`` (first non-loading message), ``await wait_until(pred)``.

Discord behaviour reproduced for callbacks/webhooks: types 4/5/6/7/8/9 (json or multipart with
``payload_json`` + ``files[n]``); a second callback → 400 ``40060``; wrong type for the
interaction → 400 ``50035``; with ``?with_response=1`` (discord.py ≥ 2.5 always sends it) the
body is an ``InteractionCallbackResponse`` (``interaction`` + ``resource.message``), else 204.
A type-5 defer creates a *loading* @original (flag 128, + 64 if ephemeral); the **first
followup after it replaces that loading message** (same id, keeps the defer's ephemerality),
later followups are new messages. Followups before any callback → 404 ``10015``. The webhook's
message routes (GET/PATCH/DELETE ``/webhooks/{app}/{token}/messages/{id}``) only reach @original and
the interaction's followups: any other message id → 404 ``10008 Unknown Message`` (recorded in
``rejected``); DELETE marks the message ``deleted``.

Commands sync: chat-input commands (type 1) are validated as Discord does (lower-case names,
description 1-100, required options first); user (2) and message (3) context-menu commands take
any 1-32 character name, and a description or options answer 400 ``50035``
(``APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION_INVALID`` / ``..._OPTIONS_INVALID``); they are
stored with ``description: ""`` and no ``options``.

``MessageRecord``: ``id``, ``channel_id``, ``guild_id``, ``author``, ``from_bot``, ``type``,
``content``, ``embeds``, ``components``, ``attachments`` (``AttachmentRecord`` with ``filename``,
``data`` bytes, ``content_type``, ``width``, ``height``, ``url``), ``flags``, ``ephemeral``,
``loading``, ``kind`` ("channel" for channel posts, the bot's or members', / "original" /
"followup"), ``deleted``, ``history`` (pre-edit snapshots), ``reactions``, ``interaction_id``,
``interaction_metadata``, ``message_reference`` / ``reference_id`` / ``referenced`` (replies),
``mentions``, ``created_t``/``edited_t`` (monotonic), ``text()``, ``custom_ids()``,
``find_component(custom_id)``, ``buttons()``, ``to_json()``.

Channel messages: ``POST/GET/PATCH/DELETE /channels/{id}/messages[/{mid}]`` (json or
multipart), ``POST /users/@me/channels`` (DMs), typing, reactions, plus GET routes for
users/guilds/channels/members/roles. Threads: ``POST /channels/{id}/messages/{mid}/threads``
makes a public thread (type 11, its id the message's, one per message, 400 ``160004`` for a
second; the bot needs ``CREATE_PUBLIC_THREADS`` there, else 403 ``50013``): a channel in
``fake.channels`` with the parent's permissions, listed under ``threads`` in GUILD_CREATE,
recorded as a ``thread_create`` event. Scheduled events: ``POST``/``GET
/guilds/{id}/scheduled-events`` and ``DELETE .../{event_id}`` (external events; the bot needs
``MANAGE_EVENTS`` in the guild, else 403 ``50013``; a start in the past or an end before it
answers 400), kept in ``guild.scheduled_events``, events ``scheduled_event_create`` /
``scheduled_event_delete``. Validation: content > 2000 chars / > 10 embeds →
400 ``50035``; empty message → 400 ``50006``; uploads over ``attachment_size_limit`` → 413 ``40005``.
Replies: a POST with ``message_reference`` (``{"message_id", "channel_id", "guild_id",
"fail_if_not_exists"}``, as ``Message.reply`` sends) to a live, non-ephemeral message of the same
channel makes a type-19 message whose JSON has ``message_reference`` (``type`` 0 + ids) and
``referenced_message`` (that message now; null once deleted); an unknown/deleted/other-channel
target answers 400 ``50035`` (``message_reference``: ``MESSAGE_REFERENCE_UNKNOWN_MESSAGE``
"Unknown message") unless ``fail_if_not_exists`` is false, which sends a plain type-0 message.

Failure injection:

* ``inject_fault(path_regex, method=None, status=500, times=1, delay=0.0, body=None,
  retry_after=0.1) -> Fault``: the next *times* requests whose path (relative to the API base,
  e.g. ``/channels/1/messages``; raw path for ``/attachments/...``) ``re.search``-matches
  answer *status* (``status=None`` → only delay). ``Fault.hits`` counts matches.
  Note: discord.py retries 500/502/504/524 itself (sleeping 1 s, 3 s, ...), so one injected 500
  costs the bot ~1 s and is then invisible unless you look at ``fault.hits``/``fake.requests``.
  ``status=429`` sends a real rate-limit answer (``Via`` header + ``retry_after``).
* ``clear_faults()``; ``refuse_channel(channel, status=403, code=50001, message="Missing
  Access")`` / ``allow_channel``; ``block_dms(user)`` → 403 ``50007`` on DM sends; ``expire_token(rec)``.

Commands: ``commands(guild=None)`` (stored definitions with ids), ``command_sync_count(guild=None)``
(bulk PUTs per scope), ``command_puts`` (list of ``(guild_id|None, payload, t)``),
``await wait_for_commands(guild=None, names=())``.

Gateway: HELLO → IDENTIFY → READY (+ ``GUILD_CREATE`` per guild with channels, roles and
members) ; heartbeats ACKed; RESUME replays missed dispatches then ``RESUMED`` (unknown
session → op 9 ``false``); op 8 member requests answered; ``compress=zlib-stream`` honoured
(binary zlib frames with the sync-flush suffix). ``identify_payloads`` (token stripped),
``intents`` / ``privileged_intents`` (of the latest IDENTIFY), ``resume_payloads``,
``presence_updates``, ``gateway_received``, ``session`` / ``sessions``, ``await wait_ready()``,
``await dispatch(event, data, shard=None)`` (raw DISPATCH; to the shard of ``data["guild_id"]``
unless *shard* is given), ``await gateway_reconnect(shard=None)`` (op 7),
``await gateway_disconnect(code=4000, shard=None)`` (the latest session's socket, or *shard*'s).

Shards (``shards.py`` has the details): ``GET /gateway/bot`` answers ``"shards": N`` and
``session_start_limit`` (``total`` 1000, ``remaining`` less one per accepted IDENTIFY,
``reset_after``, ``max_concurrency``). An IDENTIFY without ``shard`` when N > 1, or with a count
other than N, is closed with 4011 (discord.py raises ``ConnectionClosed`` with ``code == 4011``); a
shard id ≥ its count with 4010. A guild is served by shard ``(guild_id >> 22) % N``, DMs by shard 0:
each shard's READY (``shard: [id, N]``) lists only its guilds, GUILD_CREATE comes only for those,
and every later guild event (interactions, members' messages, ``dispatch``) goes to the current
session of the guild's shard. ``wait_ready(timeout=15, shards=None)`` waits for every shard (or
those listed) and returns the lowest one's session. Test-facing: ``shard_count``,
``max_concurrency``, ``shard_of(guild)``, ``guilds_on_shard(i)``, ``guild_on_shard(i, members=2)``
(the first guild there, or a new one), ``shard_session(i)`` (current session),
``sessions_by_shard()`` (``{i: [sessions, oldest first]}``; ``GatewaySession.shard_id``),
``shard_identifies`` (``ShardIdentify(t, shard_id, shard_count, accepted, close_code,
invalid_session, session_id)`` per IDENTIFY), ``identify_concurrency_violations(window=5.0)``
(pairs of IDENTIFYs of one bucket ``shard_id % max_concurrency`` under 5 s apart; recorded, not
refused), ``await take_shard_down(i)`` (closes its socket with 4000, then answers its RESUMEs and
IDENTIFYs with op 9 until ``bring_shard_up(i)``), ``shards_down``. discord.py's
``AutoShardedClient`` launches shards one by one and sleeps 5 s before every IDENTIFY but the
first (``before_identify_hook``), ignoring ``max_concurrency`` unless the bot overrides the hook.

Rate limits (``ratelimits.py`` has the details), with ``rate_limits=RateLimits(global_per_s=50,
routes=discord_route_limits(), default=RouteLimit(50, 1.0), interaction_webhooks_global=False)``:
a global limit of ``global_per_s`` requests in any 1 s over the calls made with the bot token
(interaction callbacks and interaction-token webhooks exempt, as on Discord) and per-route
buckets ``RouteLimit(limit, per, bucket=None)`` keyed by ``"METHOD /template"`` (e.g. ``"POST
/channels/{channel_id}/messages"``: 5 per 5 s per channel) and the major parameters (channel,
guild, webhook id + token). Admitted answers carry ``X-RateLimit-Limit/-Remaining/-Reset/
-Reset-After/-Bucket``; refusals are 429 ``{"message", "retry_after", "global"}`` with
``Retry-After``, ``X-RateLimit-Scope`` (``user``/``global``), ``X-RateLimit-Global: true`` for
global ones, and ``Via``. discord.py sleeps before an exhausted route bucket and retries a 429
after ``retry_after``, but does not pace itself against the global limit. ``rate_limited``
lists every 429 as ``RateLimitHit(t, method, path, route, bucket, is_global, retry_after,
scope)`` (injected 429s too, scope ``shared``); ``rate_limiter.config`` may be changed while
running. ``calls_per_second(since=None, until=None, global_only=False) -> CallRate(peak, mean,
total, seconds)``: the bot's API calls (CDN excluded, 429s included), the peak over any 1 s.

Records / waiting: ``requests`` (every HTTP request as ``RequestRecord(method, path, query, t,
json, files, status, response, fault, authorized, api)``), ``requests_to(path_regex, method=None)``,
``unhandled`` (requests no route matched: 404), ``events`` (``Event(kind, t, data)``; kinds:
request, fault, interaction_create, callback, followup, message_create, message_edit,
message_delete, webhook_edit, token_rejected, commands_put, command_upsert, dm_channel,
attachment_download, typing, reaction_add, gateway_connect, gateway_disconnect, gateway_op,
gateway_dispatch, identify, ready, resumed, rate_limited, shard_down, shard_up), ``events_of(kind)``,
``messages`` (id → record),
``messages_in(channel, include_ephemeral=False, include_deleted=False, author=None)`` (every
author's, oldest first; ``author=fake.bot_user`` or a username keeps one author's),
``dms_to(user)`` (the bot's DMs to *user*), ``interactions``, ``await wait_for(predicate,
timeout=10)`` (``predicate()`` takes no arguments; re-checked after each event and every 0.1 s;
returns its truthy value; raises ``asyncio.TimeoutError`` describing the last events),
``await wait_for_event(kind, predicate, timeout, since=None)``, ``await wait_for_message(channel=None,
predicate=None, dm_to=None, from_bot=True)`` (the bot's messages unless ``from_bot=False``).

Without ``rate_limits`` no rate-limit headers are sent (discord.py copes: it only reads them
when ``X-Ratelimit-Remaining`` is present). JSON bodies are sent with ``Content-Type:
application/json`` exactly — discord.py ignores JSON labelled ``...; charset=utf-8``.

Code layout: ``server.py`` assembles ``FakeDiscord`` from one mixin module per concern (its
docstring lists them: gateway, shards, guilds, messages, attachments, commands, interactions,
webhooks, recording, faults) and the rate limiter (``ratelimits.py``); records and bit constants
live in ``models.py``.
"""

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
)
from .ratelimits import RateLimitHit, RateLimits, RouteLimit, discord_route_limits
from .recording import CallRate
from .server import FakeDiscord, FakeDiscordError, GatewaySession
from .shards import ShardIdentify

__all__ = [
    "ApplicationFlags",
    "AttachmentRecord",
    "CallRate",
    "CallbackRecord",
    "Channel",
    "Event",
    "FakeDiscord",
    "FakeDiscordError",
    "Fault",
    "GatewaySession",
    "Guild",
    "Intents",
    "InteractionRecord",
    "Member",
    "MessageFlags",
    "MessageRecord",
    "Permissions",
    "RateLimitHit",
    "RateLimits",
    "RequestRecord",
    "Role",
    "RouteLimit",
    "ShardIdentify",
    "StoredFile",
    "User",
    "discord_route_limits",
]
