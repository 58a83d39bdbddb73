"""The job store: every accepted job in SQLite, its pictures in a spool folder.

A job's record keeps its state in the one lifecycle of :mod:`bot.core.job` (the
:class:`~bot.service.ledger.Ledger` is the only caller that changes it). What the store
itself guarantees:

* :meth:`JobStore.accept` writes the input images to ``<spool>/<job_id>/`` and inserts the
  record, both durably, *before* the requester is told the job is in line.
* :meth:`JobStore.save_result` writes the result and marks the job done before any
  delivery starts, so a crash between the worker's answer and the message loses nothing.
* ``delivering``/``notifying`` (with the route being tried) is recorded before each send and
  ``delivered``/``notified`` (with the Discord message id) after it; a job found sending after
  a restart is looked for in the channel, not blindly sent again (:mod:`bot.app.recovery`).
* A job's files are removed once it failed or was cancelled. A delivered job's pictures
  (inputs and result) stay ``reuse_s`` longer, for the buttons under its result. A result that
  could not be delivered loses its inputs at once; its result stays until ``retention_hours``
  (with the job's record), or until the room is needed (:mod:`bot.store.room`).

:meth:`JobStore.open` upgrades an older database (:mod:`bot.store.schema`) and measures the
spool (sizes match the files even after a crash). SQLite has a thread (:mod:`bot.store.database`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from nst_core.pool.base import Finished

from nst_core.params import StylizeParams

from bot.core.job import Job, JobState
from bot.store.schema import transaction, upgrade
from bot.core.rules import GuildSettings, QUOTA_WINDOW_S
from bot.core.refusals import QuotaReached
from bot.store.errors import PicturesGone, StoreError
from bot.store.room import CONTENT, OPEN, RESULT, RESULT_META, STYLE, STYLE2
from bot.store.events import EventRecords
from bot.store.saved_styles import SavedStyles
from bot.store.spool import chmod, remove, tree_size, write_file

__all__ = ["JobStore"]

log = logging.getLogger(__name__)

_STATES = frozenset(s.value for s in JobState)
_ENDED = ", ".join(f"'{s.value}'" for s in JobState if s.ended)

_UPDATABLE = frozenset({
    "state", "status_message_id", "position", "attempts", "restarts", "started_at", "finished_at", "worker",
    "failure", "failure_kind", "cancelled_by", "route", "message_id", "delivered_at",
    "interaction_token", "kept_until", "compare",
})


class JobStore(SavedStyles, EventRecords):
    """Jobs in SQLite at ``db_path``, their files under ``spool_dir``, members' saved styles and
    style events (:class:`EventRecords`); use from one event loop."""

    def __init__(self, db_path: str | Path, spool_dir: str | Path, *, spool_max_bytes: int = 2 << 30,
                 retention_s: float = 7 * 86400.0, reuse_s: float = 86400.0, server_share: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(db_path, spool_dir, spool_max_bytes=spool_max_bytes, server_share=server_share,
                         clock=clock)
        self.retention_s = retention_s
        self.reuse_s = reuse_s  # a delivered job's pictures are kept this long for remixes

    # ------------------------------------------------------------------ opening

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


    # ------------------------------------------------------------------ accepting

    async def accept(self, job: Job, daily_limit: int = 0, *, parent_kept: bool = False) -> None:
        """Record ``job`` as waiting with its images; raises :class:`ServerSpoolFull` (its server's
        share of the spool is full), :class:`SpoolFull` or :class:`StoreError`, or
        :class:`~bot.core.refusals.QuotaReached` when its requester already started ``daily_limit``
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
            write_file(folder / CONTENT, job.content)
            write_file(folder / STYLE, job.style)
            if job.style2:
                write_file(folder / STYLE2, job.style2)
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
        if unknown := set(fields) - _UPDATABLE:
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

    def note_positions(self, positions: dict[str, int]) -> None:
        """Record waiting jobs' places in line in one transaction: a long line moves together."""
        self._submit(self._positions, [(position, job_id) for job_id, position in positions.items()])

    def _positions(self, rows: list[tuple[int, str]]) -> None:
        with transaction(self.db):
            self.db.executemany("UPDATE jobs SET position = ? WHERE job_id = ?", rows)

    def note_restored(self, job_ids: Iterable[str]) -> None:
        """Count a restart against each job and put it back to waiting."""
        self._submit(self._restored, list(job_ids))

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
        write_file(folder / RESULT, event.image_png)
        write_file(folder / RESULT_META, meta_bytes)
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
        meta = json.loads((folder / RESULT_META).read_bytes())
        return Finished(job_id, (folder / RESULT).read_bytes(), meta["summary"], tuple(meta.get("notes") or ()),
                        meta.get("worker", ""), float(meta.get("seconds") or 0.0))

    async def load_inputs(self, job_id: str) -> tuple[bytes, bytes, bytes]:
        """The job's content, style and second style (``b""``: none); raises OSError when gone."""
        return await self._run(self._load_inputs, job_id)

    def _load_inputs(self, job_id: str) -> tuple[bytes, bytes, bytes]:
        folder = self.job_dir(job_id)
        style2 = folder / STYLE2
        return ((folder / CONTENT).read_bytes(), (folder / STYLE).read_bytes(),
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
                pictures += ((self.job_dir(job_id) / RESULT).read_bytes(),)
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


    # ------------------------------------------------------------------ reading

    async def get(self, job_id: str) -> Job | None:
        rows = await self._run(self._select, "WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    async def open_jobs(self) -> list[Job]:
        """Jobs with work or a message still owed, in the order they were accepted."""
        return await self._run(self._select, f"WHERE state IN ({OPEN}) ORDER BY seq", ())

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
            self.db.execute("DELETE FROM usage WHERE at < ?", (now - QUOTA_WINDOW_S,))
        for job_id in ids:
            self._remove_files(job_id)
        self._purge_events(cutoff)  # ended events, their entries' pictures and votes, after the same retention
        return len(ids)

    # ------------------------------------------------------------------ saved styles

    async def ping(self) -> None:
        """A small write to prove the database and the spool can still be written."""
        await self._run(self._ping)

    def _ping(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('health', ?)", (repr(self.clock()),))
        probe = self.spool_dir / ".health"
        probe.write_bytes(b"ok")
        probe.unlink()


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
