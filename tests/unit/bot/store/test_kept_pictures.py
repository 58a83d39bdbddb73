"""The job store's part in playing with results: pictures kept after delivery for the buttons,
room made for new work, expiry, lineage, two styles, saved styles, and the v3 → v4 upgrade."""

from __future__ import annotations

import itertools
import sqlite3

import pytest

from bot.render import words
from bot.core.job import Job, JobState
from bot.service.ledger import Ledger
from bot.store.schema import SCHEMA_VERSION
from bot.store.job_store import JobStore
from bot.store.errors import PicturesGone, ServerSpoolFull, SpoolFull
from nst_core.params import StylizeParams
from nst_core.pool.base import Finished

pytestmark = pytest.mark.timeout(30)

_ids = itertools.count(1)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(size: int = 100, **fields) -> Job:
    fields = {"params": StylizeParams(preset="fast", seed=3), **fields}
    return Job(job_id=f"{next(_ids):010x}", user_id=1, channel_id=5, guild_id=6, application_id=7,
               interaction_token="tok", token_created_at=1000.0, upload_limit=8 << 20,
               content=b"c" * size, style=b"s" * size, style_label="waves", **fields)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def store(tmp_path, clock):
    s = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool", spool_max_bytes=2_000, retention_s=7 * 86400,
                 reuse_s=3600, clock=clock)
    await s.open()
    yield s
    await s.close()


async def deliver(store: JobStore, j: Job, result: bytes = b"R" * 100) -> None:
    """Take ``j`` through its life to delivered, the way the ledger does."""
    ledger = Ledger(store, clock=store.clock)
    await ledger.accept(j)
    ledger.job_started(j)
    await ledger.save_result(j, Finished(j.job_id, result, {"history": []}, (), "cpu0", 1.0))
    await ledger.sending(j, "interaction")
    await ledger.sent(j, "interaction", 99)


async def test_a_delivered_jobs_pictures_stay_for_the_buttons_until_they_expire(store, clock):
    j = job(parent_id="00000000aa", remix="again")
    await deliver(store, j)
    content, style, style2, result = await store.kept_pictures(j.job_id, result=True)
    row = await store.get(j.job_id)
    assert (content, style, style2, result) == (j.content, j.style, b"", b"R" * 100)
    assert row.state is JobState.DELIVERED and row.kept_until == clock.now + 3600
    assert (row.parent_id, row.remix) == ("00000000aa", "again")  # the record names its parent
    assert store.spool_bytes > 300  # they count in the spool's size

    clock.now += 3601
    await store.purge()
    with pytest.raises(PicturesGone):
        await store.kept_pictures(j.job_id)
    assert not (store.spool_dir / j.job_id).exists() and store.spool_bytes == 0
    assert (await store.get(j.job_id)).kept_until is None


async def test_without_reuse_the_pictures_go_at_delivery(tmp_path, clock):
    async with JobStore(tmp_path / "db", tmp_path / "spool", reuse_s=0, clock=clock) as s:
        j = job()
        await deliver(s, j)
        with pytest.raises(PicturesGone):
            await s.kept_pictures(j.job_id)
        assert not (s.spool_dir / j.job_id).exists()


async def test_new_work_pushes_out_the_oldest_kept_pictures_not_the_other_way_round(store, clock):
    old, newer = job(size=300), job(size=300)
    await deliver(store, old)
    clock.now += 10
    await deliver(store, newer)  # 2 x 700 bytes kept of 2000
    waiting = job(size=400)  # needs 800: the oldest kept pictures make room
    await store.accept(waiting)
    with pytest.raises(PicturesGone):
        await store.kept_pictures(old.job_id)
    await store.kept_pictures(newer.job_id)  # still there
    with pytest.raises(SpoolFull):  # waiting work is never pushed out...
        await store.accept(job(size=1000))
    await store.kept_pictures(newer.job_id)  # ...and kept pictures are not dropped in vain


async def test_a_second_style_is_kept_with_the_job_and_survives_a_reopen(tmp_path, clock):
    j = job(style2=b"t" * 50, style2_label="wave.png", compare=True,
            params=StylizeParams(preset="fast", seed=3, style_blend=(0.7, 0.3)))
    async with JobStore(tmp_path / "db", tmp_path / "spool", clock=clock) as s:
        await Ledger(s).accept(j)
    async with JobStore(tmp_path / "db", tmp_path / "spool", clock=clock) as s:
        [row] = await s.open_jobs()
        assert await s.load_inputs(j.job_id) == (j.content, j.style, j.style2)
        assert (row.style2_label, row.compare, row.blend) == ("wave.png", True, pytest.approx(0.3))
        assert words.styles_text(row.style_label, row.style2_label, row.blend) == "waves 70% + wave.png 30%"
        row.content, row.style, row.style2 = await s.load_inputs(j.job_id)
        assert len(row.spec(max_pixels=10_000).style) == 2  # both styles reach the worker


async def test_kept_pictures_survive_a_restart_and_strays_do_not(tmp_path, clock):
    j = job()
    async with JobStore(tmp_path / "db", tmp_path / "spool", clock=clock) as s:
        await deliver(s, j)
        await s.save_style(6, 1, "mine.png", b"m" * 10, ttl_s=86400)
    (tmp_path / "spool" / "ffffffffff").mkdir()  # a crash between writing the files and the record
    async with JobStore(tmp_path / "db", tmp_path / "spool", clock=clock) as s:
        await s.kept_pictures(j.job_id)
        assert await s.saved_style(6, 1) == ("mine.png", b"m" * 10)
        assert not (tmp_path / "spool" / "ffffffffff").exists()


