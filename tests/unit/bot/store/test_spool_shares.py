"""Each server's share of the spool: one server cannot fill the disk for the others.

The attack this guards against: results that cannot be delivered (the channel deleted, DMs
closed) used to keep all their pictures for the whole retention, and nothing pushed them out.
Now an undeliverable job drops its inputs at once, what it keeps is evictable, and a server
over its share (``server_share`` of ``spool_max_bytes``) loses its own oldest evictable files,
then is refused (:class:`ServerSpoolFull`); other servers go on.
"""

from __future__ import annotations

import itertools
import sqlite3

import pytest

from bot.core.job import Job, JobState
from bot.service.ledger import Ledger
from bot.store.schema import SCHEMA_VERSION
from bot.store.job_store import JobStore
from bot.store.errors import PicturesGone, ServerSpoolFull, SpoolFull
from nst_core.params import StylizeParams
from nst_core.pool.base import Finished

pytestmark = pytest.mark.timeout(30)

_ids = itertools.count(1)

CAP = 100_000  # spool_max_bytes; with a share of 0.1 each server may hold 10_000 bytes
SHARE = 10_000
A, B, C = 101, 202, 303  # servers


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(guild: int | None, size: int = 2000, user: int = 1) -> Job:
    return Job(job_id=f"{next(_ids):010x}", user_id=user, channel_id=5, guild_id=guild, application_id=7,
               interaction_token="tok", token_created_at=1000.0, upload_limit=8 << 20,
               params=StylizeParams(preset="fast", seed=3), content=b"c" * size, style=b"s" * size,
               style_label="waves")


def finished(j: Job, size: int = 500) -> Finished:
    return Finished(j.job_id, b"R" * size, {"history": []}, (), "cpu0", 1.0)


@pytest.fixture
def clock():
    return Clock()


def make_store(tmp_path, clock, **kwargs) -> JobStore:
    kwargs = {"spool_max_bytes": CAP, "server_share": 0.1, "retention_s": 7 * 86400, "reuse_s": 3600, **kwargs}
    return JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool", clock=clock, **kwargs)


@pytest.fixture
async def store(tmp_path, clock):
    s = make_store(tmp_path, clock)
    await s.open()
    yield s
    await s.close()


async def to_the_end(store: JobStore, j: Job, *, delivered: bool, result: int = 500) -> None:
    """Take an accepted job through its life the way delivery does: a result, then a send that
    lands (delivered, pictures kept for the buttons) or that every route refuses (undeliverable)."""
    ledger = Ledger(store, clock=store.clock)
    ledger.job_started(j)
    await ledger.save_result(j, finished(j, result))
    await ledger.sending(j, "interaction")
    if delivered:
        await ledger.sent(j, "interaction", 99)
    else:
        await ledger.unsent(j)


async def run_job(store: JobStore, j: Job, *, delivered: bool, result: int = 500) -> None:
    await Ledger(store, clock=store.clock).accept(j)
    await to_the_end(store, j, delivered=delivered, result=result)


def files(store: JobStore, j: Job) -> list[str]:
    folder = store.spool_dir / j.job_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_one_server_with_undeliverable_results_cannot_fill_the_spool_for_the_others(store, clock):
    # Server A sends job after job whose results can never be delivered; before the fix each
    # kept 4_000 bytes of inputs (and its result) for the whole retention: 40 of them would be
    # 180_000 bytes, far over the 100_000 cap. Server B keeps working all along.
    a_jobs, b_jobs = [], []
    for _ in range(40):
        clock.now += 10
        a = job(A)
        await run_job(store, a, delivered=False)
        assert (await store.get(a.job_id)).state is JobState.UNDELIVERABLE
        assert files(store, a) in ([], ["result.json", "result.png"])  # its inputs went at once
        assert "content.img" not in files(store, a_jobs[-1]) if a_jobs else True
        a_jobs.append(a)
        b = job(B, size=500)
        await run_job(store, b, delivered=True)  # never refused because of A
        b_jobs.append(b)
        assert await store.server_usage(A) <= SHARE and store.spool_bytes <= CAP
    # A's oldest leftovers made room for its newer jobs; the newest are still there
    assert files(store, a_jobs[0]) == [] and files(store, a_jobs[-1]) == ["result.json", "result.png"]
    await store.kept_pictures(b_jobs[-1].job_id)  # B's recent pictures are kept for its buttons

    # Now A fills its share with work that is still waiting: its own leftovers go first...
    waiting = [job(A), job(A)]
    for w in waiting:
        await Ledger(store).accept(w)
    assert SHARE - 1000 < await store.server_usage(A) <= SHARE
    # ...and once only waiting work is left, A is refused, its waiting jobs untouched.
    with pytest.raises(ServerSpoolFull) as refused:
        await Ledger(store).accept(job(A))
    assert (refused.value.guild_id, refused.value.share, refused.value.needed) == (A, SHARE, 4000)
    assert refused.value.used == await store.server_usage(A)
    for w in waiting:
        assert files(store, w) == ["content.img", "style.img"]
        assert (await store.get(w.job_id)).state is JobState.WAITING
    await Ledger(store).accept(job(B))  # B still goes on
    await Ledger(store).accept(job(C))  # and so does a third server


