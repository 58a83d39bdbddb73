"""The spool's room: where a job's files and members' saved styles lie, what each server holds,
and what may be dropped to make room.

Each server may hold ``server_share`` of ``spool_max_bytes`` (jobs' files and saved styles;
the record of each holds its bytes, so a server's part is one sum). Files no one is owed
(kept pictures, undeliverable results, saved styles) are *evictable*. A new job or saved
style over its server's share first pushes out that server's own evictable files, oldest
first, and is refused (:class:`~bot.store.errors.ServerSpoolFull`) when even all of them
would not make room; then, over ``spool_max_bytes``, evictable files of any server go,
oldest first, and :class:`~bot.store.errors.SpoolFull` when that is not enough. Work still
owed (waiting, running, results to send) is never pushed out. So one server can never fill
the spool for the others with files it keeps there.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Callable

from bot.core.job import OPEN_STATES, JobState
from bot.store.database import Database
from bot.store.errors import ServerSpoolFull, SpoolFull
from bot.store.schema import transaction
from bot.store.spool import remove, tree_size

__all__ = ["SpoolRoom", "CONTENT", "STYLE", "STYLE2", "INPUTS", "RESULT", "RESULT_META", "OPEN", "UNDELIVERABLE"]

log = logging.getLogger(__name__)

OPEN = ", ".join(f"'{s.value}'" for s in OPEN_STATES)  # work or a message still owed
UNDELIVERABLE = JobState.UNDELIVERABLE.value
# Spool folders kept: inputs of jobs still to run, results still to send, and the result of an
# undeliverable job (its inputs are dropped when it becomes undeliverable; the result is evictable
# and goes with the record at the retention). Kept pictures of delivered jobs: kept_until.
_KEEP_FILES = ", ".join(f"'{s.value}'" for s in (JobState.WAITING, JobState.RUNNING, JobState.DONE,
                                                JobState.DELIVERING, JobState.UNDELIVERABLE))

# A job's folder, <spool>/<job_id>/: its inputs, and its result with what the worker said of it.
CONTENT, STYLE, STYLE2 = "content.img", "style.img", "style2.img"
INPUTS = (CONTENT, STYLE, STYLE2)
RESULT, RESULT_META = "result.png", "result.json"
_SAVED = "saved"  # the spool's folder of members' saved styles (job folders are named by hex ids)

# Files that may be dropped to make room (no work or message is owed for them), in the order
# they go: first what was left of results that could not be delivered (no one can get them any
# more), then kept pictures of delivered jobs and saved styles together. Within each, oldest
# first by the time the files were set aside: the undeliverable job's updated_at (when it was
# given up), the delivered job's delivered_at, the saved style's saved_at.
# Columns: tier, at, job_id (NULL: a saved style), user_id (saved style), guild_id, bytes.
_EVICTABLE = f"""
    SELECT 0 AS tier, updated_at AS at, job_id, NULL AS user_id, guild_id, spool_bytes AS bytes FROM jobs
        WHERE state = '{UNDELIVERABLE}' AND spool_bytes > 0
    UNION ALL
    SELECT 1, COALESCE(delivered_at, updated_at), job_id, NULL, guild_id, spool_bytes FROM jobs
        WHERE kept_until IS NOT NULL AND spool_bytes > 0 AND state NOT IN ({OPEN})
    UNION ALL
    SELECT 1, saved_at, NULL, user_id, guild_id, bytes FROM saved_styles WHERE bytes > 0
