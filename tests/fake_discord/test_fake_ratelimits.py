"""The fake's REST rate limits: the answers themselves (raw HTTP) and discord.py living with them."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, RateLimits, RequestRecord, RouteLimit, discord_route_limits
    from tests.fake_discord.ratelimits import route_of
except ImportError:  # plain `pytest` (rootdir/tests on sys.path)
    from fake_discord import FakeDiscord, RateLimits, RequestRecord, RouteLimit, discord_route_limits
    from fake_discord.ratelimits import route_of

pytestmark = pytest.mark.timeout(60)

MESSAGE_CREATE = "POST /channels/{channel_id}/messages"


def _point_discord_py_at(fake: FakeDiscord, monkeypatch) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))


def test_routes_are_keyed_like_discord():
    assert route_of("PATCH", "/channels/12/messages/34") == (
        "PATCH /channels/{channel_id}/messages/{message_id}", "12")
    assert route_of("PATCH", "/webhooks/1/tok/messages/@original") == (
        "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}", "1+tok")
    assert route_of("POST", "/interactions/5/tok/callback") == (
        "POST /interactions/{interaction_id}/{interaction_token}/callback", "5+tok")
    assert route_of("PUT", "/applications/9/guilds/77/commands") == (
        "PUT /applications/{application_id}/guilds/{guild_id}/commands", "77")
    assert route_of("GET", "/users/@me") == ("GET /users/@me", "")


async def test_route_bucket_headers_and_429():
    limits = RateLimits(global_per_s=None, routes={MESSAGE_CREATE: RouteLimit(2, 1.0)})
    async with FakeDiscord(rate_limits=limits) as fake:
        other = fake.add_channel("other")
        auth = {"Authorization": f"Bot {fake.bot_token}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async def post(channel) -> tuple:
                async with http.post(f"{fake.api_base}/channels/{channel.id}/messages", json={"content": "hi"}) as r:
                    return r.status, r.headers, await r.json()

            (s1, h1, _), (s2, h2, _), (s3, h3, b3) = [await post(fake.channel) for _ in range(3)]
            assert (s1, s2, s3) == (200, 200, 429)
            assert h1["X-RateLimit-Limit"] == "2"
            assert (h1["X-RateLimit-Remaining"], h2["X-RateLimit-Remaining"]) == ("1", "0")
            assert h1["X-RateLimit-Bucket"] == h2["X-RateLimit-Bucket"] == h3["X-RateLimit-Bucket"]
            reset_after = float(h2["X-RateLimit-Reset-After"])
            assert 0 < reset_after <= 1.0
            assert abs(float(h2["X-RateLimit-Reset"]) - time.time() - reset_after) < 0.5
            assert set(b3) == {"message", "retry_after", "global"} and b3["global"] is False
            assert 0 < b3["retry_after"] <= reset_after
            assert h3["Retry-After"] == "1" and h3["X-RateLimit-Scope"] == "user" and h3["Via"]
            assert h3["X-RateLimit-Remaining"] == "0" and "X-RateLimit-Global" not in h3
            assert len(fake.messages_in(fake.channel)) == 2, "a refused request does nothing"
            [hit] = fake.rate_limited
            assert (hit.route, hit.bucket, hit.is_global, hit.scope) == (
                MESSAGE_CREATE, h3["X-RateLimit-Bucket"], False, "user")
            assert hit.path == f"/channels/{fake.channel.id}/messages" and hit.retry_after == b3["retry_after"]

            status, headers, _ = await post(other)  # another channel: another window of the same bucket
            assert status == 200 and headers["X-RateLimit-Remaining"] == "1"
            assert headers["X-RateLimit-Bucket"] == h1["X-RateLimit-Bucket"]
            async with http.get(f"{fake.api_base}/users/@me") as r:  # unlisted routes: the default limit
                assert r.headers["X-RateLimit-Limit"] == "50" and r.headers["X-RateLimit-Bucket"] != h1[
                    "X-RateLimit-Bucket"]
            await asyncio.sleep(b3["retry_after"])
            assert (await post(fake.channel))[0] == 200, "the window reset when retry_after said"


async def test_discord_py_waits_on_route_buckets_and_retries_a_429(monkeypatch):
    limits = RateLimits(global_per_s=None, routes={MESSAGE_CREATE: RouteLimit(2, 0.4)})
    async with FakeDiscord(rate_limits=limits) as fake:
        _point_discord_py_at(fake, monkeypatch)
        client = discord.Client(intents=discord.Intents.default())
        await client.login(fake.bot_token)
        try:
            channel = await client.fetch_channel(fake.channel.id)
            # six at once: discord.py learns the bucket from the headers and waits for its resets
            await asyncio.gather(*(channel.send(f"m{i}") for i in range(6)))
            assert fake.rate_limited == []
            posts = [r.t for r in fake.requests_to(r"/messages$", "POST")]
            # three windows, each opened by a request at least 0.4 s after the previous one opened
            assert len(posts) == 6 and posts[-1] - posts[0] >= 0.8

            # a 429 it could not foresee (another process used the bucket): it waits and retries
            await asyncio.sleep(0.4)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.bot_token}"}) as http:
                for _ in range(2):
                    async with http.post(f"{fake.api_base}/channels/{fake.channel.id}/messages",
                                         json={"content": "elsewhere"}) as r:
                        assert r.status == 200
            t0 = time.monotonic()
            sent = await channel.send("after the 429")
            [hit] = fake.rate_limited
            assert hit.route == MESSAGE_CREATE and not hit.is_global
            assert time.monotonic() - t0 >= hit.retry_after - 0.05
            assert fake.messages[sent.id].content == "after the 429"
        finally:
            await client.close()


async def test_global_limit_429_and_discord_py_retries(monkeypatch):
    limits = RateLimits(global_per_s=4, routes={}, default=None)
    async with FakeDiscord(rate_limits=limits) as fake:
        users = [fake.add_user(f"user{i}") for i in range(6)]
        _point_discord_py_at(fake, monkeypatch)
        client = discord.Client(intents=discord.Intents.default())
        await client.login(fake.bot_token)  # GET /users/@me: one of the four
        try:
            fetched = await asyncio.gather(*(client.fetch_user(u.id) for u in users))
            assert [u.name for u in fetched] == [f"user{i}" for i in range(6)]
            assert fake.rate_limited and all(h.is_global and h.scope == "global" and h.bucket is None
                                             for h in fake.rate_limited)
            admitted = [r.t for r in fake.requests if r.status != 429]
            assert all(b - a >= 1.0 for a, b in zip(admitted, admitted[4:])), "never 5 in one second"
        finally:
            await client.close()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.bot_token}"}) as http:
            answers = []
            for _ in range(5):
                async with http.get(f"{fake.api_base}/users/@me") as r:
                    answers.append((r.status, r.headers, await r.json()))
            status, headers, body = answers[-1]
            assert status == 429 and body["global"] is True and 0 < body["retry_after"] <= 1.0
            assert headers["X-RateLimit-Global"] == "true" and headers["X-RateLimit-Scope"] == "global"
            assert headers["Retry-After"] == "1" and headers["Via"]
            assert "X-RateLimit-Remaining" not in answers[0][1], "default=None: no route buckets, no headers"


class BurstClient(discord.Client):
    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.1)
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="burst", description="Defer, then five followups")
        async def burst(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            for i in range(5):
                await interaction.followup.send(f"part {i}")

    async def setup_hook(self) -> None:
        await self.tree.sync()


async def test_interaction_endpoints_skip_the_global_limit_and_webhooks_have_buckets(monkeypatch):
    routes = {**discord_route_limits(),
              "POST /webhooks/{webhook_id}/{webhook_token}": RouteLimit(2, 0.3, bucket="webhook")}
    async with FakeDiscord(rate_limits=RateLimits(routes=routes)) as fake:
        _point_discord_py_at(fake, monkeypatch)
        client = BurstClient()
        task = asyncio.create_task(client.start(fake.bot_token))
        try:
            await fake.wait_ready(timeout=10)
            await fake.wait_for_commands(names=["burst"], timeout=10)
            fake.rate_limiter.config.global_per_s = 2  # now spend the bot's global budget (start-up counts too)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.bot_token}"}) as http:
                for _ in range(3):
                    async with http.get(f"{fake.api_base}/users/@me") as r:
                        pass
                assert r.status == 429
            inter = await fake.send_slash_command("burst", user="alice")
            cb = await inter.wait_for_callback(timeout=5)
            assert cb.status == 200 and cb.at < 3.0, "the callback is not held back by the global limit"
            await inter.wait_for_followups(5, timeout=10)
            assert {h.path for h in fake.rate_limited} == {"/users/@me"}, "nothing of the interaction was refused"
            # discord.py's webhook adapter honoured the webhook bucket (2 per 0.3 s) from the headers
            posts = [r.t for r in fake.requests_to(r"^/webhooks/\d+/[^/]+$", "POST")]
            assert len(posts) == 5 and posts[-1] - posts[0] >= 0.6  # three windows of 0.3 s, no 429
        finally:
            await client.close()
            try:
                await asyncio.wait_for(task, timeout=5)
            except Exception:
                task.cancel()


async def test_calls_per_second_peak_and_mean():
    fake = FakeDiscord()

    def call(t: float, path: str = "/users/@me", **kw) -> None:
        fake.requests.append(RequestRecord(method="GET", path=path, query={}, t=t, authorized=True, **kw))

    for i in range(10):
        call(100.0 + i * 0.05)  # 10 in half a second
    call(100.9, path="/interactions/1/tok/callback")
    call(100.95, path="/attachments/cat.png", api=False)  # the CDN is not an API call
    call(102.5)
    call(102.6)
    rate = fake.calls_per_second(until=104.0)
    assert (rate.peak, rate.total) == (11, 13) and rate.mean == pytest.approx(13 / 4.0)
    glob = fake.calls_per_second(until=104.0, global_only=True)
    assert (glob.peak, glob.total) == (10, 12)
    assert fake.calls_per_second(since=101.0, until=103.0).peak == 2
    assert fake.calls_per_second(since=200.0, until=201.0).total == 0


async def test_an_injected_429_is_a_shared_limit_and_recorded():
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        fake.inject_fault(r"^/users/@me$", status=429, retry_after=0.25)
        async with http.get(f"{fake.api_base}/users/@me", headers={"Authorization": f"Bot {fake.bot_token}"}) as r:
            assert r.status == 429 and r.headers["X-RateLimit-Scope"] == "shared" and r.headers["Via"]
            assert (await r.json())["retry_after"] == 0.25
        [hit] = fake.rate_limited
        assert (hit.route, hit.scope, hit.is_global, hit.retry_after) == ("GET /users/@me", "shared", False, 0.25)
