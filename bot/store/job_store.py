"""The job store: every accepted job in SQLite, its pictures in a spool folder.

A job's record keeps its state in the one lifecycle of :mod:`bot.jobs` (the ledger there is
the only caller that changes it). What the store itself guarantees:

* :meth:`JobStore.accept` writes the input images to ``<spool>/<job_id>/`` and inserts the
  record, both durably, *before* the requester is told the job is queued.
* :meth:`JobStore.save_result` writes the result and marks the job done before any
  delivery starts, so a crash between the worker's answer and the message loses nothing.
* ``delivering``/``notifying`` (with the route being tried) is recorded before each send and
  ``delivered``/``notified`` (with the Discord message id) after it; a job found sending after
  a restart is looked for in the channel, not blindly sent again (:mod:`bot.recovery`).
* A job's files are removed once it failed or was cancelled. A delivered job's pictures
  (inputs and result) stay ``reuse_s`` longer, for the buttons under its result, and count in
  the spool's size limit. A result that could not be delivered loses its inputs at once; its
  result stays until ``retention_hours`` (with the job's record), or until the room is needed.
* A member's saved style ("Use as my style") is one picture per member and server, kept in
  ``<spool>/saved/`` until it expires.
* Room in the spool: each server may hold ``server_share`` of ``spool_max_bytes`` (jobs'
  files and saved styles; the record of each holds its bytes, so a server's part is one sum).
  Files no one is owed (kept pictures, undeliverable results, saved styles) are *evictable*.
  A new job or saved style over its server's share first pushes out that server's own
  evictable files, oldest first, and is refused (:class:`ServerSpoolFull`) when even all of
  them would not make room; then, over ``spool_max_bytes``, evictable files of any server go,
  oldest first, and :class:`SpoolFull` when that is not enough. Work still owed (waiting,
  running, results to send) is never pushed out. So one server can never fill the spool for
  the others with files it keeps there.

Version 3 of the schema folds the old ``queued`` state and the failure notice's own column
(``notice``: pending, sending, sent, unsent) into the lifecycle; version 5 records each job's and
saved style's bytes. :meth:`JobStore.open` upgrades an older database in place, and measures the
spool at every open (so the recorded sizes match the files even after a crash between the two).

SQLite runs on a thread of its own (stdlib :mod:`sqlite3`, ``synchronous=FULL`` in WAL
mode), never on the event loop. Calls run in the order they were made, so a
fire-and-forget :meth:`JobStore.note` lands before any later awaited call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from nst_core.pool.base import Finished

from nst_core.params import StylizeParams

from bot.core.job import OPEN_STATES, Job, JobState
from bot.store.schema import transaction, upgrade
from bot.service.server_settings import QUOTA_WINDOW_S, GuildSettings, QuotaReached
from bot.store.spool import chmod, remove, tree_size, write_file

__all__ = ["JobStore", "StoreError", "SpoolFull", "ServerSpoolFull", "PicturesGone"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATES = frozenset(s.value for s in JobState)
_OPEN = ", ".join(f"'{s.value}'" for s in OPEN_STATES)  # work or a message still owed
_ENDED = ", ".join(f"'{s.value}'" for s in JobState if s.ended)
# Spool folders kept: inputs of jobs still to run, results still to send, and the result of an
# undeliverable job (its inputs are dropped when it becomes undeliverable; the result is evictable
# and goes with the record at the retention). Kept pictures of delivered jobs: kept_until.
_KEEP_FILES = ", ".join(f"'{s.value}'" for s in (JobState.WAITING, JobState.RUNNING, JobState.DONE,
                                                JobState.DELIVERING, JobState.UNDELIVERABLE))
_UNDELIVERABLE = JobState.UNDELIVERABLE.value

_USAGE_KEPT_S = 86400.0  # the quota counts the last 24 hours

_UPDATABLE = frozenset({
    "state", "status_message_id", "position", "attempts", "restarts", "started_at", "finished_at", "worker",
    "failure", "failure_kind", "cancelled_by", "route", "message_id", "delivered_at",
    "interaction_token", "kept_until", "compare",
})

_CONTENT, _STYLE, _STYLE2 = "content.img", "style.img", "style2.img"
_INPUTS = (_CONTENT, _STYLE, _STYLE2)
_RESULT, _RESULT_META = "result.png", "result.json"
_SAVED = "saved"  # the spool's folder of members' saved styles (job folders are named by hex ids)

# Files that may be dropped to make room (no work or message is owed for them), in the order
# they go: first what was left of results that could not be delivered (no one can get them any
# more), then kept pictures of delivered jobs and saved styles together. Within each, oldest
# first by the time the files were set aside: the undeliverable job's updated_at (when it was
# given up), the delivered job's delivered_at, the saved style's saved_at.
# Columns: tier, at, job_id (NULL: a saved style), user_id (saved style), guild_id, bytes.
_EVICTABLE = f"""
    SELECT 0 AS tier, updated_at AS at, job_id, NULL AS user_id, guild_id, spool_bytes AS bytes FROM jobs
        WHERE state = '{_UNDELIVERABLE}' AND spool_bytes > 0
    UNION ALL
    SELECT 1, COALESCE(delivered_at, updated_at), job_id, NULL, guild_id, spool_bytes FROM jobs
        WHERE kept_until IS NOT NULL AND spool_bytes > 0 AND state NOT IN ({_OPEN})
    UNION ALL
    SELECT 1, saved_at, NULL, user_id, guild_id, bytes FROM saved_styles WHERE bytes > 0