async def test_an_undeliverable_jobs_inputs_go_at_once_and_its_result_only_at_the_retention(store, clock):
    j = job(A)
    await run_job(store, j, delivered=False)
    assert files(store, j) == ["result.json", "result.png"]
    result_bytes = sum((store.spool_dir / j.job_id / n).stat().st_size for n in ("result.json", "result.png"))
    assert await store.server_usage(A) == result_bytes == store.spool_bytes
    assert (await store.load_result(j.job_id)).image_png == b"R" * 500  # still there for the operator
    clock.now += 7 * 86400 + 1
    assert await store.purge() == 1
    assert files(store, j) == [] and await store.server_usage(A) == 0 and store.spool_bytes == 0


async def test_a_server_over_its_share_loses_its_own_oldest_kept_pictures_first(store, clock):
    other = job(B)
    await run_job(store, other, delivered=True)  # the oldest kept pictures of all
    clock.now += 10
    first, second = job(A), job(A)
    await run_job(store, first, delivered=True)
    clock.now += 10
    await run_job(store, second, delivered=True)  # A holds 2 x (4_000 + result) of its 10_000
    clock.now += 10
    await Ledger(store).accept(job(A))  # 4_000 more: A's own oldest pictures make room
    with pytest.raises(PicturesGone):
        await store.kept_pictures(first.job_id)
    await store.kept_pictures(second.job_id)
    await store.kept_pictures(other.job_id)  # older, but another server's: untouched
    assert await store.server_usage(A) <= SHARE


async def test_leftovers_of_undeliverable_results_go_before_kept_pictures(store, clock):
    kept = job(A, size=1000)
    await run_job(store, kept, delivered=True)  # 2_000 + result, the older
    clock.now += 10
    leftovers = []
    for _ in range(3):
        clock.now += 10
        j = job(A, size=1000)
        await run_job(store, j, delivered=False, result=1500)
        leftovers.append(j)
    clock.now += 10
    await Ledger(store).accept(job(A))  # 4_000 more than A's 10_000 share allows
    await store.kept_pictures(kept.job_id)  # still kept: the leftovers went first, oldest first
    assert files(store, leftovers[0]) == [] and files(store, leftovers[-1]) == ["result.json", "result.png"]


async def test_the_whole_spool_full_pushes_out_anyones_oldest_but_never_waiting_work(tmp_path, clock):
    # 16_000 bytes of spool, 10_000 for each server: three servers can fill it within their shares
    async with make_store(tmp_path, clock, spool_max_bytes=16_000, server_share=0.625) as s:
        old = job(A)
        await run_job(s, old, delivered=True)
        clock.now += 10
        waiting = job(B)
        await Ledger(s).accept(waiting)
        clock.now += 10
        newer = job(C)
        await run_job(s, newer, delivered=True)
        clock.now += 10
        await Ledger(s).accept(job(C))  # C is within its share, but the spool is not: the oldest go (A's)
        with pytest.raises(PicturesGone):
            await s.kept_pictures(old.job_id)
        await s.kept_pictures(newer.job_id)
        big = job(A, size=4100)  # 8_200: A holds nothing now, but only C's kept pictures could go
        with pytest.raises(SpoolFull) as refused:  # within A's share, over the whole cap: refused...
            await Ledger(s).accept(big)
        assert not isinstance(refused.value, ServerSpoolFull)
        await s.kept_pictures(newer.job_id)  # ...and nothing was dropped in vain
        assert files(s, waiting) == ["content.img", "style.img"]


async def test_saved_styles_count_in_their_servers_share_and_go_oldest_first_within_it(store, clock):
    await store.save_style(B, 9, "theirs.png", b"t" * 4000, ttl_s=86400)  # the oldest of all
    for user in (1, 2, 3):
        clock.now += 1
        await store.save_style(A, user, f"{user}.png", bytes([user]) * 4000, ttl_s=86400)
    assert await store.saved_style(A, 1) is None  # the third pushed out A's oldest
    assert await store.saved_style_label(A, 2) == "2.png" and await store.saved_style_label(A, 3) == "3.png"
    assert await store.saved_style(B, 9) == ("theirs.png", b"t" * 4000)  # another server's: untouched
    assert await store.server_usage(A) == 8000 and await store.server_usage(B) == 4000

    clock.now += 1
    await Ledger(store).accept(job(A))  # a job of 4_000 counts in the same share: the next oldest goes
    assert await store.saved_style(A, 2) is None and await store.saved_style_label(A, 3) == "3.png"
    assert await store.server_usage(A) == 8000

    with pytest.raises(ServerSpoolFull):  # one picture larger than a server's share is refused...
        await store.save_style(C, 1, "huge.png", b"h" * (SHARE + 1), ttl_s=86400)
    assert await store.saved_style_label(A, 3) == "3.png"  # ...without pushing anything out
    # One server saving many styles does not push out another's (there is no common cap any more).
    for user in range(10, 13):
        await store.save_style(C, user, "c.png", b"c" * 3000, ttl_s=86400)
    assert await store.saved_style(B, 9) == ("theirs.png", b"t" * 4000)


