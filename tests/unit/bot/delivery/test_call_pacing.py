"""Discord calls in the budget: every REST call takes a slot, an interaction's answer never
waits, a 429 is logged without the token and counted, and status edits send the newest text."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from bot.delivery.discord_calls import CallTracer, route_of
from bot.delivery.status import StatusUpdater
from bot.health import Metrics
from bot.service.call_budget import CallBudget, Caller, Priority, calls_as

TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OnNlY3JldA"


def test_routes_lose_their_ids_and_tokens():
    assert route_of("/channels/123456789012/messages/998877665544") == "/channels/{id}/messages/{id}"
    assert route_of(f"/webhooks/111111111111/{TOKEN}/messages/@original?wait=true") == \
        "/webhooks/{id}/{token}/messages/@original"
    assert route_of(f"/interactions/222222222222/{TOKEN}/callback") == "/interactions/{id}/{token}/callback"


async def serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/api/v10"


async def test_bot_token_calls_and_edits_wait_for_a_slot_but_answers_to_members_do_not(caplog):
    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/limited"):
            return web.json_response({"message": "You are being rate limited.", "retry_after": 0.5, "global": False},
                                     status=429, headers={"Retry-After": "0.5", "X-RateLimit-Scope": "user"})
        return web.json_response({})

    runner, base = await serve(handler)
    budget = CallBudget(2, reserve=0, window_s=0.6)
    metrics = Metrics()
    tracer = CallTracer(budget, api_base=lambda: base, metrics=metrics)
    bot = {"Authorization": "Bot secret"}  # how discord.py sends a call that counts toward the global limit
    webhook = f"{base}/webhooks/111111111111/{TOKEN}/messages/998877665544"
    try:
        async with aiohttp.ClientSession(trace_configs=[tracer.trace_config()]) as session:
            for _ in range(2):  # the window is now full
                async with session.patch(f"{base}/channels/123456789012/messages/998877665544", headers=bot):
                    pass
            started = time.monotonic()
            async with session.post(f"{base}/interactions/222222222222/{TOKEN}/callback"):
                pass  # a deferral
            async with session.patch(webhook):
                pass  # an answer through the interaction's webhook ("accepted", a result)
            async with session.get(f"http://{base.split('/')[2]}/attachments/x.png"):
                pass  # not a REST call
            assert time.monotonic() - started < 0.3  # none of them waited behind the full window
            with calls_as(Priority.BACKGROUND, 5):  # a progress edit through the same webhook waits
                async with session.patch(webhook):
                    pass
            assert time.monotonic() - started >= 0.5
            with caplog.at_level(logging.WARNING, logger="bot.delivery.discord_calls"):
                async with session.post(f"{base}/channels/123456789012/limited", headers=bot) as resp:
                    assert resp.status == 429
    finally:
        await runner.cleanup()
    assert budget.granted == {Priority.URGENT: 3, Priority.BACKGROUND: 1}
    assert tracer.rate_limited == 1
    record = next(r for r in caplog.records if "429" in r.getMessage())
    assert record.route == "/channels/{id}/limited" and record.scope == "user"
    assert TOKEN not in caplog.text
    text = metrics.render().decode()
    for kind, count in (("urgent", 3), ("background", 1), ("interaction", 1), ("callback", 1)):
        assert f'stylebot_discord_calls_total{{kind="{kind}"}} {count}.0' in text
    assert 'stylebot_discord_rate_limited_total{route="POST /channels/{id}/limited",scope="user"} 1.0' in text


async def test_a_status_edit_that_waited_for_its_slot_sends_the_newest_text_and_skips_the_rest():
    budget = CallBudget(1, reserve=0, window_s=0.4)
    sent: list[tuple[str, bool]] = []

    async def edit(text: str, final: bool) -> bool:
        sent.append((text, final))
        return True

    updater = StatusUpdater(edit, interval=0.0, budget=budget, guild_id=5)
    updater.attach("place 9")
    await budget.take(Caller(Priority.URGENT, 1))  # the window is full for 0.4 s
    for place in range(8, 3, -1):
        updater.set(f"place {place}")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    assert sent == [("place 4", False)]  # places 8 to 5 were overtaken while it waited: never sent


async def test_the_last_edit_does_not_wait_behind_background_edits():
    budget = CallBudget(3, reserve=1, window_s=0.5)
    sent: list[str] = []

    async def edit(text: str, final: bool) -> bool:
        sent.append(text)
        return True

    for _ in range(2):  # background edits may not use the last slot
        await budget.take(Caller(Priority.BACKGROUND, 9))
    updater = StatusUpdater(edit, interval=0.0, budget=budget, guild_id=5)
    updater.attach("waiting")
    updater.set("place 3")
    await asyncio.sleep(0.05)
    assert sent == []  # the progress edit waits for a background slot
    started = time.monotonic()
    updater.set("done", final=True)
    await updater.wait_closed(2.0)
    assert sent == ["done"] and time.monotonic() - started < 0.2  # it took the urgent slot at once