"""
_EVICTION_ORDER = "ORDER BY tier, at, job_id, user_id"


class SpoolRoom(Database):
    """The spool under ``spool_dir``, at most ``spool_max_bytes``, ``server_share`` of it per server."""

    def __init__(self, db_path: str | Path, spool_dir: str | Path, *, spool_max_bytes: int,
                 server_share: float, clock: Callable[[], float]) -> None:
        super().__init__(db_path)
        self.clock = clock  # when files were set aside, and when saved styles expire
        if not 0.0 < server_share <= 1.0:
            raise ValueError(f"server_share must be more than 0 and at most 1, not {server_share!r}")
        self.spool_dir = Path(spool_dir).expanduser()
        self.spool_max_bytes = spool_max_bytes
        # The part of spool_max_bytes one server may hold (1: no limit of its own; the bot's
        # setting storage.server_share defaults to 0.1).
        self.server_share = server_share
        self._spool_bytes = 0

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes

    @property
    def server_share_bytes(self) -> int:
        """The bytes of the spool one server may hold."""
        return int(self.spool_max_bytes * self.server_share)

    def job_dir(self, job_id: str) -> Path:
        if not job_id.isalnum():  # ids are hex; never let one name a path elsewhere
            raise ValueError(f"bad job id {job_id!r}")
        return self.spool_dir / job_id

    def _remove_stray_files(self) -> None:
        """Spool folders of jobs that were never recorded (a crash mid-accept) or have ended, the
        inputs of undeliverable jobs (a crash before they went, or a database of version 4 or
        older), and saved style files without a record."""
        keep = {row[0] for row in self.db.execute(
            f"SELECT job_id FROM jobs WHERE state IN ({_KEEP_FILES}) OR kept_until IS NOT NULL")}
        keep.add(_SAVED)
        for entry in self.spool_dir.iterdir():
            if entry.name not in keep:
                remove(entry)
        for (job_id,) in self.db.execute("SELECT job_id FROM jobs WHERE state = ?", (UNDELIVERABLE,)).fetchall():
            folder = self.job_dir(job_id)
            for name in INPUTS:
                remove(folder / name)
        saved = self.spool_dir / _SAVED
        if saved.is_dir():
            recorded = {self._saved_path(g, u).name for g, u in self.db.execute(
                "SELECT guild_id, user_id FROM saved_styles")}
            for entry in saved.iterdir():
                if entry.name not in recorded:
                    remove(entry)

    def _measure_spool(self) -> None:
        """Record the bytes each job's folder and each saved style hold on disk, where the
        records say otherwise (a database older than version 5, or a crash between a file and
        its record), and the spool's total."""
        on_disk = {entry.name: tree_size(entry) for entry in self.spool_dir.iterdir()
                   if entry.name != _SAVED and entry.is_dir()}
        recorded = dict(self.db.execute("SELECT job_id, spool_bytes FROM jobs WHERE spool_bytes != 0").fetchall())
        jobs = [(on_disk.get(j, 0), j) for j in recorded.keys() | on_disk.keys()
                if on_disk.get(j, 0) != recorded.get(j, 0)]
        styles = [(size, g, u) for g, u, b in self.db.execute("SELECT guild_id, user_id, bytes FROM saved_styles")
                  if (size := self._saved_size(g, u)) != b]
        if jobs or styles:
            with transaction(self.db):
                self.db.executemany("UPDATE jobs SET spool_bytes = ? WHERE job_id = ?", jobs)
                self.db.executemany("UPDATE saved_styles SET bytes = ? WHERE guild_id = ? AND user_id = ?", styles)
            log.info("spool sizes recorded from the files", extra={"jobs": len(jobs), "saved_styles": len(styles)})
        self._spool_bytes = tree_size(self.spool_dir)

    def _make_room(self, size: int, guild_id: int | None) -> None:
        """Make room for ``size`` more bytes of server ``guild_id`` (None: jobs without a server,
        one bucket) by dropping evictable files (see _EVICTABLE), oldest first: first the
        server's own while it would hold more than its share, then anyone's while the spool
        would hold more than its cap. Raises :class:`ServerSpoolFull` or :class:`SpoolFull`, and
        drops nothing, when even all of them would not make room (new work before old remixes;
        nothing is dropped in vain)."""
        drop: list[sqlite3.Row] = []
        freed = 0
        if self.server_share < 1.0:  # 1: one server may fill the spool; the cap below is the rule
            share, used = self.server_share_bytes, self._server_usage(guild_id)
            if used + size > share:
                own = self._evictable("WHERE guild_id IS ?", (guild_id,))
                if used - sum(row["bytes"] for row in own) + size > share:
                    raise ServerSpoolFull(guild_id, used, size, share, self.server_share)
                for row in own:
                    if used - freed + size <= share:
                        break
                    drop.append(row)
                    freed += row["bytes"]
        if self._spool_bytes - freed + size > self.spool_max_bytes:
            chosen = {(row["job_id"], row["guild_id"], row["user_id"]) for row in drop}
            others = [row for row in self._evictable("", ())
                      if (row["job_id"], row["guild_id"], row["user_id"]) not in chosen]
            if self._spool_bytes - freed - sum(row["bytes"] for row in others) + size > self.spool_max_bytes:
                raise SpoolFull(f"the spool holds {self._spool_bytes} bytes; the cap is {self.spool_max_bytes}")
            for row in others:
                if self._spool_bytes - freed + size <= self.spool_max_bytes:
                    break
                drop.append(row)
                freed += row["bytes"]
        for row in drop:
            if row["job_id"] is not None:
                self._forget_pictures(row["job_id"])
            else:
                self._forget_style(row["guild_id"], row["user_id"])
        if drop:
            log.info("spool room made", extra={"guild_id": guild_id, "dropped": len(drop), "freed_bytes": freed})

    def _evictable(self, where: str, args: tuple) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT * FROM ({_EVICTABLE}) {where} {_EVICTION_ORDER}", args).fetchall()

    def _server_usage(self, guild_id: int | None) -> int:
        jobs = self.db.execute("SELECT COALESCE(SUM(spool_bytes), 0) FROM jobs WHERE guild_id IS ?",
                               (guild_id,)).fetchone()[0]
        styles = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM saved_styles WHERE guild_id IS ?",
                                 (guild_id,)).fetchone()[0]
        return int(jobs) + int(styles)

    async def server_usage(self, guild_id: int | None) -> int:
        """The bytes server ``guild_id`` holds in the spool: its jobs' files and its saved styles."""
        return await self._run(self._server_usage, guild_id)

    def _forget_pictures(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET kept_until = NULL WHERE job_id = ?", (job_id,))
        self._remove_files(job_id)

    def _remove_files(self, job_id: str) -> None:
        self._spool_bytes = max(0, self._spool_bytes - remove(self.job_dir(job_id)))
        self.db.execute("UPDATE jobs SET spool_bytes = 0 WHERE job_id = ?", (job_id,))

    def _remove_inputs(self, job_id: str) -> None:
        """The job's input pictures go; what else its folder holds (a result) stays."""
        folder = self.job_dir(job_id)
        self._spool_bytes = max(0, self._spool_bytes - sum(remove(folder / name) for name in INPUTS))
        self.db.execute("UPDATE jobs SET spool_bytes = ? WHERE job_id = ?", (tree_size(folder), job_id))

    def _saved_path(self, guild_id: int, user_id: int) -> Path:
        return self.spool_dir / _SAVED / f"{int(guild_id)}-{int(user_id)}.img"

    def _saved_size(self, guild_id: int, user_id: int) -> int:
        try:
            return self._saved_path(guild_id, user_id).stat().st_size
        except OSError:
            return 0

    def _forget_style(self, guild_id: int, user_id: int) -> None:
        self.db.execute("DELETE FROM saved_styles WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
        self._spool_bytes = max(0, self._spool_bytes - remove(self._saved_path(guild_id, user_id)))
