"""Nothing one server (or member) does takes what every server shares, below Discord: a
member's requests wait their turn instead of being refused, upload checks are shared
between servers by the CPU time they used, a stranger's picture is decoded once, and the
smaller rules (a moderator's cancel, servers-only commands, library warnings in the log).
No processes; tests/scenarios/test_play_e2e.py has the same through the real bot."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
import warnings

import discord
import numpy as np
import pytest
from discord import app_commands
from PIL import Image

from bot.app.logs import setup_logging
from bot.service.checkpool import CheckPool
from bot.ui.commands import servers_only
from bot.service.ledger import Ledger
from bot.core.refusals import LineFull, ServerLimitReached, UserLimitReached
from bot.core.refusals import ChecksBusy, UploadProblem
from bot.intake.uploads import UploadChecker, prepare_image
from nst_core.pool.base import Failed

from test_server_settings import job, scheduler

pytestmark = pytest.mark.timeout(30)


def jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


LIMITS = dict(max_bytes=5_000_000, max_pixels=4_000_000, max_aspect=10.0, side=64)


def spin(seconds: float) -> None:
    """Use about ``seconds`` of this thread's CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# --------------------------------------------------------------------------- a member's requests


async def test_a_members_requests_wait_their_turn_in_order_and_none_is_refused():
    checker = UploadChecker(workers=1, waiting_max=8, timeout_s=0.5, per_member=3)
    events: list[tuple[str, int]] = []
    first_holds = asyncio.Event()
    picture = jpeg(80, 60)

    async def request(n: int) -> bytes:
        async with checker.admit(1, guild_id=10) as admission:
            events.append(("turn", n))
            if n == 0:
                await first_holds.wait()  # the first request's downloads outlast the check timeout...
                kept = b""
            else:
                kept = await admission.prepare("content image", f"{n}.jpg", picture, **LIMITS)
            events.append(("done", n))
            return kept

    try:
        tasks = [asyncio.create_task(request(n)) for n in range(3)]
        await asyncio.sleep(0.7)
        assert events == [("turn", 0)]  # the others wait, in order; nobody was refused
        with pytest.raises(ChecksBusy, match="You already have 3 requests being checked"):  # beyond the limit
            async with checker.admit(1, guild_id=10):
                pass
        first_holds.set()
        kept = await asyncio.gather(*tasks)  # ...and the later ones' time starts at their turn
        assert events == [("turn", 0), ("done", 0), ("turn", 1), ("done", 1), ("turn", 2), ("done", 2)]
        assert checker.admitted == 0
        with Image.open(io.BytesIO(kept[2])) as img:  # what is kept: the bot's own PNG, job-sized
            assert (img.format, img.size) == ("PNG", (64, 48))
    finally:
        await checker.close()


async def test_requests_being_checked_count_as_their_places_in_line():
    s, pool, _ = scheduler(per_user_waiting=2, queue_max=4, per_guild_waiting=3)
    first, second = s.hold(1, 1), s.hold(1, 1)  # two requests of member 1, being checked
    with pytest.raises(UserLimitReached, match="You already have 2 jobs waiting"):
        s.hold(1, 1)
    third = s.hold(2, 1)
    with pytest.raises(ServerLimitReached):  # the server's share counts them too
        s.hold(3, 1)
    s.hold(4, 2)
    with pytest.raises(LineFull):  # and so does the whole line
        s.hold(5, 3)
    s.submit(job(1, guild=1), first)  # the place it kept is taken, not a second one
    assert len(s.line) + len(pool.handles) == 1
    with second:  # a request that ends without a job gives its place back
        pass
    third.release()
    s.hold(1, 1)


# --------------------------------------------------------------------------- check time per server


async def test_a_busy_server_delays_another_servers_check_by_one_check_at_most():
    pool = CheckPool(1, share_s=100.0, window_s=60.0)
    order: list[str] = []

    def work(name: str, cost: float):
        def run() -> str:
            spin(cost)
            order.append(name)
            return name
        return run

    try:
        busy = [pool.submit("busy", work(f"busy{i}", 0.03)) for i in range(4)]
        await asyncio.sleep(0)  # busy0 is on the thread
        other = pool.submit("other", work("other", 0.001))
        await asyncio.gather(*(t.result for t in (*busy, other)))
        assert order == ["busy0", "other", "busy1", "busy2", "busy3"]
        assert pool.used("busy") >= 4 * 0.03 and 0 < pool.used("other") < pool.used("busy")
    finally:
        pool.close()


