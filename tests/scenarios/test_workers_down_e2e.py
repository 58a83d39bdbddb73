"""Workers that cannot start, end to end: the bot says so at once, waiting jobs are told and
kept, ``/healthz`` says why, and everything runs once a worker comes up.

The first bot run accepts a job and stops before it runs (the job is paused in the store).
The second run's weights file is garbage, so no worker can start; the test then puts a real
(random) VGG19 weights file in its place, made meanwhile in a subprocess, and the worker the
pool keeps trying to start comes up.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import time

import aiohttp
import pytest

from bot.service.scheduler import WORKERS_DOWN_NOTE
from bot_fixtures import CONTENT_PNG, STYLE_PNG, free_port, start_bot, write_config

try:  # `python -m pytest` from the repo root
    from tests.fake_discord import FakeDiscord, InteractionRecord
except ImportError:  # plain `pytest`
    from fake_discord import FakeDiscord, InteractionRecord

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

_MAKE_WEIGHTS = ("import sys, keras; keras.applications.VGG19(include_top=False, weights=None, "
                 "input_shape=(None, None, 3)).save_weights(sys.argv[1])")


async def stylize(fake: FakeDiscord, user: str) -> InteractionRecord:
    n = time.monotonic_ns()
    opts = {"content": fake.add_attachment(f"{n}/content.png", CONTENT_PNG, "image/png"),
            "style": fake.add_attachment(f"{n}/style.png", STYLE_PNG, "image/png"), "preset": "fast"}
    inter = await fake.send_slash_command("stylize", user=user, options=opts)
    cb = await inter.wait_for_callback(timeout=5)
    assert cb.type == 5 and cb.at < 3.0
    return inter


async def healthz(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            return resp.status, await resp.json()


async def test_no_worker_can_start_then_one_does(tmp_path):
    valid = tmp_path / "made.weights.h5"
    maker = subprocess.Popen([sys.executable, "-c", _MAKE_WEIGHTS, str(valid)],
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fake = FakeDiscord(token_ttl=900)
    await fake.start()
    port = free_port()
    bot = None
    try:
        # Run 1: a job is accepted, then the bot stops before it runs; the store keeps it.
        config = write_config(tmp_path, health={"port": port}, pool={"start_retry_max_s": 3})
        bot = start_bot(fake, config, tmp_path)
        await fake.wait_ready(timeout=60)
        await fake.wait_for_commands(guild=fake.guild, names=["stylize"], timeout=30)
        inter = await stylize(fake, "alice")
        await inter.wait_until(lambda r: r.original is not None and "accepted" in (r.original.content or ""),
                               timeout=20)
        job_id = re.search(r"Job `([0-9a-f]+)`", inter.original.content).group(1)
        assert await bot.stop() == 0

        # Run 2: the weights file is garbage, so no worker can start.
        weights = tmp_path / "vgg19.weights.h5"
        weights.write_bytes(b"these are not weights")
        config = write_config(tmp_path, engine={"weights": str(weights)}, health={"port": port},
                              pool={"start_retry_max_s": 3})
        sessions = len(fake.sessions)
        bot = start_bot(fake, config, tmp_path)
        await fake.wait_for(lambda: len(fake.sessions) > sessions and fake.session.ready.is_set(), timeout=60,
                            what="the second run's gateway session")
        await bot.wait_log("no worker could start", timeout=120)

        # The waiting job is told, and kept.
        def told() -> bool:
            return any(job_id in (m.content or "") and WORKERS_DOWN_NOTE in (m.content or "")
                       for m in fake.messages.values())
        await fake.wait_for(told, timeout=30, what="the waiting job told that the workers could not start")
        with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as db:
            assert db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone() == ("waiting",)
        # A new request is refused at once, privately.
        started = time.monotonic()
        refused = await stylize(fake, "bob")
        reply = await refused.wait_for_reply(timeout=10)
        assert reply.ephemeral and "cannot run jobs right now" in reply.content
        assert time.monotonic() - started < 5
        # /healthz says why.
        status, body = await healthz(port)
        assert status == 503 and not body["checks"]["workers"]["ok"]
        assert "no worker could start" in body["checks"]["workers"]["reason"], body

        # The operator puts real weights in place: the next attempt starts a worker, the job runs.
        assert await asyncio.to_thread(maker.wait, 180) == 0
        os.replace(valid, weights)
        result = await fake.wait_for(
            lambda: next((m for m in fake.messages.values() if job_id in (m.content or "") and m.attachments), None),
            timeout=180, what="the waiting job's result")
        assert result.attachments[0].filename.startswith("stylized")
        status, body = await healthz(port)
        assert status == 200, body
        accepted = await stylize(fake, "bob")  # and new jobs are taken again
        await accepted.wait_until(lambda r: r.original is not None and "accepted" in (r.original.content or ""),
                                  timeout=20)
        assert await bot.stop() == 0
    finally:
        maker.kill()
        if bot is not None and bot.proc.poll() is None:
            await bot.stop()
        await fake.stop()
