"""The fake's shards, driven by a real discord.py ``AutoShardedClient`` and by raw gateway sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Dict, List, Optional

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord
except ImportError:  # plain `pytest` (rootdir/tests on sys.path)
    from fake_discord import FakeDiscord

pytestmark = pytest.mark.timeout(60)

GUILDS_AND_MESSAGES = (1 << 0) | (1 << 9)


class BucketedShardClient(discord.AutoShardedClient):
    """Honours ``max_concurrency`` the way Discord states it: one IDENTIFY per bucket
    (``shard_id % max_concurrency``) per *identify_window* seconds. (discord.py's own hook sleeps
    5 s before every IDENTIFY but the first.)"""

    def __init__(self, *, identify_window: float = 5.0) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.1)
        self.identify_window = identify_window
        self.max_concurrency = 1
        self._identified: Dict[int, float] = {}
        self.messages: List[discord.Message] = []
        self.shard_disconnects: List[int] = []
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="ping", description="Which shard answers")
        async def ping(interaction: discord.Interaction) -> None:
            where = f"shard {interaction.guild.shard_id}" if interaction.guild else "a DM"
            await interaction.response.send_message(f"pong from {where}")

    async def setup_hook(self) -> None:
        self.max_concurrency = (await self.fetch_session_start_limits()).max_concurrency
        await self.tree.sync()

    async def before_identify_hook(self, shard_id: Optional[int], *, initial: bool = False) -> None:
        bucket = (shard_id or 0) % self.max_concurrency
        wait = self._identified.get(bucket, float("-inf")) + self.identify_window - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._identified[bucket] = time.monotonic()

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)

    async def on_shard_disconnect(self, shard_id: int) -> None:
        self.shard_disconnects.append(shard_id)


async def _run_client(fake: FakeDiscord, client: discord.Client, monkeypatch) -> asyncio.Task:
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    return asyncio.create_task(client.start(fake.bot_token))


async def _stop_client(client: discord.Client, task: asyncio.Task) -> None:
    await client.close()
    try:
        await asyncio.wait_for(task, timeout=5)
    except Exception:
        task.cancel()


def _sent(session, event: str) -> List[dict]:
    return [p["d"] for p in session.buffer if p["t"] == event]


@pytest.fixture
async def sharded(monkeypatch):
    fake = FakeDiscord(shards=2, max_concurrency=2)
    fake.add_guilds(6, members=1)
    await fake.start()
    client = BucketedShardClient()
    task = await _run_client(fake, client, monkeypatch)
    try:
        await fake.wait_ready(timeout=15)
        await fake.wait_for_commands(names=["ping"], timeout=10)
        yield fake, client
    finally:
        await _stop_client(client, task)
        await fake.stop()
    assert not fake.unhandled, f"discord.py hit routes the fake does not serve: {fake.unhandled}"


async def test_each_shard_identifies_and_gets_only_its_guilds(sharded):
    fake, client = sharded
    assert fake.requests_to(r"^/gateway/bot$", "GET"), "AutoShardedClient asks how many shards to use"
    assert client.shard_count == 2
    accepted = [i for i in fake.shard_identifies if i.accepted]
    assert sorted((i.shard_id, i.shard_count) for i in accepted) == [(0, 2), (1, 2)]
    # max_concurrency 2 puts the two shards in different buckets: they may identify together
    assert fake.identify_concurrency_violations() == []
    assert abs(accepted[0].t - accepted[1].t) < 5.0

    by_shard = fake.sessions_by_shard()
    assert sorted(by_shard) == [0, 1]
    all_ids = set()
    for shard_id in (0, 1):
        session = fake.shard_session(shard_id)
        assert by_shard[shard_id] == [session] and session.connected
        expected = {str(g.id) for g in fake.guilds_on_shard(shard_id)}
        assert expected, "7 guilds a millisecond apart spread over both shards"
        ready = _sent(session, "READY")[0]
        assert ready["shard"] == [shard_id, 2]
        assert {g["id"] for g in ready["guilds"]} == expected
        assert {g["id"] for g in _sent(session, "GUILD_CREATE")} == expected
        all_ids |= expected
    assert all_ids == {str(g) for g in fake.guilds}
    # discord.py files each guild under the shard Discord's formula names
    assert {g.id: g.shard_id for g in client.guilds} == {g: fake.shard_of(g) for g in fake.guilds}


async def test_guild_events_arrive_on_their_shards_connection(sharded):
    fake, client = sharded
    g0, g1 = fake.guild_on_shard(0), fake.guild_on_shard(1)
    assert (fake.shard_of(g0), fake.shard_of(g1)) == (0, 1)
    shard0, shard1 = fake.shard_session(0), fake.shard_session(1)
    channel1 = next(iter(g1.channels.values()))
    author = next(m.user for m in g1.members.values() if not m.user.bot and m.user.id != g1.owner_id)

    await fake.post_user_message(channel1, user=author, content="on shard one")
    await fake.wait_for(lambda: client.messages, timeout=5, what="on_message")
    assert client.messages[0].guild.id == g1.id and client.messages[0].content == ""  # no content intent
    assert [m["guild_id"] for m in _sent(shard1, "MESSAGE_CREATE")] == [str(g1.id)]
    assert _sent(shard0, "MESSAGE_CREATE") == []

    inter = await fake.send_slash_command("ping", user=author, guild=g1, channel=channel1)
    reply = await inter.wait_for_reply(timeout=5)
    assert reply.content == "pong from shard 1"
    assert [i["id"] for i in _sent(shard1, "INTERACTION_CREATE")] == [str(inter.id)]
    assert _sent(shard0, "INTERACTION_CREATE") == []

    # DMs belong to shard 0
    dm = await fake.send_slash_command("ping", user=author, dm=True)
    assert (await dm.wait_for_reply(timeout=5)).content == "pong from a DM"
    assert [i["id"] for i in _sent(shard0, "INTERACTION_CREATE")] == [str(dm.id)]


async def test_unsharded_client_is_closed_with_4011(monkeypatch):
    async with FakeDiscord(shards=2) as fake:
        client = discord.Client(intents=discord.Intents.default())
        task = await _run_client(fake, client, monkeypatch)
        with pytest.raises(discord.ConnectionClosed) as ei:
            await asyncio.wait_for(task, timeout=10)
        await client.close()
        assert ei.value.code == 4011
        assert [(i.shard_id, i.close_code, i.accepted) for i in fake.shard_identifies] == [(None, 4011, False)]
        assert fake.sessions == {}


async def _identify_raw(http: aiohttp.ClientSession, fake: FakeDiscord, shard=None) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(fake.gateway_url)
    assert (await ws.receive_json())["op"] == 10
    d = {"token": fake.bot_token, "intents": GUILDS_AND_MESSAGES, "properties": {}}
    if shard is not None:
        d["shard"] = shard
    await ws.send_json({"op": 2, "d": d})
    return ws


async def _close_code(ws: aiohttp.ClientWebSocketResponse) -> Optional[int]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=5)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code


async def _dispatches(ws: aiohttp.ClientWebSocketResponse, count: int) -> List[dict]:
    out = []
    while len(out) < count:
        msg = await asyncio.wait_for(ws.receive_json(), timeout=10)
        if msg["op"] == 0:
            out.append(msg)
    return out


async def test_gateway_bot_and_identify_rules_over_raw_sockets():
    async with FakeDiscord(shards=2, max_concurrency=1) as fake, aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bot {fake.bot_token}"}
        async with http.get(f"{fake.api_base}/gateway/bot", headers=auth) as resp:
            info = await resp.json()
        assert info["shards"] == 2 and info["url"] == fake.gateway_url
        assert info["session_start_limit"]["max_concurrency"] == 1
        assert info["session_start_limit"]["remaining"] == info["session_start_limit"]["total"] == 1000

        assert await _close_code(await _identify_raw(http, fake)) == 4011  # no shard
        assert await _close_code(await _identify_raw(http, fake, [0, 3])) == 4011  # wrong count
        assert await _close_code(await _identify_raw(http, fake, [2, 2])) == 4010  # no such shard

        ws0 = await _identify_raw(http, fake, [0, 2])
        ws1 = await _identify_raw(http, fake, [1, 2])  # same bucket (max_concurrency 1), at once
        ready0, ready1 = (await _dispatches(ws0, 1))[0], (await _dispatches(ws1, 1))[0]
        assert (ready0["d"]["shard"], ready1["d"]["shard"]) == ([0, 2], [1, 2])
        pairs = fake.identify_concurrency_violations()
        assert [(a.shard_id, b.shard_id) for a, b in pairs] == [(0, 1)]
        async with http.get(f"{fake.api_base}/gateway/bot", headers=auth) as resp:
            assert (await resp.json())["session_start_limit"]["remaining"] == 998
        await ws0.close()
        await ws1.close()


async def test_a_thousand_guilds_on_four_shards_connect_quickly():
    fake = FakeDiscord(shards=4, max_concurrency=4)
    t0 = time.monotonic()
    fake.add_guilds(1000, members=3)
    built = time.monotonic() - t0
    counts = [len(fake.guilds_on_shard(i)) for i in range(4)]
    assert sum(counts) == 1001 and min(counts) >= 240, counts  # spread evenly, the default guild too
    async with fake, aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        sockets = [await _identify_raw(http, fake, [i, 4]) for i in range(4)]
        received = await asyncio.gather(*(_dispatches(ws, 1 + counts[i]) for i, ws in enumerate(sockets)))
        connected = time.monotonic() - t0
        for i, events in enumerate(received):
            assert [e["t"] for e in events] == ["READY"] + ["GUILD_CREATE"] * counts[i]
            assert {fake.shard_of(int(e["d"]["id"])) for e in events[1:]} == {i}
        await fake.wait_ready(timeout=5)
        # interactions and messages find their shard without walking the guilds
        g = fake.guild_on_shard(3)
        t0 = time.monotonic()
        for _ in range(200):
            fake.shard_of(g)
            fake.user(f"guild-{999}-member2")
        lookups = time.monotonic() - t0
        for ws in sockets:
            await ws.close()
    # generous bounds for a shared 2-core machine; the real cost is ~10x lower
    assert built < 3.0 and connected < 6.0 and lookups < 0.5, (built, connected, lookups)


async def test_a_shard_taken_down_is_refused_until_brought_up(monkeypatch):
    fake = FakeDiscord(shards=2, max_concurrency=2)
    fake.add_guilds(2, members=1)
    await fake.start()
    # identifies may come 0.3 s apart here (not Discord's 5 s) to keep the test short
    client = BucketedShardClient(identify_window=0.3)
    task = await _run_client(fake, client, monkeypatch)
    try:
        await fake.wait_ready(timeout=15)
        first0, first1 = fake.shard_session(0), fake.shard_session(1)
        await fake.take_shard_down(1)
        await fake.wait_for(lambda: any(i.invalid_session and i.shard_id == 1 for i in fake.shard_identifies),
                            timeout=10, what="an IDENTIFY of shard 1 refused with op 9")
        assert 1 in client.shard_disconnects and 0 not in client.shard_disconnects
        assert fake.shard_session(0) is first0 and first0.connected
        assert fake.shard_session(1) is first1  # no new session while down
        fake.bring_shard_up(1)
        session = await fake.wait_ready(timeout=10, shards=[1])
        assert session is not first1 and session.shard_id == 1
        assert [s.id for s in fake.sessions_by_shard()[1]] == [first1.id, session.id]
        await fake.wait_for(lambda: not client.get_shard(1).is_closed(), timeout=5, what="shard 1 open")
    finally:
        await _stop_client(client, task)
        await fake.stop()