async def test_a_saved_style_belongs_to_one_member_in_one_server_and_expires(store, clock):
    expires = await store.save_style(6, 1, "mine.png", b"m" * 10, ttl_s=86400)
    assert expires == clock.now + 86400
    assert await store.saved_style(6, 1) == ("mine.png", b"m" * 10)
    assert await store.saved_style(7, 1) is None  # another server: not there
    assert await store.saved_style(6, 2) is None  # another member: not there
    await store.save_style(6, 1, "other.png", b"o" * 20, ttl_s=86400)  # a new one replaces it
    assert await store.saved_style(6, 1) == ("other.png", b"o" * 20) and store.spool_bytes == 20
    clock.now += 86401
    assert await store.saved_style(6, 1) is None
    await store.purge()
    assert store.spool_bytes == 0


async def test_saved_styles_keep_to_their_servers_share_of_the_spool_oldest_first(tmp_path, clock):
    # 2000 bytes of spool, a tenth for each server: 200 bytes (jobs and saved styles together)
    async with JobStore(tmp_path / "db", tmp_path / "spool", spool_max_bytes=2_000, server_share=0.1,
                        clock=clock) as store:
        await store.save_style(6, 1, "a.png", b"a" * 90, ttl_s=86400)
        clock.now += 1
        await store.save_style(7, 1, "b.png", b"b" * 90, ttl_s=86400)  # the same member in another server
        clock.now += 1
        await store.save_style(6, 2, "c.png", b"c" * 90, ttl_s=86400)
        clock.now += 1
        await store.save_style(6, 3, "d.png", b"d" * 90, ttl_s=86400)  # over server 6's share: its oldest goes
        assert await store.saved_style(6, 1) is None
        assert await store.saved_style(7, 1) == ("b.png", b"b" * 90)  # another server's: untouched
        assert await store.saved_style_label(6, 2) == "c.png" and await store.saved_style_label(6, 3) == "d.png"
        with pytest.raises(ServerSpoolFull):  # one picture over a server's share
            await store.save_style(9, 3, "huge.png", b"h" * 201, ttl_s=86400)
        assert await store.server_usage(6) == 180 and store.spool_bytes == 270


async def test_a_remix_is_taken_only_while_its_parent_keeps_its_pictures(store, clock):
    parent = job()
    await deliver(store, parent)
    child = job(parent_id=parent.job_id, remix="again")
    await Ledger(store).accept(child, parent_kept=True)  # kept: taken
    await Ledger(store).forget_pictures(parent)  # deleted while another remix was being made...
    late = job(parent_id=parent.job_id, remix="more")
    with pytest.raises(PicturesGone):  # ...which is then refused, not taken with the original in it
        await Ledger(store).accept(late, parent_kept=True)
    assert await store.get(late.job_id) is None and not (store.spool_dir / late.job_id).exists()


async def test_a_stripped_result_keeps_no_pictures_even_after_a_restart(store, clock):
    j = job()
    ledger = Ledger(store)
    await ledger.accept(j)
    ledger.job_started(j)
    await ledger.save_result(j, Finished(j.job_id, b"R" * 100, {"history": []}, (), "cpu0", 1.0))
    await ledger.strip(j)  # its original was deleted while it was on its way
    await Ledger(store).sent(j, "interaction", 99)  # delivered by a ledger that never heard of it
    with pytest.raises(PicturesGone):
        await store.kept_pictures(j.job_id)
    assert (await store.get(j.job_id)).compare is False


async def test_lineage_and_descendants(store):
    root = job()
    child = job(parent_id=root.job_id, remix="again")
    grandchild = job(parent_id=child.job_id, remix="more")
    for j in (root, child, grandchild):
        await store.accept(j)
    assert [j.job_id for j in await store.lineage(grandchild.job_id)] == [grandchild.job_id, child.job_id,
                                                                           root.job_id]
    assert sorted(await store.descendants(root.job_id)) == sorted([child.job_id, grandchild.job_id])


async def test_a_version_3_database_gains_the_new_columns(tmp_path, clock):
    db = sqlite3.connect(tmp_path / "db")
    db.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
          user_id INTEGER NOT NULL, channel_id INTEGER NOT NULL, guild_id INTEGER, application_id INTEGER NOT NULL,
          interaction_token TEXT NOT NULL, token_created_at REAL NOT NULL, upload_limit INTEGER NOT NULL,
          params TEXT NOT NULL, style_label TEXT NOT NULL, preset TEXT NOT NULL, created_at REAL NOT NULL,
          updated_at REAL NOT NULL, status_message_id INTEGER, position INTEGER,
          attempts INTEGER NOT NULL DEFAULT 0, restarts INTEGER NOT NULL DEFAULT 0, started_at REAL,
          finished_at REAL, worker TEXT, failure TEXT, failure_kind TEXT, cancelled_by INTEGER, notice TEXT,
          route TEXT, message_id INTEGER, delivered_at REAL);
        INSERT INTO jobs (job_id, state, user_id, channel_id, guild_id, application_id, interaction_token,
          token_created_at, upload_limit, params, style_label, preset, created_at, updated_at)
          VALUES ('00000000ab', 'delivered', 1, 5, 6, 7, '', 1.0, 100, '{"preset": "fast"}', 'w', 'fast', 1.0, 1.0);
        PRAGMA user_version = 3;
    """)
    db.close()
    async with JobStore(tmp_path / "db", tmp_path / "spool", clock=clock) as s:
        row = await s.get("00000000ab")
        assert (row.parent_id, row.style2_label, row.compare, row.kept_until) == (None, None, False, None)
        with pytest.raises(PicturesGone):
            await s.kept_pictures("00000000ab")
        await s.save_style(6, 1, "x.png", b"x", ttl_s=10)
    db = sqlite3.connect(tmp_path / "db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
