"""A bot shared by many servers, below Discord: the line between servers, server settings,
daily quotas, bounded upload checks, and the smaller defences (no Discord, no processes)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from aiohttp import web
from packaging.version import Version

from bot.intake import uploads
from bot.config import LimitsConfig
from bot.config_loading import load_config
from bot.core.job import Job, JobState
from bot.service.ledger import Ledger
from bot.core.line import FairLine
from bot.service.scheduler import Scheduler, WORKERS_DOWN_NOTE
from bot.core.refusals import LineFull, ServerLimitReached, WorkersUnavailable
from bot.core.rules import GuildSettings, SettingRefused, QUOTA_WINDOW_S, effective_rules
from bot.core.refusals import PresetNotAllowed, QuotaReached
from bot.service.server_settings import ServerSettings
from bot.store.job_store import JobStore
from bot.core.refusals import ChecksBusy, UploadProblem
from bot.intake.uploads import UploadChecker
from nst_core.params import StylizeParams
from nst_core.pool.base import Failed, Finished, JobHandle, JobSpec, PoolStats, Queued, Started, WorkerPool

pytestmark = pytest.mark.timeout(30)

from conftest import REPO  # noqa: E402
_ids = itertools.count()


def job(user: int, guild: int | None = 1, preset: str = "fast") -> Job:
    return Job(job_id=f"{next(_ids):010x}", user_id=user, channel_id=10, guild_id=guild, application_id=1,
               interaction_token="t", token_created_at=0.0, upload_limit=10_000_000,
               params=StylizeParams(preset=preset), content=b"c", style=b"s", style_label="s.png")


# --------------------------------------------------------------------------- the line between servers


def drain(line: FairLine) -> list:
    out = []
    while len(line):
        out.append(line.pop())
    return out


def test_servers_take_turns_then_members_within_a_server():
    line: FairLine[str] = FairLine()
    # A busy server (three members, six jobs) and a quiet one (one member, two jobs).
    for user, items in (("alice", ["a1", "a2"]), ("bob", ["b1", "b2"]), ("carol", ["c1", "c2"])):
        for item in items:
            line.push(user, item, guild="busy")
    for item in ("z1", "z2"):
        line.push("zed", item, guild="quiet")
    expected = ["a1", "z1", "b1", "z2", "c1", "a2", "b2", "c2"]
    assert line.order() == expected
    assert line.waiting_in("busy") == 6 and line.waiting_in("quiet") == 2 and line.waiting_of("zed") == 2
    assert drain(line) == expected


def test_a_server_arriving_later_is_not_stuck_behind_a_busy_one():
    line: FairLine[str] = FairLine()
    for i in range(10):
        line.push(f"user{i % 5}", f"busy{i}", guild="busy")
    assert line.pop() == "busy0"
    line.push("newcomer", "new1", guild="quiet")
    assert line.position("new1") == 1  # the busy server had its turn in this round


def test_the_same_member_counts_in_every_server_for_the_per_member_limit():
    line: FairLine[str] = FairLine()
    line.push("alice", "a1", guild="one")
    line.push("alice", "a2", guild="two")
    assert line.waiting_of("alice") == 2 and line.waiting_in("one") == 1


# --------------------------------------------------------------------------- the scheduler


class ManualPool(WorkerPool):
    """Jobs start and end when the test says; a cancel is honoured only if ``obey_cancel``."""

    def __init__(self) -> None:
        self.handles: dict[str, JobHandle] = {}
        self.obey_cancel = True
        self.alive = 1

    @property
    def capacity(self) -> int:
        return 1

    @property
    def free_slots(self) -> int:
        return 1 - sum(1 for h in self.handles.values() if not h.done)

    @property
    def workers_alive(self) -> int:
        return self.alive

    def stats(self) -> PoolStats:
        return PoolStats(1, self.free_slots, 0, 0, self.alive, 0)

    async def start(self) -> None:
        pass

    def submit(self, spec: JobSpec) -> JobHandle:
        handle = JobHandle(spec.job_id, self._cancel)
        handle.deliver(Queued(spec.job_id, 0))
        self.handles[spec.job_id] = handle
        return handle

    def _cancel(self, job_id: str) -> None:
        if self.obey_cancel:
            self.handles[job_id].deliver(Failed(job_id, "The job was cancelled.", "cancelled"))

    async def shutdown(self, drain: bool = False, timeout: float = 30.0) -> None:
        pass


class Notes:
    def __init__(self) -> None:
        self.waiting: list[tuple[str, int, str | None]] = []
        self.ended: list[tuple[str, str]] = []

    def job_waiting(self, job, position, eta_s, note=None):
        self.waiting.append((job.job_id, position, note))

    def job_started(self, job, worker=None): ...
    def job_progress(self, job, event): ...
    def job_retrying(self, job, event): ...

    def job_finished(self, job, event):
        self.ended.append((job.job_id, "finished"))

    def job_failed(self, job, event):
        self.ended.append((job.job_id, event.kind))

    def job_paused(self, job, was_running): ...


def scheduler(**limits) -> tuple[Scheduler, ManualPool, Notes]:
    pool, notes = ManualPool(), Notes()
    s = Scheduler(pool, Ledger(watcher=notes), **({"per_user_waiting": 3, "queue_max": 10, "max_pixels": 10_000} | limits))
    s.set_pool_ready()
    return s, pool, notes


async def test_one_server_cannot_fill_the_line():
    s, pool, _ = scheduler(per_guild_waiting=2)
    s.submit(job(1, guild=1))  # runs
    s.submit(job(1, guild=1))
    s.submit(job(2, guild=1))
    with pytest.raises(ServerLimitReached, match="This server already has 2 jobs waiting"):
        s.submit(job(3, guild=1))
    s.submit(job(4, guild=2))  # another server still gets in, and first: server 1 had this round's turn
    assert s.guild_status(1).positions == (2, 3) and s.guild_status(2).positions == (1,)
    assert s.guild_status(1).running == 1 and s.guild_status(2).waiting == 1


async def test_a_full_line_is_reported_before_a_full_server_share():
    s, _, _ = scheduler(queue_max=2, per_guild_waiting=2)
    for _ in range(3):
        s.submit(job(next(_ids), guild=1))
    with pytest.raises(LineFull):
        s.check(99, 1)


async def test_while_no_worker_can_start_requests_are_refused_and_waiting_jobs_are_told():
    s, pool, notes = scheduler()
    s.set_pool_ready(False)
    waiting = job(1)
    s.submit(waiting)
    s.set_workers_down(True)
    with pytest.raises(WorkersUnavailable, match="cannot run jobs right now"):
        s.check(2, 1)
    assert notes.waiting[-1] == (waiting.job_id, 1, WORKERS_DOWN_NOTE)
    assert s.status().workers_down and not pool.handles
    s.set_pool_ready()  # a worker came up
    assert not s.workers_down and waiting.job_id in pool.handles
    s.check(2, 1)  # accepted again


async def test_cancelling_a_job_that_finishes_first_does_not_say_cancelled():
    s, pool, notes = scheduler()
    running = job(1)
    s.submit(running)
    handle = pool.handles[running.job_id]
    handle.deliver(Started(running.job_id, "cpu0"))
    await asyncio.sleep(0)
    pool.obey_cancel = False  # the worker is past its last step: the result comes instead

    async def finish_soon() -> None:
        await asyncio.sleep(0.05)
        handle.deliver(Finished(running.job_id, b"png", {"final": {}}, seconds=1.0))

    finisher = asyncio.create_task(finish_soon())
    assert await s.cancel(running.job_id, by_user=1) is False
    await finisher
    assert running.state is JobState.RUNNING and notes.ended == [(running.job_id, "finished")]  # done once saved


# --------------------------------------------------------------------------- settings and quotas


def test_a_server_can_tighten_the_operators_limits_never_exceed_them():
    limits = LimitsConfig(max_preset="balanced", daily_jobs_per_member=5)
    assert effective_rules(GuildSettings(1), limits).max_preset == "balanced"
    assert effective_rules(GuildSettings(1, max_preset="fast"), limits).max_preset == "fast"
    assert effective_rules(GuildSettings(1, max_preset="best"), limits).max_preset == "balanced"  # ceiling lowered
    assert effective_rules(GuildSettings(1), limits).daily_jobs == 5
    assert effective_rules(GuildSettings(1, daily_jobs=2), limits).daily_jobs == 2
    assert effective_rules(GuildSettings(1, daily_jobs=0), limits).daily_jobs == 5  # "no limit" is not allowed
    assert effective_rules(GuildSettings(1, daily_jobs=0), LimitsConfig()).daily_jobs == 0


async def test_settings_refuse_changes_above_the_ceiling(tmp_path):
    settings = ServerSettings(LimitsConfig(max_preset="balanced", daily_jobs_per_member=5))
    with pytest.raises(SettingRefused, match="up to \\*\\*balanced\\*\\*, so this server can choose fast or balanced"):
        await settings.update(1, 7, max_preset="best")
    with pytest.raises(SettingRefused, match="at most 5 jobs per member per day"):
        await settings.update(1, 7, daily_jobs=6)
    await settings.update(1, 7, max_preset="fast", daily_jobs=3)
    settings.check_preset(1, "fast")
    with pytest.raises(PresetNotAllowed, match="up to \\*\\*fast\\*\\*, so `balanced` cannot be used here"):
        settings.check_preset(1, "balanced")
    settings.check_preset(2, "balanced")  # another server keeps the operator's rules


async def test_settings_survive_a_restart_and_stay_with_their_server(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "spool")
    await store.open()
    settings = ServerSettings(LimitsConfig(), store)
    await settings.load()
    await settings.update(111, 7, channels=(5, 6), max_preset="fast", daily_jobs=4)
    await store.close()

    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "spool")
    await store.open()
    again = ServerSettings(LimitsConfig(), store)
    await again.load()
    assert again.get(111) == GuildSettings(111, (5, 6), "fast", 4)
    assert again.get(222) == GuildSettings(222)
    await store.close()


async def test_two_admins_changing_settings_at_once_both_keep_their_change(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "spool")
    await store.open()
    try:
        settings = ServerSettings(LimitsConfig(), store)
        await asyncio.gather(settings.allow_channel(1, 7, 100, True), settings.allow_channel(1, 8, 200, True),
                             settings.update(1, 9, max_preset="fast"))
        assert sorted(settings.get(1).channels) == [100, 200] and settings.get(1).max_preset == "fast"
    finally:
        await store.close()


async def test_the_daily_quota_is_counted_in_the_store_atomically(tmp_path):
    clock = [1_000_000.0]
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "spool", clock=lambda: clock[0])
    await store.open()
    try:
        # Five requests at once against a limit of two: exactly two get in.
        results = await asyncio.gather(*(store.accept(job(7, guild=1), daily_limit=2) for _ in range(5)),
                                       return_exceptions=True)
        assert sum(r is None for r in results) == 2
        refused = [r for r in results if isinstance(r, QuotaReached)]
        assert len(refused) == 3 and refused[0].retry_at == clock[0] + QUOTA_WINDOW_S
        assert "You have used your 2 jobs" in str(refused[0]) and f"<t:{int(clock[0] + QUOTA_WINDOW_S) + 1}:R>" \
            in str(refused[0])
        await store.accept(job(7, guild=2), daily_limit=2)  # another server counts separately
        await store.accept(job(8, guild=1), daily_limit=2)  # another member too
        clock[0] += QUOTA_WINDOW_S + 1  # a day later
        await store.accept(job(7, guild=1), daily_limit=2)
        # A limit lowered since: the member may start again when enough old jobs have left the window.
        clock[0] += 10
        for _ in range(2):
            await store.accept(job(6, guild=3), daily_limit=5)
            clock[0] += 100
        with pytest.raises(QuotaReached) as lowered:
            await store.accept(job(6, guild=3), daily_limit=1)
        assert lowered.value.retry_at == clock[0] - 100 + QUOTA_WINDOW_S  # the second job's time, not the first's
        # A job recorded but then not taken (the line filled up) gives its place back.
        taken = job(9, guild=1)
        await store.accept(taken, daily_limit=1)
        await store.discard(taken.job_id)
        await store.accept(job(9, guild=1), daily_limit=1)
        # A job that failed by the bot's fault (its worker died) gives its place back too.
        ledger = Ledger(store)
        failed = job(10, guild=1)
        await ledger.accept(failed, daily_limit=1)
        ledger.job_failed(failed, Failed(failed.job_id, "The worker stopped.", "worker_died"))
        await store.accept(job(10, guild=1), daily_limit=1)
        with pytest.raises(QuotaReached):
            await store.accept(job(10, guild=1), daily_limit=1)
    finally:
        await store.close()


_V1_SCHEMA = """
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
    user_id INTEGER NOT NULL, channel_id INTEGER NOT NULL, guild_id INTEGER, application_id INTEGER NOT NULL,
    interaction_token TEXT NOT NULL, token_created_at REAL NOT NULL, upload_limit INTEGER NOT NULL,
    params TEXT NOT NULL, style_label TEXT NOT NULL, preset TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, status_message_id INTEGER, position INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL, worker TEXT, failure TEXT,
    failure_kind TEXT, cancelled_by INTEGER, notice TEXT, route TEXT, message_id INTEGER, delivered_at REAL);
