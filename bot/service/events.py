"""Style events' bookkeeping beside the line: which jobs are entries, and each entry's picture
kept small for the gallery as soon as its job finishes (the job's own pictures may expire
before a long event closes). The rules live in :mod:`bot.core.event`, the records in
:class:`bot.store.events.EventRecords`; what members see in :mod:`bot.ui.events`. No Discord.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING

from PIL import Image

from nst_core.images import to_rgb
from nst_core.pool.base import Finished

from bot.core.event import Entry
from bot.core.events import JobEvents
from bot.core.job import Job
from bot.store.errors import StoreError

if TYPE_CHECKING:
    from bot.store.job_store import JobStore

__all__ = ["EventBook", "THUMB_SIDE", "entry_thumb"]

log = logging.getLogger(__name__)

THUMB_SIDE = 256  # px: the gallery draws entries at most this large
_THUMB_QUALITY = 85


def entry_thumb(image: bytes, side: int = THUMB_SIDE) -> bytes:
    """A small JPEG of an entry's result (the bot's own PNG), for the gallery. Runs Pillow: call it in a thread."""
    with Image.open(io.BytesIO(image)) as img:
        img.draft("RGB", (side, side))
        img.load()
        small = to_rgb(img)
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=_THUMB_QUALITY)
        return buf.getvalue()


class EventBook(JobEvents):
    """Knows which jobs are entries of an event; keeps each entry's picture when its job finishes."""

    def __init__(self, store: "JobStore") -> None:
        self.store = store
        self._entries: dict[str, str] = {}  # job id -> event id, for entries whose job has not ended
        self._tasks: set[asyncio.Task] = set()

    async def load(self) -> None:
        """At start: the entries whose job is still to run or to be delivered."""
        self._entries = dict(await self.store.unfinished_entries())

    def event_of(self, job_id: str) -> str | None:
        """The event ``job_id`` is an entry of (while its job is open), else None."""
        return self._entries.get(job_id)

    async def add(self, entry: Entry) -> None:
        """Record a new entry (its job is in line already)."""
        await self.store.add_entry(entry)
        self._entries[entry.job_id] = entry.event_id

    def forget(self, job_id: str) -> None:
        self._entries.pop(job_id, None)

    # -- the line's events (the ledger's watchers, after the messenger)

    def job_finished(self, job: Job, event: Finished) -> None:
        if job.job_id in self._entries:
            task = asyncio.get_running_loop().create_task(self._keep_thumb(job.job_id, event.image_png),
                                                          name=f"entry-thumb-{job.job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _keep_thumb(self, job_id: str, image: bytes) -> None:
        try:
            thumb = await asyncio.to_thread(entry_thumb, image)
            await self.store.save_thumb(job_id, thumb)
        except (OSError, ValueError, StoreError):  # the gallery then reads the job's kept result, if any
            log.exception("an entry's picture could not be kept for the gallery", extra={"job_id": job_id})

    async def thumb_of(self, entry: Entry) -> bytes | None:
        """The entry's small picture: kept when it finished, else made from its job's result if still kept."""
        if entry.has_picture:
            return (await self.store.thumbs([entry.job_id])).get(entry.job_id)
        try:
            result = await self.store.load_result(entry.job_id)
            thumb = await asyncio.to_thread(entry_thumb, result.image_png)
        except (OSError, ValueError, KeyError, StoreError):
            return None
        await self.store.save_thumb(entry.job_id, thumb)
        return thumb

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