async def test_a_servers_usage_is_recorded_and_survives_a_restart(tmp_path, clock):
    async with make_store(tmp_path, clock) as s:
        waiting, kept, lost = job(A), job(A, size=700), job(A, size=300)
        await Ledger(s).accept(waiting)
        await run_job(s, kept, delivered=True)
        await run_job(s, lost, delivered=False)
        await s.save_style(A, 1, "mine.png", b"m" * 321, ttl_s=86400)
        await run_job(s, job(B, size=100), delivered=True)
        await run_job(s, job(None, size=50), delivered=True)  # no server: a bucket of its own
        usage = {g: await s.server_usage(g) for g in (A, B, None)}
        total = s.spool_bytes
    assert usage[A] == 4000 + 1400 + 2 * (500 + len(b'{"summary": {"history": []}, "notes": [], "worker": "cpu0", '
                                                    b'"seconds": 1.0}')) + 321
    assert usage[A] + usage[B] + usage[None] == total

    async with make_store(tmp_path, clock) as s:
        assert {g: await s.server_usage(g) for g in (A, B, None)} == usage and s.spool_bytes == total
        assert files(s, lost) == ["result.json", "result.png"]  # kept at open until the retention
        await s.kept_pictures(kept.job_id)
        clock.now += 7 * 86400 + 1
        await s.purge()
        assert files(s, lost) == [] and files(s, kept) == []
        assert await s.server_usage(A) == 4000  # only the waiting job is left
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:  # the sizes are in the records themselves
        assert db.execute("SELECT spool_bytes FROM jobs WHERE job_id = ?", (waiting.job_id,)).fetchone()[0] == 4000


async def test_a_style_that_cannot_be_saved_leaves_the_members_earlier_one(store, clock):
    await store.save_style(A, 1, "mine.png", b"m" * 3000, ttl_s=86400)
    await Ledger(store).accept(job(A, size=3000))  # 6_000 of work still owed: not evictable
    clock.now += 1
    with pytest.raises(ServerSpoolFull):  # 6_000 + 4_500 would pass the share even without mine.png
        await store.save_style(A, 1, "bigger.png", b"b" * 4500, ttl_s=86400)
    assert await store.saved_style(A, 1) == ("mine.png", b"m" * 3000)
    await store.save_style(A, 1, "other.png", b"o" * 4000, ttl_s=86400)  # fits once mine.png goes: replaced
    assert await store.saved_style(A, 1) == ("other.png", b"o" * 4000) and await store.server_usage(A) == 10_000


async def test_a_version_4_database_gets_its_sizes_from_the_files(tmp_path, clock):
    async with make_store(tmp_path, clock) as s:
        waiting, kept, lost = job(A), job(A, size=700), job(B, size=300)
        await Ledger(s).accept(waiting)
        await run_job(s, kept, delivered=True)
        await run_job(s, lost, delivered=True)
        await s.save_style(A, 1, "mine.png", b"m" * 321, ttl_s=86400)
        # as version 4 left it: an undeliverable job that kept its inputs
        await s.update(lost.job_id, state="undeliverable", kept_until=None)
        (s.spool_dir / lost.job_id / "content.img").write_bytes(b"c" * 300)
        (s.spool_dir / lost.job_id / "style.img").write_bytes(b"s" * 300)
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript("""
        DROP INDEX jobs_guild_bytes;
        ALTER TABLE jobs DROP COLUMN spool_bytes;
        ALTER TABLE saved_styles DROP COLUMN bytes;
        PRAGMA user_version = 4;
    """)
    db.close()

    def size(j: Job) -> int:
        return sum(p.stat().st_size for p in (tmp_path / "spool" / j.job_id).iterdir())

    async with make_store(tmp_path, clock) as s:
        assert files(s, lost) == ["result.json", "result.png"]  # its inputs went at open
        assert await s.server_usage(A) == size(waiting) + size(kept) + 321 == 4000 + size(kept) + 321
        assert await s.server_usage(B) == size(lost)
        assert s.spool_bytes == size(waiting) + size(kept) + size(lost) + 321
        assert await s.saved_style(A, 1) == ("mine.png", b"m" * 321)
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert db.execute("SELECT bytes FROM saved_styles").fetchone()[0] == 321
    finally:
        db.close()


async def test_the_share_must_be_a_part_of_the_spool(tmp_path):
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            JobStore(tmp_path / "db", tmp_path / "spool", server_share=bad)