CREATE INDEX jobs_state ON jobs (state);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version=1;
"""


async def test_a_database_of_the_previous_version_is_upgraded_with_its_waiting_jobs(tmp_path):
    db = sqlite3.connect(tmp_path / "db.sqlite3")
    db.executescript(_V1_SCHEMA)
    insert = ("INSERT INTO jobs (job_id, state, user_id, channel_id, guild_id, application_id, interaction_token, "
              "token_created_at, upload_limit, params, style_label, preset, created_at, updated_at, notice, route) "
              "VALUES (?, ?, 5, 10, 1, 1, 't', 0, 1000, '{\"preset\": \"fast\", \"seed\": 4}', 's.png', 'fast', "
              "1, 1, ?, ?)")
    db.execute(insert, ("abcdef0123", "queued", None, None))
    db.execute(insert, ("abcdef0456", "failed", "sending", "dm"))  # its notice may have got through
    db.execute(insert, ("abcdef0789", "failed", "sent", "channel"))
    db.commit()
    db.close()
    (tmp_path / "spool" / "abcdef0123").mkdir(parents=True)
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "spool")
    await store.open()
    try:
        waiting, notifying = await store.open_jobs()
        assert (waiting.job_id, waiting.state, waiting.params.seed) == ("abcdef0123", JobState.WAITING, 4)
        assert (notifying.job_id, notifying.state, notifying.route) == ("abcdef0456", JobState.NOTIFYING, "dm")
        assert (await store.get("abcdef0789")).state is JobState.NOTIFIED
        await store.accept(job(5, guild=1), daily_limit=1)  # the new tables work
        used, leaves = await store.usage(1, 5, 0.0, limit=1)
        assert used == 1 and leaves is not None
    finally:
        await store.close()


# --------------------------------------------------------------------------- bounded upload checks


async def test_upload_checks_are_bounded_in_total_and_a_busy_server_leaves_room():
    checker = UploadChecker(workers=1, waiting_max=8, timeout_s=5)  # the last 2 places stay for other servers
    try:
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(checker.admit(1, guild_id=10))
            for user in range(2, 7):  # a busy server takes six places of eight...
                await held.enter_async_context(checker.admit(user, guild_id=10))
            with pytest.raises(ChecksBusy, match="checking a lot of pictures"):  # ...not the last two
                await held.enter_async_context(checker.admit(7, guild_id=10))
            for user, guild in ((8, 20), (9, 30)):  # which another server gets
                await held.enter_async_context(checker.admit(user, guild_id=guild))
            with pytest.raises(ChecksBusy, match="checking a lot of pictures"):  # all eight taken
                await held.enter_async_context(checker.admit(10, guild_id=40))
            assert checker.admitted == 8
        assert checker.admitted == 0
        async with checker.admit(7, guild_id=10):
            pass
    finally:
        await checker.close()


async def test_a_check_that_runs_out_of_time_answers_and_keeps_its_place_until_it_ends(monkeypatch):
    release = threading.Event()

    def stuck(*args, **kwargs) -> None:
        release.wait(10)

    monkeypatch.setattr(uploads, "prepare_image", stuck)
    checker = UploadChecker(workers=1, waiting_max=1, timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(UploadProblem, match="took too long"):
            async with checker.admit(1) as admission:
                await admission.prepare("content image", "slow.jpg", b"x", max_bytes=10, max_pixels=10, side=16)
        assert time.monotonic() - started < 3  # the member got an answer; the decode goes on
        with pytest.raises(ChecksBusy):  # its place is still taken: stuck work does not pile up
            async with checker.admit(2):
                pass
        release.set()
        for _ in range(50):
            if checker.admitted == 0:
                break
            await asyncio.sleep(0.05)
        assert checker.admitted == 0
    finally:
        release.set()
        await checker.close()


async def test_downloads_stop_at_the_byte_limit_whatever_the_size_claimed():
    sent = {"bytes": 0}

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to trust
        await response.prepare(request)
        try:
            for _ in range(10_000):
                await response.write(b"\0" * 65536)
                sent["bytes"] += 65536
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    app = web.Application()
    app.router.add_get("/big.png", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    checker = UploadChecker(workers=1, waiting_max=1, timeout_s=10)
    try:
        async with checker.admit(1) as admission:
            with pytest.raises(UploadProblem, match="`big.png` is larger than that; the limit is 1.0 MB"):
                await admission.download(f"http://127.0.0.1:{port}/big.png", "content image", "big.png", 2**20)
        await asyncio.sleep(0.2)
        assert sent["bytes"] < 50 * 2**20  # the bot hung up, far short of the 640 MB on offer
    finally:
        await checker.close()
        await runner.cleanup()


# --------------------------------------------------------------------------- smaller defences


def test_pillow_is_required_in_a_version_without_the_webp_overflow():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    spec = next(d for d in project["dependencies"] if d.lower().startswith("pillow"))
    floor = Version(spec.split(">=")[1].split(",")[0].strip())
    assert floor >= Version("10.0.1"), spec  # CVE-2023-4863 (libwebp) is fixed from 10.0.1 on
    import PIL
    assert Version(PIL.__version__) >= floor


def test_an_override_without_the_double_underscore_is_warned_about():
    warnings: list[str] = []
    config = load_config(None, env={"NSTBOT_LIMITS_QUEUE_MAX": "50", "NSTBOT_LIMITS__PER_USER_WAITING": "3"},
                         warnings=warnings)
    assert config.limits.per_user_waiting == 3 and config.limits.queue_max == 20
    assert warnings == ["NSTBOT_LIMITS_QUEUE_MAX is ignored: overrides are named NSTBOT_<SECTION>__<KEY>, with two "
                        "underscores after the section (did you mean NSTBOT_LIMITS__QUEUE_MAX?)"]
    env = {"PATH": "/usr/bin:/bin", "NSTBOT_ENGINE_WEIGHTS": "random"}
    out = subprocess.run([sys.executable, "-m", "bot", "--check-config"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "NSTBOT_ENGINE_WEIGHTS is ignored" in out.stderr
    assert "NSTBOT_ENGINE__WEIGHTS?" in out.stderr


async def test_a_failing_background_loop_is_logged_and_started_again(caplog):
    from bot.app.client import StyleBot
    from bot.config import Config

    bot = StyleBot(Config(), pool=ManualPool(), store=None, checker=None)  # type: ignore[arg-type]
    runs = []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("boom")

    with caplog.at_level("ERROR"):
        bot._supervise("flaky", flaky)
        await asyncio.wait_for(asyncio.gather(*bot._tasks), 10)
    assert len(runs) == 2
    assert any(r.getMessage() == "background task failed; restarting it" and r.task == "flaky"
               for r in caplog.records)
    await bot.close()


async def test_a_pool_that_gave_up_at_start_is_replaced_and_jobs_wait_meanwhile():
    from bot.app.client import StyleBot
    from bot.config import Config
    from nst_core.pool.base import WorkerStartError

    class Unreachable(ManualPool):
        """Like a Ray pool whose cluster cannot be reached: start fails, the pool is closed."""

        closed = True
        start_failing = True

        def __init__(self) -> None:
            super().__init__()
            self.alive = 0

        async def start(self) -> None:
            raise WorkerStartError("Cannot reach the Ray cluster at head:6379")

    second = ManualPool()
    bot = StyleBot(Config(), pool=Unreachable(), store=None, checker=None,  # type: ignore[arg-type]
                   new_pool=lambda: second)
    bot._supervise("workers", bot._run_workers)
    try:
        await asyncio.sleep(0.5)
        assert bot.scheduler.workers_down  # /stylize refuses at once meanwhile
        waiting = job(1)
        bot.scheduler.restore([waiting])  # a job from before the restart waits
        for _ in range(100):
            if bot.pool is second and bot.scheduler.pool_ready:
                break
            await asyncio.sleep(0.1)
        assert bot.pool is second and bot.scheduler.pool is second and not bot.scheduler.workers_down
        assert waiting.job_id in second.handles  # and runs on the new pool
    finally:
        bot._shut_down = True
        for task in bot._tasks:
            task.cancel()
        await bot.close()


async def test_healthz_turns_unhealthy_only_when_a_shard_has_been_down_for_a_minute():
    from bot.app.client import StyleBot
    from bot.config import Config
    from bot.core.shards import ShardWatch

    now = [100.0]
    bot = StyleBot(Config(), pool=ManualPool(), store=None, checker=None)  # type: ignore[arg-type]
    bot.shard_watch = ShardWatch(clock=lambda: now[0])
    bot.shard_watch.expect([0, 1])
    for shard_id in (0, 1):
        bot.shard_watch.connected(shard_id)
    try:
        assert (await bot.health_checks())["gateway"]["ok"]
        bot.shard_watch.disconnected(1)
        now[0] += 30
        gateway = (await bot.health_checks())["gateway"]
        assert gateway["ok"], gateway  # reconnecting for 30 s: not an outage yet
        assert [(s["id"], s["connected"], s["down_for_s"]) for s in gateway["shards"]] == [(0, True, None),
                                                                                          (1, False, 30.0)]
        now[0] += 31
        assert not (await bot.health_checks())["gateway"]["ok"]  # /healthz answers 503
        bot.shard_watch.connected(1)
        assert (await bot.health_checks())["gateway"]["ok"]
    finally:
        await bot.close()
