"""The event book: which jobs are entries, and each entry's picture kept small for the gallery
when its job finishes, or made later from the job's kept result."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.core.event import Entry, StyleEvent
from bot.core.job import Job
from bot.service.events import THUMB_SIDE, EventBook, entry_thumb
from bot.store.job_store import JobStore
from nst_core.params import StylizeParams
from nst_core.pool.base import Finished

pytestmark = pytest.mark.timeout(30)


def png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite3", tmp_path / "spool")
    await s.open()
    yield s
    await s.close()


async def an_entry(store: JobStore, job_id: str) -> tuple[Job, Entry]:
    event = StyleEvent(event_id="e1", guild_id=6, channel_id=5, host_id=1, title="Harbour", style_label="The Scream",
                       library_style="the-scream", preset="fast", per_member=1, closes_at=2e9, created_at=1.0,
                       upload_limit=8 << 20)
    if await store.event("e1") is None:
        await store.add_event(event, None)
    job = Job(job_id=job_id, user_id=2, channel_id=5, guild_id=6, application_id=7, interaction_token="",
              token_created_at=0.0, upload_limit=8 << 20, params=StylizeParams(preset="fast", seed=1), content=b"c",
              style=b"s", style_label="The Scream")
    await store.accept(job)
    return job, Entry(event_id="e1", job_id=job_id, user_id=2, author="bob", entered_at=1.0)


def test_an_entrys_picture_is_kept_as_a_small_jpeg():
    thumb = entry_thumb(png(600, 300))
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.format == "JPEG" and image.size == (THUMB_SIDE, THUMB_SIDE // 2)


async def test_a_finished_entry_keeps_its_picture_and_other_jobs_do_not(store):
    book = EventBook(store)
    job, entry = await an_entry(store, "aaaa000001")
    other, _ = await an_entry(store, "aaaa000002")
    await book.add(entry)
    assert book.event_of(job.job_id) == "e1" and book.event_of(other.job_id) is None
    book.job_finished(job, Finished(job.job_id, png(64, 64), {}))
    book.job_finished(other, Finished(other.job_id, png(64, 64), {}))
    await book.drain(10)
    assert set(await store.thumbs([job.job_id, other.job_id])) == {job.job_id}
    assert (await store.entry(job.job_id)).has_picture
    fresh = EventBook(store)  # after a restart: entries whose job is still open are known again
    await fresh.load()
    assert fresh.event_of(job.job_id) == "e1"


async def test_a_picture_missed_at_the_finish_is_made_from_the_kept_result(store):
    book = EventBook(store)
    job, entry = await an_entry(store, "aaaa000003")
    await store.add_entry(entry)
    assert await book.thumb_of(entry) is None  # no result yet
    await store.save_result(job.job_id, Finished(job.job_id, png(80, 40), {}))
    thumb = await book.thumb_of(entry)
    assert thumb is not None and (await store.thumbs([job.job_id]))[job.job_id] == thumb
