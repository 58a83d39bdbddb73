"""The job store, restart recovery (with stand-ins for Discord and the pool), metrics and health."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import discord
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.delivery import outbox

from bot.render import embeds, words
from bot.config import ConfigError, DeliveryConfig
from bot.config_loading import load_config
from bot.health import HealthServer, Metrics
from bot.core.job import Job, JobState
from bot.service.ledger import Ledger
from bot.delivery.outbox import Outbox, Sent, _Unchecked
from bot.app.recovery import MAX_RESTARTS, old_order, recover
from bot.core.line import FairLine
from bot.service.scheduler import Scheduler
from bot.delivery.status import StatusBoard
from bot.store.job_store import JobStore
from bot.store.errors import SpoolFull
from bot.core.refusals import UploadProblem
from bot.intake.uploads import check_attachment
from nst_core.params import StylizeParams
from nst_core.pool.base import Finished

pytestmark = pytest.mark.timeout(30)

_ids = itertools.count(1)


def job(user: int = 1, size: int = 100, **fields) -> Job:
    fields = {"token_created_at": 1000.0, **fields}
    return Job(job_id=f"{next(_ids):010x}", user_id=user, channel_id=5, guild_id=6, application_id=7,
               interaction_token="tok", upload_limit=8 << 20,
               params=StylizeParams(preset="fast", seed=3, strength=1.5), content=b"c" * size, style=b"s" * size,
               style_label="waves", **fields)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path):
    s = JobStore(tmp_path / "db" / "jobs.sqlite3", tmp_path / "spool", spool_max_bytes=10_000, retention_s=3600)
    await s.open()
    yield s
    await s.close()


FINISHED = Finished("x", b"\x89PNG result", {"final": {"style": 1.0}, "history": []}, ("a note",), "cpu0", 2.5)


# --------------------------------------------------------------------------- the store


async def test_accepted_jobs_survive_a_reopen_with_their_pictures(tmp_path, store):
    a, b = job(user=1), job(user=2)
    await store.accept(a)
    await store.accept(b)
    assert a.seq < b.seq
    assert (store.spool_dir / a.job_id / "content.img").read_bytes() == a.content
    assert store.spool_bytes == 400
    await store.close()

    again = JobStore(store.db_path, store.spool_dir)
    await again.open()
    try:
        rows = await again.open_jobs()
        assert [r.job_id for r in rows] == [a.job_id, b.job_id]
        first = rows[0]
        assert first.state is JobState.WAITING
        for name in ("user_id", "channel_id", "guild_id", "application_id", "interaction_token", "token_created_at",
                     "upload_limit", "params", "style_label", "preset", "created_at"):
            assert getattr(first, name) == getattr(a, name), name
        assert await again.load_inputs(a.job_id) == (a.content, a.style, b"")
        assert again.spool_bytes == 400
    finally:
        await again.close()


async def test_updates_land_in_order_and_results_are_kept_beside_the_inputs(store):
    j = job()
    await store.accept(j)
    store.note(j.job_id, position=3)
    store.note(j.job_id, state="running", started_at=5.0, attempts=1, position=None)
    await store.save_result(j.job_id, FINISHED, finished_at=9.0)
    row = await store.get(j.job_id)
    assert (row.state, row.attempts, row.position, row.started_at, row.finished_at) == (JobState.DONE, 1, None, 5.0, 9.0)
    assert sorted(p.name for p in (store.spool_dir / j.job_id).iterdir()) == [
        "content.img", "result.json", "result.png", "style.img"]  # the inputs stay for remixes
    result = await store.load_result(j.job_id)
    assert (result.image_png, result.summary, result.notes, result.worker, result.seconds) == (
        FINISHED.image_png, FINISHED.summary, FINISHED.notes, FINISHED.worker, FINISHED.seconds)

    await store.update(j.job_id, state="delivering", route="interaction")
    assert [r.job_id for r in await store.open_jobs()] == [j.job_id]
    await store.update(j.job_id, remove_files=True, state="delivered", message_id=42, interaction_token="")
    row = await store.get(j.job_id)
    assert (row.state, row.message_id, row.route, row.interaction_token) == (JobState.DELIVERED, 42, "interaction", "")
    assert not (store.spool_dir / j.job_id).exists() and store.spool_bytes == 0
    assert await store.open_jobs() == []


async def test_failed_jobs_stay_open_until_their_notice_is_sent(store):
    j = job()
    await store.accept(j)
    store.note(j.job_id, remove_files=True, state="failed", failure="Boom.", failure_kind="error")
    [row] = await store.open_jobs()
    assert row.state is JobState.FAILED and row.failure == "Boom." and not (store.spool_dir / j.job_id).exists()
    await store.update(j.job_id, state="notified")
    assert await store.open_jobs() == []
    assert await store.counts() == {"notified": 1}


async def test_the_spool_cap_refuses_and_discard_forgets(store):
    big = job(size=4000)
    await store.accept(big)
    with pytest.raises(SpoolFull):
        await store.accept(job(size=2000))
    await store.discard(big.job_id)
    assert await store.get(big.job_id) is None and store.spool_bytes == 0
    await store.accept(job(size=2000))


async def test_bad_fields_and_ids_are_refused(store):
    j = job()
    await store.accept(j)
    with pytest.raises(ValueError):
        await store.update(j.job_id, state="teleported")
    with pytest.raises(ValueError):
        await store.update(j.job_id, user_id=9)  # not updatable
    with pytest.raises(ValueError):
        store.job_dir("../etc")


async def test_stray_files_are_removed_on_open(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool")
    await s.open()
    kept, ended = job(), job()
    await s.accept(kept)
    await s.accept(ended)
    await s.update(ended.job_id, state="cancelled")  # its files should have gone with it
    await s.close()
    (tmp_path / "spool" / "ffffffffff").mkdir()  # a crash between writing the files and the record
    (tmp_path / "spool" / "ffffffffff" / "content.img").write_bytes(b"x")
    s = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool")
    await s.open()
    try:
        assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == [kept.job_id]
        assert s.spool_bytes == 200
    finally:
        await s.close()


async def test_purge_keeps_what_is_open_or_recent(tmp_path):
    clock = Clock()
    s = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool", retention_s=3600, clock=clock)
    await s.open()
    try:
        old_done, old_owed, old_waiting, recent = job(), job(), job(), job()
        for j in (old_done, old_owed, old_waiting, recent):
            await s.accept(j)
        await s.update(old_done.job_id, state="delivered")
        await s.update(old_owed.job_id, state="failed")
        clock.now += 7200
        await s.update(recent.job_id, state="cancelled")
        assert await s.purge() == 1
        kept = {j.job_id for j in (old_done, old_owed, old_waiting, recent) if await s.get(j.job_id) is not None}
        assert kept == {old_owed.job_id, old_waiting.job_id, recent.job_id}
        await s.ping()
    finally:
        await s.close()


# --------------------------------------------------------------------------- the line after a restart


def test_restored_jobs_go_first_in_their_old_order():
    line: FairLine[str] = FairLine()
    line.push("bob", "new-b1")
    line.push_front("alice", "old-a1")
    line.push_front("alice", "old-a2")
    line.push_front("carol", "old-c1")
    assert line.order() == ["old-a1", "old-a2", "old-c1", "new-b1"]
    assert line.waiting_of("alice") == 2 and len(line) == 4 and "old-c1" in line
    assert line.remove("old-a2") and line.position("old-c1") == 2
    assert [line.pop(), line.pop(), line.pop()] == ["old-a1", "old-c1", "new-b1"]


def stored(state: str, seq: int, position: int | None = None, started_at: float | None = None) -> Job:
    return job(state=JobState(state), seq=seq, position=position, started_at=started_at)


def test_old_order_puts_running_jobs_first_then_waiting_ones_by_place():
    rows = [stored("waiting", 1, position=3), stored("running", 2, started_at=50.0), stored("waiting", 3, position=1),
            stored("waiting", 4), stored("running", 5, started_at=40.0), stored("waiting", 6, position=2)]
    assert [r.seq for r in sorted(rows, key=old_order)] == [5, 2, 3, 6, 1, 4]


class IdlePool:
    """A pool that never becomes ready: jobs stay in line."""

    capacity = free_slots = workers_alive = 1


class Listener:
    def __getattr__(self, name):
        return lambda *args: None


class RecordingMessenger:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.befores: dict[str, bytes | None] = {}  # the content picture given for before | after
        self.tasks: list[asyncio.Task] = []
        self.outbox = self  # deliveries go through the messenger's outbox

    def prepare_restored(self, j: Job) -> None:
        self.calls.append(("prepare", j.job_id))

    def spawn(self, coro, j: Job) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def announce_restored(self, j: Job) -> None:
        self.calls.append(("announce", j.job_id, j.restarts))

    async def deliver_notice(self, j: Job, reason: str, *, unsure_route=None) -> None:
        self.calls.append(("notice", j.job_id, reason, unsure_route))

    async def deliver_result(self, j: Job, event, *, unsure_route=None, before=None) -> None:
        self.calls.append(("result", j.job_id, event.image_png, unsure_route))
        self.befores[j.job_id] = before

    async def finish_status(self, j: Job, line: str) -> None:
        self.calls.append(("status", j.job_id, line))


async def test_recover_restores_the_line_and_resumes_deliveries(store):
    waiting, running, crashy, finished, sending, owed = (job(user=u) for u in (1, 2, 3, 4, 5, 6))
    compared = job(user=7, compare=True)
    for j in (waiting, running, crashy, finished, sending, owed, compared):
        await store.accept(j)
    await store.save_result(compared.job_id, FINISHED)
    store.note(waiting.job_id, position=1)
    store.note(running.job_id, state="running", started_at=10.0, attempts=1)
    store.note(crashy.job_id, restarts=MAX_RESTARTS)
    await store.save_result(finished.job_id, FINISHED)
    await store.save_result(sending.job_id, FINISHED)
    await store.update(sending.job_id, state="delivering", route="channel")
    await store.update(owed.job_id, remove_files=True, state="notifying", failure="No luck.", route="dm")

    ledger = Ledger(store)
    scheduler = Scheduler(IdlePool(), Listener(), per_user_waiting=1, queue_max=1, max_pixels=10_000)
    messenger = RecordingMessenger()
    report = await recover(store, ledger, scheduler, messenger)
    await asyncio.gather(*messenger.tasks)

    assert report.restored == [running.job_id, waiting.job_id]
    assert [j.job_id for j in scheduler.line.order()] == [running.job_id, waiting.job_id]  # limits do not apply
    assert scheduler.get(running.job_id).content == running.content
    assert scheduler.get(running.job_id).restarts == 1 and scheduler.get(running.job_id).attempts == 1
    calls = messenger.calls
    assert ("announce", running.job_id, 1) in calls and ("announce", waiting.job_id, 1) in calls
    assert ("result", finished.job_id, FINISHED.image_png, None) in calls
    assert ("result", sending.job_id, FINISHED.image_png, "channel") in calls  # looked for before resending
    assert ("notice", owed.job_id, "No luck.", "dm") in calls
    # a result asked for with before | after still gets it after a restart
    assert messenger.befores[compared.job_id] == compared.content and messenger.befores[finished.job_id] is None
    assert [c for c in calls if c[:2] == ("status", finished.job_id)]  # its status message is finished too
    [crash_notice] = [c for c in calls if c[:2] == ("notice", crashy.job_id)]
    assert f"restarted {MAX_RESTARTS} times" in crash_notice[2]
    await store.flush()
    rows = {j.job_id: await store.get(j.job_id) for j in (running, crashy)}
    assert rows[running.job_id].state is JobState.WAITING and rows[running.job_id].restarts == 1
    assert rows[crashy.job_id].state is JobState.FAILED and not (store.spool_dir / crashy.job_id).exists()


# --------------------------------------------------------------------------- small pieces


def stamped(kwargs: dict, kind: str, job_id: str) -> list[dict]:
    """The embeds of a message as Discord returns them, after the outbox marked it."""
    return [e.to_dict() for e in [outbox._stamp(kwargs, kind, job_id)["embed"]]]


def test_delivery_markers_tell_results_notices_and_status_messages_apart():
    result = stamped({"content": words.result_content(9, "ab12", late=True),
                      "embed": embeds.result_embed({"final": {}}, job_id="ab12", preset="fast", seed=1, strength=1.0,
                                                   preserve_colors=False, style_label="waves")}, "result", "ab12")
    notice = stamped({"content": words.failure_notice(9, "ab12", "Oops.")}, "notice", "ab12")
    assert outbox.is_delivery_of(result, "ab12", "result") and not outbox.is_delivery_of(result, "ab12", "notice")
    assert result[0]["footer"]["text"] == "stylebot result ab12 · style waves"  # the footer still names the style
    assert outbox.is_delivery_of(notice, "ab12", "notice") and not outbox.is_delivery_of(notice, "ab12f", "notice")
    assert not outbox.is_delivery_of(notice, "cd34", "notice")
    assert not outbox.is_delivery_of(None, "ab12", "result")  # a status message has no embed


def test_the_marker_does_not_depend_on_what_users_read(monkeypatch):
    # Rewording every sentence of a delivery must not break recognising it after a restart.
    monkeypatch.setattr(words, "_READY", "voilà, c'est prêt")
    monkeypatch.setattr(words, "_DID_NOT_FINISH", "n'a pas abouti :")
    notice = stamped({"content": words.failure_notice(9, "ab12", "Hélas.")}, "notice", "ab12")
    assert outbox.is_delivery_of(notice, "ab12", "notice")


def test_long_thin_images_are_refused_for_their_shape():
    with pytest.raises(UploadProblem, match=r"20000×20 pixels, too long and thin"):
        check_attachment("content image", "strip.png", "image/png", 1000, 20000, 20, max_bytes=10**6,
                         max_pixels=10**9, max_aspect=10)
    check_attachment("content image", "pano.png", "image/png", 1000, 4000, 500, max_bytes=10**6, max_pixels=10**9,
                     max_aspect=10)


def test_new_settings_load_from_the_environment():
    config = load_config(None, env={"NSTBOT_HEALTH__PORT": "9100", "NSTBOT_HEALTH__HOST": "0.0.0.0",
                                    "NSTBOT_DELIVERY__RETRIES": "4", "NSTBOT_STORAGE__SPOOL_MAX_MB": "512",
                                    "NSTBOT_POOL__RETRIES": "0"})
    assert (config.health.port, config.health.host, config.delivery.retries) == (9100, "0.0.0.0", 4)
    assert config.storage.spool_max_mb == 512.0 and config.pool.retries == 0
    assert config.storage.spool_dir == config.storage.state_dir / "spool"


def test_each_servers_share_of_the_spool_is_a_setting():
    assert load_config(None, env={}).storage.server_share == 0.1
    assert load_config(None, env={"NSTBOT_STORAGE__SERVER_SHARE": "0.25"}).storage.server_share == 0.25
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match=r"storage.server_share must be a number from 0.01 to 1"):
            load_config(None, env={"NSTBOT_STORAGE__SERVER_SHARE": bad})


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_prometheus_text_with_every_series_from_the_start():
    live = {"queue_length": 3, "jobs_running": 1, "workers_alive": 2, "worker_restarts": 4, "spool_bytes": 99}
    metrics = Metrics(live=lambda: live)
    metrics.job_ended("finished", 12.0)
    metrics.job_ended("worker_died")
    metrics.delivered("dm")
    values = samples(metrics.render().decode())
    assert values[("stylebot_queue_length", ())] == 3 and values[("stylebot_worker_restarts_total", ())] == 4
    assert values[("stylebot_jobs_total", (("outcome", "finished"),))] == 1
    assert values[("stylebot_jobs_total", (("outcome", "timeout"),))] == 0
    assert values[("stylebot_deliveries_total", (("path", "dm"),))] == 1
    assert values[("stylebot_deliveries_total", (("path", "interaction"),))] == 0
    assert values[("stylebot_job_duration_seconds_count", ())] == 1
    assert values[("stylebot_job_duration_seconds_bucket", (("le", "20.0"),))] == 1


async def test_health_server_answers_503_until_every_check_passes():
    state = {"gateway": {"ok": False}, "store": {"ok": True}}

    async def check():
        return state

    server = HealthServer("127.0.0.1", 0, Metrics(), check)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.bound_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/healthz") as resp:
                assert resp.status == 503 and (await resp.json())["checks"]["gateway"] == {"ok": False}
            state["gateway"] = {"ok": True, "latency_ms": 3}
            async with session.get(base + "/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["ok"]
            async with session.get(base + "/metrics") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
                assert "stylebot_jobs_total" in await resp.text()
    finally:
        await server.stop()


# --------------------------------------------------------------------------- exactly once, without Discord


def messenger(**delivery) -> Outbox:
    config = DeliveryConfig(**{"timeout_s": 0.2, "retries": 1, "backoff_s": 0.01, **delivery})
    board = StatusBoard(object(), edit_interval_s=1.0, interaction_ttl_s=900.0, interaction_margin_s=60.0)
    return Outbox(object(), Ledger(), board, delivery=config)


def fresh_job(state: JobState = JobState.DONE) -> Job:
    return job(token_created_at=time.time(), state=state)  # the interaction route is open


async def test_an_attempt_that_timed_out_but_landed_is_not_sent_again():
    m, sends = messenger(), []

    async def send(j, route, kwargs):
        sends.append(route)
        await asyncio.sleep(5)  # Discord took it, but the answer never came

    async def find(j, route, kind):
        return 99 if sends else None

    m._send, m.find_delivered = send, find
    sent = await m._deliver(fresh_job(), lambda route: {"content": "x"}, "result")
    assert sent == Sent("interaction", 99, found=True) and sends == ["interaction"]


async def test_server_errors_fall_back_to_the_channel_after_looking():
    m, sends, looked = messenger(), [], []

    class ServerError(discord.HTTPException):
        def __init__(self):
            self.status, self.code, self.text = 503, 0, "down"

    async def send(j, route, kwargs):
        sends.append(route)
        if route == "interaction":
            raise ServerError()
        return 7

    async def find(j, route, kind):
        looked.append(route)
        return None

    m._send, m.find_delivered = send, find
    sent = await m._deliver(fresh_job(), lambda route: {"content": "x"}, "result")
    assert sent == Sent("channel", 7) and sends == ["interaction", "channel"] and looked == ["interaction"]


async def test_when_discord_cannot_even_be_asked_nothing_is_resent_now_but_later():
    m, sends = messenger(redeliver_after_s=60), []

    async def send(j, route, kwargs):
        sends.append(route)
        raise aiohttp.ClientConnectionError("connection reset")

    async def find(j, route, kind):
        raise _Unchecked(passing=True)

    m._send, m.find_delivered = send, find
    assert await m._deliver(fresh_job(JobState.FAILED), lambda route: {"content": "x"}, "notice") is None
    assert sends == ["interaction"] and len(m._timers) == 1  # one try, then a later chain is planned
    m.cancel_timers()
    assert not m._timers