async def test_one_server_never_holds_every_check_thread():
    pool = CheckPool(2, share_s=100.0, window_s=60.0)
    release = threading.Event()
    try:
        busy = [pool.submit("busy", lambda: release.wait(5)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert [t.started for t in busy] == [True, False, False]  # one thread stays for the others
        other = pool.submit("other", lambda: "checked")
        assert other.started and await asyncio.wait_for(other.result, 5) == "checked"
        release.set()
        await asyncio.wait_for(asyncio.gather(*(t.result for t in busy)), 5)
    finally:
        release.set()
        pool.close()


async def test_a_server_past_its_share_of_check_time_waits_and_the_others_do_not():
    # A share smaller than any check: one picture uses server 10's share for the window.
    checker = UploadChecker(workers=1, waiting_max=8, timeout_s=0.5, server_share_s=1e-5, share_window_s=60.0)
    picture = jpeg(80, 60)
    try:
        async with checker.admit(1, guild_id=10) as admission:
            await admission.prepare("content image", "a.jpg", picture, **LIMITS)
        with pytest.raises(ChecksBusy, match=r"This server's members have sent a lot of pictures.*about 1 minute"):
            async with checker.admit(2, guild_id=10) as admission:  # its next one waits, then is told
                await admission.prepare("content image", "b.jpg", picture, **LIMITS)
        async with checker.admit(3, guild_id=20) as admission:  # another server is not held up at all
            kept = await admission.prepare("content image", "c.jpg", picture, **LIMITS)
        assert kept.startswith(b"\x89PNG")
        assert checker.pool.waiting == 0 and checker.admitted == 0  # the refused one left the queue
    finally:
        await checker.close()


async def test_a_waiting_server_starts_again_once_its_old_checks_leave_the_window():
    pool = CheckPool(1, share_s=0.01, window_s=0.3)
    try:
        await pool.submit(1, lambda: spin(0.02)).result
        assert pool.over_share(1) and 0 < pool.back_under_share_in(1) <= 0.3
        later = pool.submit(1, lambda: "ran")
        await asyncio.sleep(0.05)
        assert not later.started  # nobody else waits, yet it waits: a share is a share
        assert await asyncio.wait_for(later.result, 5) == "ran"
    finally:
        pool.close()


def test_a_picture_is_decoded_once_into_the_png_the_bot_keeps():
    kept = prepare_image("content image", "photo.jpg", jpeg(300, 200), **LIMITS)
    with Image.open(io.BytesIO(kept)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (64, 43))
    small = prepare_image("content image", "small.jpg", jpeg(40, 30), **LIMITS)
    with Image.open(io.BytesIO(small)) as img:
        assert img.size == (40, 30)  # never enlarged
    with pytest.raises(UploadProblem, match="`bad.jpg` cannot be used"):
        prepare_image("content image", "bad.jpg", b"\xff\xd8\xff" + b"\0" * 100, **LIMITS)


# --------------------------------------------------------------------------- smaller rules


def test_a_moderators_cancel_does_not_use_up_the_members_quota():
    refunds: list[str] = []

    class Store:
        reuse_s = 0.0

        def note(self, *args, **kwargs) -> None: ...

        def note_refund(self, job_id: str) -> None:
            refunds.append(job_id)

    ledger = Ledger(Store())  # type: ignore[arg-type]
    by_mod, by_self = job(1), job(1)
    for cancelled, by in ((by_mod, 99), (by_self, 1)):
        ledger.cancel_requested(cancelled, by)
        ledger.job_failed(cancelled, Failed(cancelled.job_id, "The job was cancelled.", "cancelled"))
    assert refunds == [by_mod.job_id]


def test_every_command_is_for_servers_only():
    tree = app_commands.CommandTree(discord.Client(intents=discord.Intents.none()))

    @app_commands.command(name="x", description="x")
    async def x(interaction: discord.Interaction) -> None: ...

    tree.add_command(servers_only(x))
    payload = x.to_dict(tree)
    assert payload["contexts"] == [0] and payload["integration_types"] == [0]


def test_library_warnings_go_to_the_log_once_per_place(capfd, caplog):
    saved = warnings.showwarning
    try:
        setup_logging("INFO", "json", [])
        caplog.set_level(logging.WARNING, logger="py.warnings")
        logging.getLogger("py.warnings").addHandler(caplog.handler)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for tag in range(500):  # a library complaining about each field of a crafted file
                warnings.warn(f"Possibly corrupted field {tag}", UserWarning)
        assert len([r for r in caplog.records if r.name == "py.warnings"]) == 1
        assert capfd.readouterr().err.count("Possibly corrupted field") == 1  # one JSON line, not 500
    finally:
        warnings.showwarning = saved
        logging.getLogger().handlers.clear()
