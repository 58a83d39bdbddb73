"""The fake gateway: the ``/gateway`` websocket, sessions, READY/GUILD_CREATE, dispatch, RESUME.

HELLO → IDENTIFY (token, intents, shard checked; closes 4004/4013/4014, 4010/4011 — see
``shards.py``) → READY + one GUILD_CREATE per guild of the session's shard; heartbeats ACKed;
RESUME replays the session's missed dispatches then RESUMED (unknown session, or a shard taken
down → op 9); op 8 member requests answered with one GUILD_MEMBERS_CHUNK;
``compress=zlib-stream`` honoured. Also ``GET /gateway`` and ``GET /gateway/bot``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from typing import Any, Dict, Iterable, List, Optional

from aiohttp import WSMsgType, web

from .common import API_PREFIX, _json, log
from .models import Intents
from .shards import ShardIdentify


class _GatewayConnection:
    """One websocket connection to /gateway."""

    def __init__(self, ws: web.WebSocketResponse, compress: Optional[str], query: Dict[str, str]) -> None:
        self.ws = ws
        self.compress = compress
        self.query = query
        self._zlib = zlib.compressobj() if compress == "zlib-stream" else None
        self._lock = asyncio.Lock()
        self.session: Optional["GatewaySession"] = None
        self.heartbeats = 0

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send(self, payload: Dict[str, Any]) -> bool:
        text = json.dumps(payload)
        async with self._lock:
            if self.ws.closed:
                return False
            try:
                if self._zlib is not None:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return False
        return True

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        if not self.ws.closed:
            try:
                await self.ws.close(code=code, message=message)
            except Exception:  # pragma: no cover
                pass


class GatewaySession:
    """A gateway session (survives reconnects via RESUME)."""

    def __init__(self, fake: "FakeDiscord", session_id: str, identify: Dict[str, Any]) -> None:
        self.fake = fake
        self.id = session_id
        self.identify = identify
        self.intents: Optional[int] = identify.get("intents")
        self.shard = identify.get("shard")
        #: the shard this session serves (0 unsharded)
        self.shard_id: int = int(self.shard[0]) if self.shard else 0
        self.seq = 0
        self.buffer: List[Dict[str, Any]] = []
        self.connection: Optional[_GatewayConnection] = None
        self.resumes = 0
        self.ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed

    async def dispatch(self, event: str, data: Any) -> int:
        self.seq += 1
        payload = {"op": 0, "t": event, "s": self.seq, "d": data}
        self.buffer.append(payload)
        self.fake._record("gateway_dispatch", {"t": event, "s": self.seq, "d": data})
        if self.connection is not None:
            await self.connection.send(payload)
        return self.seq


class GatewayMixin:
    """``FakeDiscord``'s gateway (state: ``sessions``, ``session``, ``connections``, ``identify_payloads``,
    ``resume_payloads``, ``presence_updates``, ``gateway_received``)."""

    def _add_gateway_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/gateway", self._ws_gateway)
        r.add_get(API_PREFIX + "/gateway", self._get_gateway)
        r.add_get(API_PREFIX + "/gateway/bot", self._get_gateway_bot)

    # -- gateway state (test-facing) -------------------------------------------
    @property
    def intents(self) -> Optional[int]:
        """Intents of the latest IDENTIFY (None before one)."""
        return self.identify_payloads[-1].get("intents") if self.identify_payloads else None

    @property
    def privileged_intents(self) -> int:
        """Privileged intent bits requested in the latest IDENTIFY (0 = none)."""
        return (self.intents or 0) & Intents.PRIVILEGED

    async def wait_ready(self, timeout: float = 15.0, *, shards: Optional[Iterable[int]] = None) -> GatewaySession:
        """Wait until every shard (or those in *shards*) has a connected session that got READY and
        all its GUILD_CREATEs; returns the session of the lowest such shard (unsharded: the session)."""
        wanted = sorted(range(self.shard_count) if shards is None else shards)

        def ready() -> Optional[GatewaySession]:
            sessions = [self._shard_sessions.get(i) for i in wanted]
            if all(s is not None and s.ready.is_set() and s.connected for s in sessions):
                return sessions[0]
            return None
        return await self.wait_for(ready, timeout, what=f"gateway READY on shard(s) {wanted}")

    async def dispatch(self, event: str, data: Any, *, shard: Optional[int] = None) -> int:
        """Send a raw DISPATCH event; returns its sequence number. It goes to *shard*'s session, by
        default to the shard of ``data["guild_id"]`` (shard 0 without one)."""
        if shard is None:
            gid = data.get("guild_id") if isinstance(data, dict) else None
            shard = self.shard_of(int(gid)) if gid else 0
        session = await self.wait_ready(shards=[shard])
        return await session.dispatch(event, data)

    def _session_to_control(self, shard: Optional[int]) -> Optional[GatewaySession]:
        return self.session if shard is None else self._shard_sessions.get(shard)

    async def gateway_reconnect(self, *, shard: Optional[int] = None) -> None:
        """Send op 7 RECONNECT to the latest session (or *shard*'s); discord.py then RESUMEs."""
        session = self._session_to_control(shard)
        if session and session.connection:
            await session.connection.send({"op": 7, "d": None})

    async def gateway_disconnect(self, code: int = 4000, *, shard: Optional[int] = None) -> None:
        """Close the latest session's socket (or *shard*'s) with *code* (4000 → discord.py resumes)."""
        session = self._session_to_control(shard)
        if session and session.connection:
            await session.connection.close(code, b"fake disconnect")

    # -- REST: where the gateway is --------------------------------------------
    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url, "shards": self.shard_count,
                      "session_start_limit": self._session_start_limit()})

    # -- the websocket ---------------------------------------------------------
    async def _ws_gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        compress = request.query.get("compress")
        conn = _GatewayConnection(ws, compress if compress == "zlib-stream" else None, dict(request.query))
        self.connections.append(conn)
        self._record("gateway_connect", {"query": dict(request.query)})
        try:
            await conn.send({"op": 10, "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000),
                                             "_trace": ["fake-gateway"]}})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        payload = json.loads(msg.data)
                    except ValueError:
                        await conn.close(4002, b"Error while decoding payload.")
                        break
                    await self._handle_gateway_op(conn, payload)
                elif msg.type == WSMsgType.BINARY:
                    await conn.close(4002, b"Error while decoding payload.")
                    break
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            if conn.session is not None and conn.session.connection is conn:
                conn.session.connection = None
            self._record("gateway_disconnect", {"close_code": ws.close_code})
        return ws

    async def _handle_gateway_op(self, conn: _GatewayConnection, payload: Dict[str, Any]) -> None:
        op = payload.get("op")
        d = payload.get("d")
        self.gateway_received.append(payload)
        if op == 1:  # heartbeat
            conn.heartbeats += 1
            await conn.send({"op": 11})
            return
        self._record("gateway_op", {"op": op, "d": d if op != 2 else {**d, "token": "***"}})
        if op == 2:
            await self._identify(conn, d or {})
        elif op == 6:
            await self._resume(conn, d or {})
        elif op == 3:
            self.presence_updates.append(d)
        elif op == 8:
            await self._request_members(conn, d or {})
        elif op == 4:
            pass
        else:
            log.info("fake gateway: unhandled op %s", op)

    async def _identify(self, conn: _GatewayConnection, d: Dict[str, Any]) -> None:
        self.identify_payloads.append({k: v for k, v in d.items() if k != "token"})
        if d.get("token") != self.bot_token:
            await conn.close(4004, b"Authentication failed.")
            return
        intents = d.get("intents")
        if intents is None:
            await conn.close(4013, b"Invalid intent(s).")
            return
        if self.allowed_privileged_intents is not None and \
                (intents & Intents.PRIVILEGED) & ~self.allowed_privileged_intents:
            await conn.close(4014, b"Disallowed intent(s).")
            return
        shard_id, shard_count, refusal = self._shard_of_identify(d.get("shard"))
        ident = ShardIdentify(t=time.monotonic(), shard_id=shard_id, shard_count=shard_count, accepted=False)
        self.shard_identifies.append(ident)
        if refusal is not None:
            ident.close_code = refusal[0]
            await conn.close(*refusal)
            return
        if shard_id in self.shards_down:
            ident.invalid_session = True
            await conn.send({"op": 9, "d": False})
            return
        session = GatewaySession(self, uuid.uuid4().hex, d)
        ident.accepted, ident.session_id = True, session.id
        self.sessions[session.id] = session
        session.connection = conn
        conn.session = session
        self.session = self._shard_sessions[session.shard_id] = session
        guilds = self.guilds_on_shard(session.shard_id)
        ready: Dict[str, Any] = {
            "v": 10,
            "user": self._me_json(),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self.app_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "auth_session_id_hash": "fake",
            "_trace": ["fake-gateway"],
        }
        if d.get("shard") is not None:
            ready["shard"] = [shard_id, shard_count]
        self._record("identify", {"intents": intents, "session_id": session.id, "shard": d.get("shard")})
        await session.dispatch("READY", ready)
        for g in guilds:
            await session.dispatch("GUILD_CREATE", g.to_json())
        session.ready.set()
        self._record("ready", session)

    async def _resume(self, conn: _GatewayConnection, d: Dict[str, Any]) -> None:
        self.resume_payloads.append({k: v for k, v in d.items() if k != "token"})
        session = self.sessions.get(d.get("session_id") or "")
        if d.get("token") != self.bot_token:
            await conn.close(4004, b"Authentication failed.")
            return
        if session is None or session.shard_id in self.shards_down:
            await conn.send({"op": 9, "d": False})
            return
        old = session.connection
        session.connection = conn
        conn.session = session
        self.session = self._shard_sessions[session.shard_id] = session
        session.resumes += 1
        if old is not None and old is not conn:
            await old.close(4000, b"session resumed elsewhere")
        seq = d.get("seq") or 0
        for payload in list(session.buffer):
            if payload["s"] > seq:
                await conn.send(payload)
        await session.dispatch("RESUMED", {"_trace": ["fake-gateway"]})
        self._record("resumed", session)

    async def _request_members(self, conn: _GatewayConnection, d: Dict[str, Any]) -> None:
        if conn.session is None:
            return
        gid = int(d.get("guild_id", 0))
        g = self.guilds.get(gid)
        members = list(g.members.values()) if g else []
        if d.get("user_ids"):
            wanted = {int(x) for x in d["user_ids"]}
            members = [m for m in members if m.id in wanted]
        elif d.get("query"):
            members = [m for m in members if m.user.username.startswith(d["query"])]
        chunk: Dict[str, Any] = {"guild_id": str(gid), "members": [m.to_json() for m in members],
                                 "chunk_index": 0, "chunk_count": 1, "not_found": []}
        if d.get("nonce") is not None:
            chunk["nonce"] = d["nonce"]
        await conn.session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