"""
_EVICTION_ORDER = "ORDER BY tier, at, job_id, user_id"


class StoreError(Exception):
    """The store could not record something (disk full, permissions, a broken database)."""


class SpoolFull(StoreError):
    """The spool holds more than ``storage.spool_max_mb``."""


class ServerSpoolFull(SpoolFull):
    """One server holds its whole share of the spool (``storage.server_share``) in files that
    cannot be dropped (work still waiting or owed), so it cannot take ``needed`` more bytes.
    Other servers are not refused because of it."""

    def __init__(self, guild_id: int | None, used: int, needed: int, share: int, fraction: float) -> None:
        self.guild_id = guild_id  # None: jobs without a server, which share one bucket
        self.used = used  # bytes the server holds in the spool now
        self.needed = needed  # bytes the refused job or saved style needed
        self.share = share  # bytes the server may hold: fraction of the spool's cap
        self.fraction = fraction
        super().__init__(f"server {guild_id} holds {used} bytes of the spool; {needed} more would pass its share "
                         f"of {share} bytes ({fraction:g} of the spool)")


class PicturesGone(StoreError):
    """A delivered job's pictures are no longer kept (``reuse_s`` passed, or room was needed)."""


class JobStore:
    """Jobs in SQLite at ``db_path``, their files under ``spool_dir``; use from one event loop."""

    def __init__(self, db_path: str | Path, spool_dir: str | Path, *, spool_max_bytes: int = 2 << 30,
                 retention_s: float = 7 * 86400.0, reuse_s: float = 86400.0, server_share: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not 0.0 < server_share <= 1.0:
            raise ValueError(f"server_share must be more than 0 and at most 1, not {server_share!r}")
        self.db_path = Path(db_path).expanduser()
        self.spool_dir = Path(spool_dir).expanduser()
        self.spool_max_bytes = spool_max_bytes
        # The part of spool_max_bytes one server may hold (1: no limit of its own; the bot's
        # setting storage.server_share defaults to 0.1).
        self.server_share = server_share
        self.retention_s = retention_s
        self.reuse_s = reuse_s  # a delivered job's pictures are kept this long for remixes
        self.clock = clock
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # used only on the executor's thread
        self._spool_bytes = 0
        self._pending: set[concurrent.futures.Future] = set()
        self.last_error: str | None = None  # the latest failed write, for /healthz

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the job store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:  # a broken or full database: one kind of failure for callers
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise StoreError(f"the job store failed: {exc}") from exc

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the store's thread without waiting; failures are logged."""
        if self._executor is None:
            return
        future = self._executor.submit(fn, *args)
        self._pending.add(future)

        def done(f: concurrent.futures.Future) -> None:
            self._pending.discard(f)
            exc = f.exception()
            if exc is not None:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("job store update failed", extra={"error": self.last_error})
        future.add_done_callback(done)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "the job store is not open"
        return self._db

    @property
    def is_open(self) -> bool:
        return self._executor is not None

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

    # ------------------------------------------------------------------ open / close

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="job-store")
        try:
            await self._run(self._open)
        except Exception as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"the job store at {self.db_path} cannot be opened: {exc}") from exc

    def _open(self) -> None:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        chmod(self.spool_dir, 0o700)
        db = sqlite3.connect(self.db_path, isolation_level=None)  # autocommit; explicit BEGIN where needed
        chmod(self.db_path, 0o600)  # it holds interaction tokens while jobs are open
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        upgrade(db)
        self._db = db
        self._remove_stray_files()
        self._measure_spool()

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
        for (job_id,) in self.db.execute("SELECT job_id FROM jobs WHERE state = ?", (_UNDELIVERABLE,)).fetchall():
            folder = self.job_dir(job_id)
            for name in _INPUTS:
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

    async def __aenter__(self) -> "JobStore":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------ accepting

    async def accept(self, job: Job, daily_limit: int = 0, *, parent_kept: bool = False) -> None:
        """Record ``job`` as queued with its images; raises :class:`ServerSpoolFull` (its server's
        share of the spool is full), :class:`SpoolFull` or :class:`StoreError`, or
        :class:`~bot.settings.QuotaReached` when its requester already started ``daily_limit``
        jobs in its server within 24 hours (0: no limit; counted here, so parallel requests
        cannot slip past it). ``parent_kept``: a remix, taken only while its parent still keeps
        its pictures (:class:`PicturesGone` once they were deleted or expired, checked here
        so that a Delete while the remix was being made cannot be slipped past)."""
        try:
            job.seq = await self._run(self._accept, job, daily_limit, parent_kept)
        except (StoreError, QuotaReached):
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise StoreError(f"job {job.job_id} could not be recorded: {exc}") from exc

    def _accept(self, job: Job, daily_limit: int, parent_kept: bool = False) -> int:
        now = self.clock()
        if parent_kept and not self._keeps_pictures(job.parent_id or ""):
            raise PicturesGone(job.parent_id or "")
        if daily_limit and job.guild_id is not None:
            used, leaves = self._usage(job.guild_id, job.user_id, now - QUOTA_WINDOW_S, daily_limit)
            if leaves is not None:
                raise QuotaReached(daily_limit, leaves + QUOTA_WINDOW_S)
        size = len(job.content) + len(job.style) + len(job.style2)
        self._make_room(size, job.guild_id)
        folder = self.job_dir(job.job_id)
        try:
            folder.mkdir(parents=True, exist_ok=False)
            write_file(folder / _CONTENT, job.content)
            write_file(folder / _STYLE, job.style)
            if job.style2:
                write_file(folder / _STYLE2, job.style2)
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute(
                "INSERT INTO jobs (job_id, state, user_id, channel_id, guild_id, application_id, interaction_token, "
                "token_created_at, upload_limit, params, style_label, preset, created_at, updated_at, parent_id, "
                "remix, style2_label, compare, spool_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (job.job_id, job.state.value, job.user_id, job.channel_id, job.guild_id, job.application_id,
                 job.interaction_token, job.token_created_at, job.upload_limit, json.dumps(job.params.to_dict()),
                 job.style_label, job.preset, job.created_at, now, job.parent_id, job.remix, job.style2_label,
                 int(job.compare), size))
            if job.guild_id is not None:
                self.db.execute("INSERT INTO usage (job_id, guild_id, user_id, at) VALUES (?, ?, ?, ?)",
                                (job.job_id, job.guild_id, job.user_id, now))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            remove(folder)
            raise
        self._spool_bytes += size
        return int(cur.lastrowid)

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

    async def discard(self, job_id: str) -> None:
        """Forget a job that was recorded but then not taken after all (the line filled up)."""
        await self._run(self._discard, job_id)

    def _discard(self, job_id: str) -> None:
        with transaction(self.db):
            self.db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            self.db.execute("DELETE FROM usage WHERE job_id = ?", (job_id,))  # a refused job does not count
        self._remove_files(job_id)

    def note_refund(self, job_id: str) -> None:
        """The job no longer counts towards its requester's daily quota (it failed by no fault of theirs)."""
        self._submit(lambda: self.db.execute("DELETE FROM usage WHERE job_id = ?", (job_id,)))

    # ------------------------------------------------------------------ quotas and server settings

    async def usage(self, guild_id: int, user_id: int, since: float, limit: int) -> tuple[int, float | None]:
        """Jobs ``user_id`` started in ``guild_id`` since ``since``, and the start of the one that
        must leave that window before the count is under ``limit`` again (None: it is already)."""
        return await self._run(self._usage, guild_id, user_id, since, limit)

    def _usage(self, guild_id: int, user_id: int, since: float, limit: int) -> tuple[int, float | None]:
        where = "FROM usage WHERE guild_id = ? AND user_id = ? AND at > ?"
        args = (guild_id, user_id, since)
        used = int(self.db.execute(f"SELECT COUNT(*) {where}", args).fetchone()[0])
        if used < limit:
            return used, None
        # With a limit lowered since, more than one job may have to leave the window.
        row = self.db.execute(f"SELECT at {where} ORDER BY at LIMIT 1 OFFSET ?", (*args, used - limit)).fetchone()
        return used, row[0]

    async def load_settings(self) -> list[GuildSettings]:
        return await self._run(self._load_settings)

    def _load_settings(self) -> list[GuildSettings]:
        return [GuildSettings(guild_id=row["guild_id"], channels=tuple(int(c) for c in json.loads(row["channels"])),
                              max_preset=row["max_preset"], daily_jobs=row["daily_jobs"])
                for row in self.db.execute("SELECT * FROM guild_settings")]

    async def save_settings(self, settings: GuildSettings, by_user: int) -> None:
        await self._run(self._save_settings, settings, by_user)

    def _save_settings(self, settings: GuildSettings, by_user: int) -> None:
        self.db.execute(
            "INSERT INTO guild_settings (guild_id, channels, max_preset, daily_jobs, updated_at, updated_by) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id) DO UPDATE SET channels = excluded.channels, "
            "max_preset = excluded.max_preset, daily_jobs = excluded.daily_jobs, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by",
            (settings.guild_id, json.dumps(list(settings.channels)), settings.max_preset, settings.daily_jobs,
             self.clock(), by_user))

    # ------------------------------------------------------------------ updates

    def note(self, job_id: str, *, remove_files: bool = False, remove_inputs: bool = False, **fields: Any) -> None:
        """Record ``fields`` without waiting (ordered before any later call)."""
        self._submit(self._update, job_id, fields, remove_files, remove_inputs)

    async def update(self, job_id: str, *, remove_files: bool = False, remove_inputs: bool = False,
                     **fields: Any) -> None:
        """Record ``fields`` and wait until they are on disk; ``remove_files``: the job's spool
        folder too; ``remove_inputs``: only its input pictures (the result stays)."""
        await self._run(self._update, job_id, fields, remove_files, remove_inputs)

    def _update(self, job_id: str, fields: dict[str, Any], remove_files: bool, remove_inputs: bool = False) -> None:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not a job field: {sorted(unknown)}")
        if "state" in fields and fields["state"] not in _STATES:
            raise ValueError(f"not a job state: {fields['state']!r}")
        fields = {**fields, "updated_at": self.clock()}
        names = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE jobs SET {names} WHERE job_id = ?", (*fields.values(), job_id))
        if remove_files:
            self._remove_files(job_id)
        elif remove_inputs:
            self._remove_inputs(job_id)

    def note_restored(self, job_ids: Iterable[str]) -> None:
        """Count a restart against each job and put it back to queued."""
        ids = list(job_ids)
        self._submit(self._restored, ids)

    def _restored(self, job_ids: list[str]) -> None:
        now = self.clock()
        with transaction(self.db):
            for job_id in job_ids:
                self.db.execute("UPDATE jobs SET state = 'waiting', restarts = restarts + 1, updated_at = ? "
                                "WHERE job_id = ?", (now, job_id))

    # ------------------------------------------------------------------ results

    async def save_result(self, job_id: str, event: Finished, finished_at: float | None = None) -> None:
        """Keep the result on disk and mark the job done (before any attempt to deliver it)."""
        await self._run(self._save_result, job_id, event, finished_at)

    def _save_result(self, job_id: str, event: Finished, finished_at: float | None) -> None:
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"summary": event.summary, "notes": list(event.notes), "worker": event.worker,
                "seconds": event.seconds}
        meta_bytes = json.dumps(meta).encode()
        before = tree_size(folder)  # a result saved again replaces the first
        write_file(folder / _RESULT, event.image_png)
        write_file(folder / _RESULT_META, meta_bytes)
        after = tree_size(folder)
        self._spool_bytes = max(0, self._spool_bytes + after - before)
        # The inputs stay: the buttons under the result remix them (see reuse_s).
        with transaction(self.db):
            self.db.execute("UPDATE jobs SET spool_bytes = ? WHERE job_id = ?", (after, job_id))
            self._update(job_id, {"state": "done", "finished_at": finished_at or self.clock(),
                                  "worker": event.worker}, False)

    async def load_result(self, job_id: str) -> Finished:
        return await self._run(self._load_result, job_id)

    def _load_result(self, job_id: str) -> Finished:
        folder = self.job_dir(job_id)
        meta = json.loads((folder / _RESULT_META).read_bytes())
        return Finished(job_id, (folder / _RESULT).read_bytes(), meta["summary"], tuple(meta.get("notes") or ()),
                        meta.get("worker", ""), float(meta.get("seconds") or 0.0))

    async def load_inputs(self, job_id: str) -> tuple[bytes, bytes, bytes]:
        """The job's content, style and second style (``b""``: none); raises OSError when gone."""
        return await self._run(self._load_inputs, job_id)

    def _load_inputs(self, job_id: str) -> tuple[bytes, bytes, bytes]:
        folder = self.job_dir(job_id)
        style2 = folder / _STYLE2
        return ((folder / _CONTENT).read_bytes(), (folder / _STYLE).read_bytes(),
                style2.read_bytes() if style2.exists() else b"")

    async def kept_pictures(self, job_id: str, *, result: bool = False) -> tuple[bytes, ...]:
        """A delivered job's kept pictures (content, style, second style; the result too with
        ``result``); raises :class:`PicturesGone` once they are no longer kept."""
        return await self._run(self._kept_pictures, job_id, result)

    def _keeps_pictures(self, job_id: str) -> bool:
        row = self.db.execute("SELECT kept_until FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row is not None and row[0] is not None and row[0] > self.clock()

    def _kept_pictures(self, job_id: str, result: bool) -> tuple[bytes, ...]:
        if not self._keeps_pictures(job_id):
            raise PicturesGone(job_id)
        try:
            pictures = self._load_inputs(job_id)
            if result:
                pictures += ((self.job_dir(job_id) / _RESULT).read_bytes(),)
        except OSError:
            raise PicturesGone(job_id) from None
        return pictures

    async def lineage(self, job_id: str) -> list[Job]:
        """The job and its ancestors (parent, grandparent...), nearest first, as far as recorded."""
        return await self._run(self._lineage, job_id)

    def _lineage(self, job_id: str) -> list[Job]:
        chain: list[Job] = []
        seen: set[str] = set()
        while job_id and job_id not in seen and len(chain) < 1000:
            seen.add(job_id)
            rows = self._select("WHERE job_id = ?", (job_id,))
            if not rows:
                break
            chain.append(rows[0])
            job_id = rows[0].parent_id or ""
        return chain

    async def descendants(self, job_id: str) -> list[str]:
        """Ids of the jobs remixed from ``job_id``, and from those, and so on."""
        return await self._run(lambda: [row[0] for row in self.db.execute(
            "WITH RECURSIVE family(id) AS (SELECT job_id FROM jobs WHERE parent_id = ? UNION "
            "SELECT j.job_id FROM jobs j JOIN family f ON j.parent_id = f.id) SELECT id FROM family", (job_id,))])

    def _remove_files(self, job_id: str) -> None:
        self._spool_bytes = max(0, self._spool_bytes - remove(self.job_dir(job_id)))
        self.db.execute("UPDATE jobs SET spool_bytes = 0 WHERE job_id = ?", (job_id,))

    def _remove_inputs(self, job_id: str) -> None:
        """The job's input pictures go; what else its folder holds (a result) stays."""
        folder = self.job_dir(job_id)
        self._spool_bytes = max(0, self._spool_bytes - sum(remove(folder / name) for name in _INPUTS))
        self.db.execute("UPDATE jobs SET spool_bytes = ? WHERE job_id = ?", (tree_size(folder), job_id))

    # ------------------------------------------------------------------ reading

    async def get(self, job_id: str) -> Job | None:
        rows = await self._run(self._select, "WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    async def open_jobs(self) -> list[Job]:
        """Jobs with work or a message still owed, in the order they were accepted."""
        return await self._run(self._select, f"WHERE state IN ({_OPEN}) ORDER BY seq", ())

    async def all_jobs(self) -> list[Job]:
        return await self._run(self._select, "ORDER BY seq", ())

    def _select(self, where: str, args: tuple) -> list[Job]:
        return [_stored(row) for row in self.db.execute(f"SELECT * FROM jobs {where}", args)]

    async def counts(self) -> dict[str, int]:
        """Jobs per state."""
        rows = await self._run(lambda: self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: n for state, n in rows}

    # ------------------------------------------------------------------ housekeeping

    async def purge(self) -> int:
        """Delete ended jobs older than the retention (and their files); returns how many."""
        return await self._run(self._purge)

    def _purge(self) -> int:
        now = self.clock()
        for (job_id,) in self.db.execute("SELECT job_id FROM jobs WHERE kept_until <= ?", (now,)).fetchall():
            self._forget_pictures(job_id)  # the buttons under these results answer "expired" from now on
        for guild_id, user_id in self.db.execute("SELECT guild_id, user_id FROM saved_styles WHERE expires_at <= ?",
                                                 (now,)).fetchall():
            self._forget_style(guild_id, user_id)
        cutoff = now - self.retention_s
        ids = [row[0] for row in self.db.execute(
            f"SELECT job_id FROM jobs WHERE updated_at < ? AND state IN ({_ENDED})", (cutoff,))]
        with transaction(self.db):
            for job_id in ids:
                self.db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            self.db.execute("DELETE FROM usage WHERE at < ?", (now - _USAGE_KEPT_S,))
        for job_id in ids:
            self._remove_files(job_id)
        return len(ids)

    # ------------------------------------------------------------------ saved styles

    def _saved_path(self, guild_id: int, user_id: int) -> Path:
        return self.spool_dir / _SAVED / f"{int(guild_id)}-{int(user_id)}.img"

    async def save_style(self, guild_id: int, user_id: int, label: str, data: bytes, ttl_s: float) -> float:
        """Keep ``data`` as the member's style in that server for ``ttl_s``; returns when it
        expires. Replaces an earlier one. It counts in the server's share of the spool; raises
        :class:`ServerSpoolFull` (the server's share is full of files that cannot be dropped, or
        the picture alone is larger than the share), :class:`SpoolFull` or :class:`StoreError`."""
        return await self._run(self._save_style, guild_id, user_id, label, data, ttl_s)

    def _save_style(self, guild_id: int, user_id: int, label: str, data: bytes, ttl_s: float) -> float:
        # A saved style counts in its server's share of the spool, like the server's jobs: saving
        # (free) in one server pushes out that server's oldest evictable files, never another's
        # (unless the whole spool is full, as for a job).
        # Room first (the earlier style is evictable, so it counts as room): a refusal keeps it.
        self._make_room(len(data), guild_id)
        self._forget_style(guild_id, user_id)
        now = self.clock()
        path = self._saved_path(guild_id, user_id)
        with transaction(self.db):  # the record first: a file without one would never be purged
            self.db.execute("INSERT INTO saved_styles (guild_id, user_id, label, saved_at, expires_at, bytes) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (guild_id, user_id, label, now, now + ttl_s, len(data)))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_file(path, data)
            except BaseException:
                remove(path)
                raise
        self._spool_bytes += len(data)
        return now + ttl_s

    def _saved_size(self, guild_id: int, user_id: int) -> int:
        try:
            return self._saved_path(guild_id, user_id).stat().st_size
        except OSError:
            return 0

    async def saved_style_label(self, guild_id: int, user_id: int) -> str | None:
        """The label of the member's saved style in that server (None: none, or expired); reads no file."""
        return await self._run(self._saved_style_label, guild_id, user_id)

    def _saved_style_label(self, guild_id: int, user_id: int) -> str | None:
        row = self.db.execute("SELECT label FROM saved_styles WHERE guild_id = ? AND user_id = ? AND expires_at > ?",
                              (guild_id, user_id, self.clock())).fetchone()
        return row[0] if row is not None else None

    async def saved_style(self, guild_id: int, user_id: int) -> tuple[str, bytes] | None:
        """The member's saved style in that server (its label and picture), None if none or expired."""
        return await self._run(self._saved_style, guild_id, user_id)

    def _saved_style(self, guild_id: int, user_id: int) -> tuple[str, bytes] | None:
        row = self.db.execute("SELECT label, expires_at FROM saved_styles WHERE guild_id = ? AND user_id = ?",
                              (guild_id, user_id)).fetchone()
        if row is None or row["expires_at"] <= self.clock():
            return None
        try:
            return row["label"], self._saved_path(guild_id, user_id).read_bytes()
        except OSError:
            return None

    def _forget_style(self, guild_id: int, user_id: int) -> None:
        self.db.execute("DELETE FROM saved_styles WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
        self._spool_bytes = max(0, self._spool_bytes - remove(self._saved_path(guild_id, user_id)))

    async def ping(self) -> None:
        """A small write to prove the database and the spool can still be written."""
        await self._run(self._ping)

    def _ping(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('health', ?)", (repr(self.clock()),))
        probe = self.spool_dir / ".health"
        probe.write_bytes(b"ok")
        probe.unlink()

    async def flush(self) -> None:
        """Wait until every fire-and-forget update has been written."""
        if self._executor is not None:
            await self._run(lambda: None)


# --------------------------------------------------------------------------- helpers


def _stored(row: sqlite3.Row) -> Job:
    return Job(
        job_id=row["job_id"], user_id=row["user_id"], channel_id=row["channel_id"], guild_id=row["guild_id"],
        application_id=row["application_id"], interaction_token=row["interaction_token"],
        token_created_at=row["token_created_at"], upload_limit=row["upload_limit"],
        params=StylizeParams.from_dict(json.loads(row["params"])), content=b"", style=b"",
        style_label=row["style_label"], created_at=row["created_at"], state=JobState(row["state"]),
        status_message_id=row["status_message_id"], started_at=row["started_at"], finished_at=row["finished_at"],
        worker=row["worker"], cancelled_by=row["cancelled_by"], failure=row["failure"],
        failure_kind=row["failure_kind"], route=row["route"], message_id=row["message_id"], seq=row["seq"],
        position=row["position"], attempts=row["attempts"], restarts=row["restarts"],
        parent_id=row["parent_id"], remix=row["remix"], style2_label=row["style2_label"],
        compare=bool(row["compare"]), kept_until=row["kept_until"],
    )
